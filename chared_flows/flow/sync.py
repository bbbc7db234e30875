"""Complete a tracker's side of a run later, from the run directory (`chared sync`).

The records file is the source of truth; a tracker that was unreachable during the run
(an MLflow server down or killed) is brought up to date by replaying the run through it:
`on_run_start`, `on_record` for every record, then `on_run_end` if every pair of the last
pass was done (run.json has `finished_at`), else `on_run_abort(run, "KILLED")`. Trackers
make the replay idempotent (MLflow finds its runs again by the chared run id and logs only
what is missing), so syncing twice, or syncing a run that was fine, changes nothing.

`sync-pending.json` in a run directory names the trackers that failed during the run; the
CLI writes it and `chared sync` without `--run-id` looks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chared_flows.errors import WorkflowError
from chared_flows.flow.results import ResultsFile, RunLock, read_json_file, write_atomically
from chared_flows.flow.runner import RECORDS_FILE, RUN_FILE, summarize
from chared_flows.records import RunRecord

PENDING_FILE = "sync-pending.json"


def mark_pending(run_dir: Path, trackers: list[str]) -> None:
    """Remember that these trackers miss part of this run."""
    path = Path(run_dir) / PENDING_FILE
    before = read_pending(run_dir)
    if path.parent.is_dir():
        write_atomically(path, json.dumps({"trackers": sorted(set(before) | set(trackers))}) + "\n")


def read_pending(run_dir: Path) -> list[str]:
    path = Path(run_dir) / PENDING_FILE
    if not path.is_file():
        return []
    data = read_json_file(path, f"delete it and run `chared sync` for every tracker of {run_dir}")
    trackers = data.get("trackers", []) if isinstance(data, dict) else None
    if not isinstance(trackers, list) or not all(isinstance(t, str) for t in trackers):
        raise WorkflowError(f"{path} is not a list of trackers; delete it and run `chared sync` for every tracker")
    return trackers


def clear_pending(run_dir: Path, tracker: str) -> None:
    left = [name for name in read_pending(run_dir) if name != tracker]
    path = Path(run_dir) / PENDING_FILE
    if left:
        write_atomically(path, json.dumps({"trackers": left}) + "\n")
    elif path.is_file():
        path.unlink()


def pending_runs(out_dir: Path, tracker: str) -> list[Path]:
    """Run directories under `out_dir` whose `tracker` side is incomplete."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    return sorted(p.parent for p in out_dir.glob(f"*/{PENDING_FILE}") if tracker in read_pending(p.parent))


def load_run(run_dir: Path) -> RunRecord:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise WorkflowError(f"{run_dir} has no {RUN_FILE}; give the directory of a run (`--out` and `--run-id`)")
    data = read_json_file(path, "delete it and resume the run with the same --run-id to write it again")
    try:
        return RunRecord.from_dict(data["run"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise WorkflowError(
            f"{path} is JSON but not a run (no complete 'run' object); delete it and resume the run with the same --run-id"
        ) from None


def replay(run_dir: Path, tracker: Any) -> str:
    """Replay one run directory through `tracker`; returns "finished" or "interrupted".

    Holds the run's lock: a run still in progress is not synced under its feet.
    """
    run_dir = Path(run_dir)
    with RunLock(run_dir):
        run = load_run(run_dir)
        records = ResultsFile(run_dir / RECORDS_FILE).read()
        tracker.on_run_start(run)
        for record in records:
            tracker.on_record(record)
        if run.finished_at is None:
            tracker.on_run_abort(run, "KILLED")
            return "interrupted"
        artifacts = [run_dir / RECORDS_FILE, run_dir / RUN_FILE]
        report = run_dir / "report"
        if report.is_dir():
            artifacts += sorted(p for p in report.iterdir() if p.is_file())
        tracker.on_run_end(run, replay_summary(records, report / "ab.json"), artifacts)
        return "finished"


def replay_summary(records: list, ab_file: Path) -> dict:
    """The summary a run's trackers got at its end: the variants' numbers and, for an A/B run,
    its comparisons and verdicts (from the report's ab.json), so a synced MLflow run holds them too."""
    from chared_flows.evaluation.ab import summary_entries

    summary = summarize(records)
    if ab_file.is_file():
        for variant, entries in summary_entries(read_json_file(ab_file, "delete the report folder and rerun `chared ab` with the same --run-id")).items():
            summary.setdefault(variant, {}).update(entries)
    return summary
