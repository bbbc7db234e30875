"""Decoding options on the command line: one flag per engine field, bad values one line before any model loads."""

from __future__ import annotations

import io
import logging

import pytest

import chared_flows
from chared_flows import cli
from chared_flows.decoding import DecodeConfig
from chared_flows.decoding.config import DecodeFields
from tests.unit.cli.test_cli import project, run_cli  # noqa: F401  (fixture and helper)


def test_every_decoding_field_is_a_flag_with_help_and_choices() -> None:
    parser = cli.build_parser()
    generate = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices["generate"]
    flags = {a.dest: a for a in generate._actions}
    for name in DecodeFields.model_fields:
        assert name in flags, f"no --{name.replace('_', '-')} flag"
        assert flags[name].help and "default" in flags[name].help
    assert set(flags["mode"].choices) == {"chared", "exact"}
    assert set(flags["rule"].choices) == {"mixture", "product", "adaptive"}
    for action in cli._all_actions(parser):
        if isinstance(action, cli.argparse._SubParsersAction):
            continue  # each subcommand has its own help (argparse lists them)
        assert action.help, f"option {action.option_strings or action.dest} has no help text"


def test_flags_reach_the_decode_config() -> None:
    args = cli.build_parser().parse_args(cli.join_dash_values(
        ["generate", "x", "--mode", "exact", "--beam-width", "3", "--prune-threshold", "0.01",
         "--no-token-healing", "--weights", "0.2,0.8", "--stop", r"\n", "--stop", "END"], cli.build_parser()))
    config = DecodeConfig.build(**cli.decoding_values(args))
    assert (config.mode, config.beam_width, config.prune_threshold, config.token_healing) == ("exact", 3, 0.01, False)
    assert config.weights == (0.2, 0.8) and config.stop == ("\n", "END")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--weights", "-1,2"], "weight 0 is -1.0; weights must be >= 0"),
        (["--weights", "0.5,x"], "must be comma-separated numbers"),
        (["--max-new-chars", "100000000"], "max_new_chars is 100000000: Input should be less than or equal to 32768"),
        (["--top-p", "1.5"], "top_p is 1.5"),
        (["--temperature", "-1"], "temperature is -1.0"),
        (["--weights", "1,2,3"], "--weights has 3 values for 2 models"),
    ],
)
def test_bad_values_are_one_line_errors_before_any_model_loads(no_model_loads, capsys, argv, message) -> None:
    code, _, err = run_cli(capsys, "generate", "hi", "--models", "five,two", *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert no_model_loads == []


def test_invalid_utf8_on_stdin_is_a_one_line_error(no_model_loads, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"caf\xe9 au lait")))
    code, _, err = run_cli(capsys, "generate", "-", "--models", "five")
    assert code == 2 and "stdin is not valid UTF-8 (byte 0xe9 at offset 3)" in err and err.count("\n") == 1


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"chared {chared_flows.__version__}"


def test_loading_a_model_logs_one_line_and_no_progress_bars(tmp_path, capfd, caplog) -> None:
    from chared_flows.decoding.backends import loading as models
    from tests.fixtures.tiny import PAD_ROWS, byte_level_tokenizer, tiny_model

    tok = byte_level_tokenizer()
    tiny_model(len(tok) + PAD_ROWS).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.INFO, logger="chared_flows"):
        models.load_assets(str(tmp_path / "m"), cache_dir=str(tmp_path / "cache"))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("chared_flows")]
    assert len(lines) == 1 and lines[0].startswith(f"loaded {tmp_path / 'm'} with transformers from ") and lines[0].endswith(" s")
    assert "Loading weights" not in capfd.readouterr().err
