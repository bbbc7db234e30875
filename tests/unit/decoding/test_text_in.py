"""One place decides what text is acceptable (decoding/text.py): every bad text is a ConfigError naming it."""

from __future__ import annotations

import pytest

from chared_flows.decoding import DecodeConfig, Ensemble
from chared_flows.decoding.text import argv_text, unescape
from chared_flows.errors import ConfigError
from tests.fixtures.tiny import scripted_member


@pytest.fixture(scope="module")
def ens():
    return Ensemble([scripted_member("The answer is 5.")], max_new_chars=8)


@pytest.mark.parametrize("prompt, message", [
    ("ab\ud800cd", r"prompt holds a lone surrogate '\\ud800' at character 2"),
    (None, r"prompt is a NoneType \(None\); pass a str"),
    (b"abc", r"prompt is a bytes \(b'abc'\); pass a str"),
    (["hi"], "message 0 is a str; each message is a dict"),
    ([{"role": "user", "content": "x\udcff"}], "message 0's content holds a lone surrogate"),
    ([{"role": "user", "content": None}], "message 0's content is a NoneType"),
])
def test_bad_prompts_are_config_errors_in_generate_stream_and_score(ens, prompt, message):
    for call in (lambda: ens.generate(prompt), lambda: list(ens.stream(prompt)), lambda: ens.score(prompt, "x"),
                 lambda: ens.generate_batch(["fine", prompt])):
        with pytest.raises(ConfigError, match=message):
            call()


@pytest.mark.parametrize("continuation, message", [
    (None, "continuation is a NoneType"),
    ("a\udfffb", "continuation holds a lone surrogate"),
    ("", "continuation is empty"),
])
def test_bad_continuations_are_config_errors(ens, continuation, message):
    with pytest.raises(ConfigError, match=message):
        ens.score("Q", continuation)


@pytest.mark.parametrize("stop", ["\udcff", ["ok", "x\ud800"]])
def test_a_stop_string_without_a_utf8_form_is_refused(ens, stop):
    with pytest.raises(ConfigError, match="stop string holds a lone surrogate"):
        DecodeConfig.build(stop=stop)
    with pytest.raises(ConfigError, match="lone surrogate"):
        ens.generate("Q", stop=stop)


def test_stop_of_a_wrong_type_is_a_config_error():
    for bad in (5, {"a": 1}, 2.5):
        with pytest.raises(ConfigError, match="stop"):
            DecodeConfig.build(stop=bad)


def test_argv_bytes_are_read_as_utf8():
    assert argv_text("caf\udcc3\udca9", "x") == "café"  # what Python makes of the argv bytes 'caf\xc3\xa9'
    with pytest.raises(ConfigError, match=r"the prompt argument is not valid UTF-8 \(byte 0xff at offset 3\)"):
        argv_text("Q: \udcff\udcfe abc", "the prompt argument")


@pytest.mark.parametrize("text, want", [
    (r"a\nb", "a\nb"), (r"\t\\n", "\t\\n"), (r"\u00e9\x41", "éA"), (r"\U0001F600", "😀"), (r"c:\dir", r"c:\dir"),
    ("é\\n", "é\n"), ("trailing\\", "trailing\\"),
])
def test_unescape_reads_the_documented_escapes(text, want):
    assert unescape(text, "x") == want


def test_unescape_refuses_escapes_that_are_not_text():
    with pytest.raises(ConfigError, match="lone surrogate"):
        unescape(r"\ud800", "the prompt")
    with pytest.raises(ConfigError, match="beyond U"):
        unescape(r"\UFFFFFFFF", "the prompt")
