"""The CLI on hostile input: every failure is one line and a non-zero exit, never a silent success."""

from __future__ import annotations

import json

import pytest
import torch

import chared_flows.integrations.langchain as lc
from chared_flows.decoding import Member, MemberAssets
from chared_flows.errors import BackendError
from tests.fixtures.tiny import ScriptedRunner, scripted_member, tokenizer_for
from tests.support.scripted_cli import accept_scripted_specs
from tests.unit.cli.test_cli import SCRIPTS, project, run_cli  # noqa: F401 - project is a fixture

DOWN = "served member at http://127.0.0.1:1 failed 4 tries in 3.0 s (Connection refused)"


class DownRunner(ScriptedRunner):
    def next_logits(self, token_ids) -> torch.Tensor:
        raise BackendError(DOWN)


def down_member(name: str = "down") -> Member:
    tok = tokenizer_for("byte_level")
    holder: dict = {}
    factory = lambda: DownRunner(holder["assets"].vocab, b"", tok.eos_token_id, len(tok))  # noqa: E731
    holder["assets"] = MemberAssets.build(name, tok, factory, num_rows=len(tok), context_window=4096, source="down")
    return Member(holder["assets"])


@pytest.fixture
def with_down_member(project, monkeypatch):
    load = lambda spec, chat=False, **_: down_member() if spec == "down" else scripted_member(SCRIPTS[spec], name=spec)  # noqa: E731
    monkeypatch.setattr(lc, "_load_member", load)
    monkeypatch.setattr(Member, "load", staticmethod(load))
    accept_scripted_specs({*SCRIPTS, "down"}, monkeypatch)
    text = (project / "workflows" / "tiny.yaml").read_text()
    (project / "workflows" / "tiny.yaml").write_text(
        text.replace("  - {name: mix, models: [five, two], weights_sweep: [0.5]}\n", "  - {name: gone, models: [down]}\n"))
    return project


@pytest.mark.parametrize("command", ["run", "ab"])
def test_a_variant_whose_every_pair_failed_exits_non_zero_with_one_line(with_down_member, capsys, command):
    code, out, err = run_cli(capsys, command, "tiny", "--run-id", "r", "--no-track")
    assert code == 4, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: variant gone: all 2 pairs failed (first: BackendError: {DOWN}); "
                     "fix the cause and rerun `--run-id r` to retry them"]
    records = [json.loads(line) for line in (with_down_member / "runs" / "r" / "records.jsonl").read_text().splitlines()]
    assert sorted(r["variant"] for r in records if r["error"] is None) == ["five", "five"]  # the others are kept


@pytest.mark.parametrize("argv, message", [
    (["Q: \udcff\udcfe abc"], "error: the prompt argument is not valid UTF-8 (byte 0xff at offset 3)"),
    (["Q", "--stop", "\udcff"], "error: a --stop argument is not valid UTF-8 (byte 0xff at offset 0)"),
    (["Q", "--stop", r"\ud800"], "error: a --stop argument holds a lone surrogate"),
    (["-e", r"Q\udc00"], "error: the prompt holds a lone surrogate"),
])
def test_text_from_argv_that_is_not_utf8_is_one_line(project, capsys, argv, message):
    code, out, err = run_cli(capsys, "generate", *argv, "--models", "five")
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and out == ""


def test_escapes_are_read_in_the_prompt_only_with_e(project, capsys, monkeypatch):
    from chared_flows.decoding import Ensemble

    seen, start = [], Ensemble.start_stream
    monkeypatch.setattr(Ensemble, "start_stream", lambda self, prompt, *a, **k: seen.append(prompt) or start(self, prompt, *a, **k))
    assert run_cli(capsys, "generate", r"Q:\n2+3=", "--models", "five", "--max-new-chars", "4")[0] == 0
    assert run_cli(capsys, "generate", "-e", r"Q:\n2+3=", "--models", "five", "--max-new-chars", "4")[0] == 0
    assert seen == ["Q:\\n2+3=", "Q:\n2+3="]


def test_templates_list_shows_the_good_ones_and_one_line_per_broken_version(project, capsys):
    for name, data in (("zz_yaml", b'name: zz_yaml\nversion: 1\ntemplate: "{x\n'), ("zz_bytes", b"\xff\xfe"),
                       ("zz_empty", b"")):
        (project / "templates" / name).mkdir()
        (project / "templates" / name / "v1.yaml").write_bytes(data)
    (project / "templates" / "math_answer" / "v2.yaml").write_text("name: math_answer\nversion: 2\n")  # no template
    code, out, err = run_cli(capsys, "templates", "list")
    assert code == 2
    assert "math_answer  (v1)" in out and "char_scoring  (v1)" in out and "code_complete  (v1)" in out
    assert "zz_" not in out
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert any("zz_bytes/v1.yaml:1: not UTF-8 (byte 0xff)" in line for line in lines)
    assert any("zz_yaml/v1.yaml:4: malformed YAML" in line for line in lines)
    assert any("math_answer/v2.yaml" in line for line in lines)
