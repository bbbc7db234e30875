from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

from chared_flows.errors import ConfigError
from chared_flows.tracking import FanOut, make_trackers

PACKAGE = Path(__file__).resolve().parents[3] / "chared_flows"


class Recorder:
    name = "recorder"

    def __init__(self):
        self.calls = []

    def on_run_start(self, run):
        self.calls.append("start")

    def on_record(self, record):
        self.calls.append("record")

    def on_run_end(self, run, summary, artifacts):
        self.calls.append(("end", summary, artifacts))


class Broken(Recorder):
    name = "broken"

    def on_record(self, record):
        raise RuntimeError("backend exploded")


def test_one_failing_tracker_does_not_stop_the_others(run_record, records, caplog):
    ok = Recorder()
    fan = FanOut([Broken(), ok])
    with caplog.at_level(logging.WARNING):
        fan.on_run_start(run_record)
        for r in records[:2]:
            fan.on_record(r)
        fan.on_run_end(run_record)
    assert ok.calls == ["start", "record", "record", ("end", {}, [])]
    assert fan.failures == [("broken", "on_record", "RuntimeError: backend exploded")] * 2
    # one line per failing tracker, no traceback (a dead server must not print one per call)
    assert caplog.text.count("tracker broken failed in on_record") == 1 and "Traceback" not in caplog.text
    assert fan.failed() == {"broken": "RuntimeError: backend exploded (in on_record)"}
    fan.on_run_abort(run_record, "KILLED")  # optional hook: trackers without it are skipped
    assert len(fan.failures) == 2


def test_an_interrupt_waits_until_the_tracker_call_is_done(run_record):
    import os
    import signal

    class Writing(Recorder):
        def on_run_start(self, run):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a store write
            self.calls.append("write finished")

    tracker = Writing()
    # Subtle: a process started in the background by a non-interactive shell (as CI may start
    # the suite) inherits SIGINT ignored, and then Ctrl-C rightly does nothing; this test is
    # about the handler a terminal gives, so it installs it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            FanOut([tracker]).on_run_start(run_record)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert tracker.calls == ["write finished"]


def test_make_trackers_names_unknown_and_builds_known(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="mlflow, promptlayer"):
        make_trackers(["wandb"])
    monkeypatch.setenv("PROMPTLAYER_API_KEY", "k")
    fan = make_trackers(
        ["mlflow", "promptlayer"], tmp_path, {"mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/m.db"}}
    )
    assert [t.name for t in fan.trackers] == ["mlflow", "promptlayer"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", ["tracking", "reports", "evaluation"])
def test_layer_imports(layer):
    allowed = {"chared_flows.records", "chared_flows.errors"}
    if layer == "evaluation":
        allowed |= {"chared_flows.evaluation"}
    for path in (PACKAGE / layer).glob("*.py"):
        for name in _imports(path):
            if name.startswith("chared_flows"):
                assert name in allowed or name.startswith(f"chared_flows.{layer}"), (path, name)
            root = name.split(".")[0]
            if root in ("mlflow", "promptlayer"):
                assert path.name == f"{root}.py", (path, name)
