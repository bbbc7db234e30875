"""Run the real `chared` CLI in its own process, with scripted members instead of model weights.

    python -m tests.support.scripted_cli run tiny --run-id r1 ...

Fault tests start this as a subprocess (two at once, killed mid-run, against a dead
server). Everything but the members is the real thing: the CLI, the runner, the records
file, the trackers. Environment:
- CHARED_TEST_SCRIPTS: JSON {model name: text the member writes} (default: five/two);
- CHARED_TEST_DELAY_S: seconds each forward pass sleeps, so a run lasts long enough to
  be interrupted (default 0);
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

    scripts = json.loads(os.environ.get("CHARED_TEST_SCRIPTS") or "null") or DEFAULT_SCRIPTS
    delay = float(os.environ.get("CHARED_TEST_DELAY_S") or 0)
    if delay:
        original = tiny.ScriptedRunner.next_logits

        def slow(self, token_ids):
            time.sleep(delay)
            return original(self, token_ids)

        tiny.ScriptedRunner.next_logits = slow

    def load(spec, chat=False, **_):
        return tiny.scripted_member(scripts[spec], name=spec)

    class Exact:
        name = "exact"

        def score(self, sample, output, parsed):
            return {"exact": float(parsed == sample.reference)}

    lc._load_member = load
    Member.load = staticmethod(load)
    evaluation._SCORERS["exact"] = lambda **_: Exact()


def main() -> int:
    install()
    from chared_flows import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
