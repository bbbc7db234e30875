"""A file that is not GGUF is one line on every path that takes a .gguf (transformers, llama_cpp:, served: tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chared_flows.decoding import Member
from chared_flows.decoding.backends.specs import gguf_path, load_tokenizer
from chared_flows.errors import ModelLoadError


@pytest.fixture
def not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>\n")  # what a failed download leaves
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_transformers_path(not_gguf, tmp_path):
    with pytest.raises(ModelLoadError) as err:
        Member.load(str(not_gguf), cache_dir=str(tmp_path / "cache"))
    assert one_line(err) == (f"{str(not_gguf)!r} is not a GGUF file (it starts with b'<htm', not b'GGUF'); "
                             "give a .gguf model file, or a Hugging Face model directory")


def test_llama_cpp_and_served_tokenizer_paths(not_gguf, tmp_path):
    with pytest.raises(ModelLoadError, match="is not a GGUF file") as err:
        gguf_path(str(not_gguf), tmp_path)  # what llama_cpp:FILE resolves first
    one_line(err)
    with pytest.raises(ModelLoadError, match="is not a GGUF file") as err:
        load_tokenizer(str(not_gguf), tmp_path)  # served:URL?tokenizer=FILE
    one_line(err)


def test_a_truncated_gguf_is_one_line(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 4)  # the magic, then the file ends
    with pytest.raises(ModelLoadError, match=r"could not read GGUF file .*cut.gguf.*is the file complete") as err:
        Member.load(str(path), cache_dir=str(tmp_path / "cache"))
    one_line(err)
    assert not (tmp_path / "cache" / "converted").exists() or not any((tmp_path / "cache" / "converted").iterdir())


def test_an_empty_or_missing_file(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"starts with b''"):
        Member.load(str(tmp_path / "empty.gguf"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        Member.load(str(tmp_path / "gone.gguf"), cache_dir=str(tmp_path / "cache"))


def test_a_conversion_another_process_finished_first_is_kept(tmp_path):
    """publish_dir (convert_gguf's last step): the loser of two concurrent conversions keeps the winner's."""
    from chared_flows.decoding.backends.loading import publish_dir

    def staged(name: str, text: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(text)
        return folder

    target = tmp_path / "model"
    publish_dir(staged(".tmp-first", "first"), target)  # nothing there yet: renamed
    assert (target / "config.json").read_text() == "first" and not (tmp_path / ".tmp-first").exists()
    publish_dir(staged(".tmp-second", "second"), target)  # the same conversion, done twice: no error
    assert (target / "config.json").read_text() == "first"
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a conversion")
    with pytest.raises(OSError):  # a non-empty target that is no conversion is still an error
        publish_dir(staged(".tmp-third", "third"), junk)
