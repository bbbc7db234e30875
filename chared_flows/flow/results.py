"""A run directory's records file and its lock: one writer, nothing lost, one row per pair.

`records.jsonl` holds one SampleRecord per line. Traps handled here:
- Two processes on one run id would both run every pair and append every record twice.
  `RunLock` takes an exclusive `flock` on `<run dir>/.lock` for the whole run; a second
  process gets a one-line error naming the holder's pid. The kernel drops the lock when
  the holder dies, however it dies, so a stale lock never blocks a resume.
- A process killed mid-write leaves a torn last line. Appending after it would glue the
  next record onto the fragment: that record is lost and the line in the middle is
  corrupt for every later read. `repair()` cuts the fragment off (keeping it in
  `records.jsonl.torn`) before anything is appended.
- A pair that errored is retried on resume; its new record *replaces* the error row
  (atomically: a new file, fsynced, renamed over the old one), so a report or tracker
  counts each pair once however often it was retried.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from chared_flows.errors import WorkflowError
from chared_flows.records import SampleRecord

LOCK_FILE = ".lock"


def _pair(record: SampleRecord) -> tuple[str, str]:
    return record.sample_id, record.variant


def _encode(record: SampleRecord) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so a reader (or a crash) sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a run directory, held from `acquire()` to `release()`."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._in_use(fd)
            os.close(fd)
            raise error from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def check_free(self) -> None:
        """Fail now if another process holds the lock; takes nothing (the CLI calls it before its
        heavy imports, so a second run on a busy id is refused in a fraction of a second)."""
        if not self.path.is_file():
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # conflicts with the holder's LOCK_EX only
        except BlockingIOError:
            raise self._in_use(fd) from None
        finally:
            os.close(fd)  # closing drops the shared lock

    def _in_use(self, fd: int) -> WorkflowError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
        return WorkflowError(
            f"run {self.path.parent.name!r} is in use by another process (pid {holder}); "
            "wait for it to finish, or start a new run with another --run-id"
        )

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_RECORD_TYPES = {"run_id": str, "variant": str, "sample_id": str, "output": str, "scores": dict,
                 "inputs": dict, "error": (str, type(None))}


def record_problem(value: Any) -> str | None:
    """What keeps a decoded JSON line from being a SampleRecord, or None."""
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, not an object"
    required = [f.name for f in dataclasses.fields(SampleRecord)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in value]
    if missing:
        return f"missing {', '.join(missing)}"
    for name, kind in _RECORD_TYPES.items():
        if name in value and not isinstance(value[name], kind):
            return f"{name} is a {type(value[name]).__name__}"
    return None


def read_json_file(path: Path, fix: str) -> Any:
    """A small JSON file (run.json, pending.json) decoded; a damaged one is one line naming file, line and `fix`."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{path}: not UTF-8 (byte offset {exc.start}); {fix}") from None
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}); {fix}") from None


class ResultsFile:
    """The JSONL file of one run's records: the latest record of each pair counts."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # Pairs already in the file, known once read; valid while this process holds the lock.
        self._pairs: set[tuple[str, str]] | None = None

    def _rows(self) -> list[SampleRecord]:
        """Every record in file order; a torn *last* line is left out, any other bad line is an error."""
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                # subtle: a run killed mid-write leaves a torn last line; that pair simply reruns
                if number != len(lines) or data.endswith(b"\n"):
                    raise WorkflowError(
                        f"{self.path}:{number}: corrupt record line; move it out of the file to rerun that pair"
                    ) from None
                continue
            problem = record_problem(value)
            if problem:
                raise WorkflowError(
                    f"{self.path}:{number}: JSON but not a record ({problem}); move it out of the file to rerun that pair"
                )
            rows.append(SampleRecord.from_dict(value))
        return rows

    def has_records(self) -> bool:
        """Whether the file holds anything (a torn line counts: it was a pair that ran)."""
        return self.path.is_file() and self.path.stat().st_size > 0

    def read(self) -> list[SampleRecord]:
        """One record per (sample, variant): the latest, in the order pairs first appeared."""
        latest: dict[tuple[str, str], SampleRecord] = {}
        for record in self._rows():
            latest[_pair(record)] = record
        return list(latest.values())

    def repair(self) -> str:
        """Cut a torn last line off (kept in `<file>.torn`); return what was cut ('' if nothing).

        Call it with the run's lock held, before the first append. A last line that is
        complete JSON but lost its newline is kept and the newline added.
        """
        if not self.path.is_file():
            return ""
        raw = self.path.read_bytes()
        if not raw or raw.endswith(b"\n"):
            return ""
        cut = raw.rfind(b"\n") + 1
        tail = raw[cut:]
        try:
            json.loads(tail.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            with self.path.with_name(self.path.name + ".torn").open("ab") as keep:
                keep.write(tail + b"\n")
            write_atomically(self.path, raw[:cut].decode("utf-8"))
            self._pairs = None
            return tail.decode("utf-8", "replace")
        with self.path.open("ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return ""

    def put(self, record: SampleRecord) -> None:
        """Append the record, or replace the row of the same pair (a retried error) in place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._pairs is None:
            self._pairs = {_pair(r) for r in self._rows()}
        if _pair(record) in self._pairs:
            kept = [record if _pair(r) == _pair(record) else r for r in self._rows()]
            unique = list({_pair(r): r for r in kept}.values())  # older duplicates collapse too
            write_atomically(self.path, "".join(_encode(r) for r in unique))
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(_encode(record))
            handle.flush()
            os.fsync(handle.fileno())
        self._pairs.add(_pair(record))

    # Kept for callers of the earlier API: every new record goes through put().
    append = put
