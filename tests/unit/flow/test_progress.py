"""Progress lines without a terminal: at least one per interval, even while no pair finishes."""

from __future__ import annotations

import io
import time

from chared_flows.flow.progress import LineProgress, progress_bar


def test_a_line_comes_every_interval_even_when_nothing_finishes():
    stream = io.StringIO()
    bar = LineProgress(10, "run-x", interval_s=0.05, stream=stream)
    deadline = time.monotonic() + 10
    while stream.getvalue().count("\n") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().count("\n") >= 2  # two beats with no update at all
    bar.update(4)
    bar.set_postfix_str("mix")
    bar.close()
    last = stream.getvalue().splitlines()[-1]
    assert last.startswith("run-x: 4/10 pairs, ") and "ETA" in last and last.endswith("last: mix")
    bar.close()  # idempotent


def test_a_terminal_gets_tqdm_and_a_pipe_gets_lines():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert not isinstance(progress_bar(3, "r", enabled=True, stream=Tty()), LineProgress)
    lines = progress_bar(3, "r", enabled=True, stream=io.StringIO())
    assert isinstance(lines, LineProgress)
    lines.close()
    assert not isinstance(progress_bar(3, "r", enabled=False, stream=io.StringIO()), LineProgress)
