"""Progress of a run on stderr: a tqdm bar on a terminal, plain lines in a log.

subtle: without a terminal (CI, nohup, a pipe to a log file) a tqdm bar writes nothing
useful, and a long pair (a minute of exact-mode scoring) can leave the log silent for
minutes. `LineProgress` prints one line at least every `interval_s` seconds, from a
timer thread, so the log shows it is alive even while no pair finishes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO, Any

DEFAULT_INTERVAL_S = 30.0


def interval_from_env() -> float:
    """CHARED_PROGRESS_INTERVAL_S (seconds between lines), default 30."""
    raw = os.environ.get("CHARED_PROGRESS_INTERVAL_S", "")
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL_S
    except ValueError:
        value = DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LineProgress:
    """done / total, rate and ETA as a line every `interval_s` seconds (and a last one at close)."""

    def __init__(self, total: int, desc: str, interval_s: float | None = None, stream: IO[str] | None = None):
        self.total, self.desc = total, desc
        self.interval_s = interval_s or interval_from_env()
        self.stream = stream or sys.stderr
        self.done, self.label = 0, ""
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="chared-progress", daemon=True)
        self._thread.start()

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n

    def set_postfix_str(self, label: str, refresh: bool = False) -> None:
        self.label = label

    def line(self) -> str:
        with self._lock:
            done = self.done
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _duration((self.total - done) / rate) if rate > 0 else "?"
        last = f"; last: {self.label}" if self.label else ""
        return (f"{self.desc}: {done}/{self.total} pairs, {rate * 60:.1f}/min, elapsed {_duration(elapsed)}, "
                f"ETA {eta}{last}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print()

    def _print(self) -> None:
        try:
            print(self.line(), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed stream must not kill the run
            pass

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=1)
        self._print()


def progress_bar(total: int, desc: str, enabled: bool, stream: Any = None) -> Any:
    """A tqdm bar on a terminal, LineProgress elsewhere, or a silent tqdm when disabled."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    if enabled and not _isatty(stream):
        return LineProgress(total, desc, stream=stream)
    return tqdm(total=total, desc=desc, unit="pair", disable=not enabled, leave=False, file=stream)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
