"""Run the real `chared` CLI in its own process, with scripted members instead of model weights.

    python -m tests.support.scripted_cli run tiny --run-id r1 ...

Fault tests start this as a subprocess (two at once, killed mid-run, against a dead
server). Everything but the members is the real thing: the CLI, the runner, the records
file, the trackers. Environment:
- CHARED_TEST_SCRIPTS: JSON {model name: text the member writes} (default: five/two);
- CHARED_TEST_DELAY_S: seconds each forward pass sleeps, so a run lasts long enough to
  be interrupted (default 0);
- CHARED_TEST_GATE: a file path; while it exists, every forward pass waits (a test holds a
  run in the middle, deterministically, and lets it go by deleting the file);
- CHARED_TEST_FAIL: comma-separated model names whose forward pass raises a DecodingError
  (a per-sample error the runner records and a resume retries);
- the `exact` scorer is registered (1.0 when the parsed number equals the reference).
"""

from __future__ import annotations

import json
import os
import sys
import time

DEFAULT_SCRIPTS = {"five": "The answer is 5.\nQuestion: more", "two": "The answer is 2.\nQuestion: more"}


def install() -> None:
    import chared_flows.integrations.langchain as lc
    from chared_flows.decoding import Member
    from chared_flows.evaluation import base as evaluation
    from tests.fixtures import tiny

    from chared_flows.errors import DecodingError

    scripts = json.loads(os.environ.get("CHARED_TEST_SCRIPTS") or "null") or DEFAULT_SCRIPTS
    delay = float(os.environ.get("CHARED_TEST_DELAY_S") or 0)
    failing = {name for name in (os.environ.get("CHARED_TEST_FAIL") or "").split(",") if name}
    gate = os.environ.get("CHARED_TEST_GATE")
    original = tiny.ScriptedRunner.next_logits

    def next_logits(self, token_ids):
        if getattr(self, "fails", False):
            raise DecodingError("scripted failure")
        time.sleep(delay)
        while gate and os.path.exists(gate):
            time.sleep(0.02)
        return original(self, token_ids)

    tiny.ScriptedRunner.next_logits = next_logits

    def load(spec, chat=False, **_):
        member = tiny.scripted_member(scripts[spec], name=spec)
        if spec in failing:
            backend = member.assets.backend
            new_runner = backend.new_runner

            def failing_runner():
                runner = new_runner()
                runner.fails = True
                return runner

            backend.new_runner = failing_runner
        return member

    class Exact:
        name = "exact"

        def score(self, sample, output, parsed):
            return {"exact": float(parsed == sample.reference)}

    lc._load_member = load
    Member.load = staticmethod(load)
    accept_scripted_specs(scripts)
    evaluation._SCORERS["exact"] = lambda **_: Exact()


def accept_scripted_specs(names, monkeypatch=None) -> None:
    """The preflight's model-spec check passes the scripted names (they name no real model)."""
    from chared_flows.flow import preflight

    real = preflight.check_model_spec

    def check(spec: str) -> None:
        if spec not in names:
            real(spec)

    if monkeypatch is None:
        preflight.check_model_spec = check
    else:
        monkeypatch.setattr(preflight, "check_model_spec", check)


def main() -> int:
    install()
    from chared_flows import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
