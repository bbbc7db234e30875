"""Run a resolved workflow: every (variant, sample) pair through `template | llm | parser`.

Results go to `<out>/<run_id>/records.jsonl`, one SampleRecord per line, written as each
pair finishes (see `results.py`: one process per run directory, torn lines repaired, a
retried pair replaces its error row); `run.json` holds the RunRecord (with `finished_at`
once every pair is done) and the workflow's hash. Running again with the same run id
skips the pairs already in the file, so an interrupted run resumes where it stopped. A run
id cannot be reused for a different workflow or template version: mixing their records
would make the comparison meaningless, so that is an error.

Sinks (trackers) subscribe through three hooks, the same as tracking's Tracker protocol:
on_run_start(RunRecord), on_record(SampleRecord), on_run_end(RunRecord, summary, artifacts);
a sink may also have on_run_abort(RunRecord, status), called with "KILLED" (interrupt) or
"FAILED" (an exception) when the run stops before its end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import chared_flows
from chared_flows.errors import WorkflowError
from chared_flows.evaluation.base import Sample, load_dataset
from chared_flows.flow.llm import VariantLLM
from chared_flows.flow.loader import ResolvedWorkflow
from chared_flows.flow.pairs import LLMFactory, LocalPairs, PairExecutor, PairRunner
from chared_flows.flow.progress import progress_bar
from chared_flows.flow.results import ResultsFile, RunLock, read_json_file, write_atomically
from chared_flows.records import RunRecord, SampleRecord, VariantSpec, variant_summary

RECORDS_FILE = "records.jsonl"
DEFAULT_BATCH_SIZE = 8  # pairs decoding at once (their forward passes are batched)
RUN_FILE = "run.json"


class RunSink(Protocol):
    def on_run_start(self, run: RunRecord) -> None: ...

    def on_record(self, record: SampleRecord) -> None: ...

    def on_run_end(self, run: RunRecord, summary: dict[str, Any], artifacts: list[Path]) -> None: ...


# Where pairs run: given the PairRunner and the batch size, an executor (flow/pairs.py);
# LocalPairs (threads in this process) by default, distributed.RayPairs for `--ray`.
ExecutorFactory = Callable[[PairRunner, int], PairExecutor]
# Called once every pair is done, before the sinks' on_run_end; the paths it returns
# (a report, plots) are handed to the sinks as artifacts with the results file. It may
# return (paths, {variant: {name: value}}) to add entries (an A/B's comparisons and
# verdicts) to the summary the sinks get: numbers become metrics, strings tags.
Finisher = Callable[[RunRecord, list[SampleRecord]], "list[Path] | tuple[list[Path], dict[str, dict[str, Any]]]"]


def default_llm_factory(variant: VariantSpec) -> Any:
    """The engine itself (flow/llm.py): a plain run needs no LangChain."""
    return VariantLLM(variant)


def new_run_id(workflow: str) -> str:
    return f"{workflow}-{time.strftime('%Y%m%d-%H%M%S')}"


class WorkflowRunner:
    def __init__(
        self,
        workflow: ResolvedWorkflow,
        *,
        out_dir: Path | str = "runs",
        run_id: str | None = None,
        limit: int | None = None,
        sinks: Iterable[RunSink] = (),
        llm_factory: LLMFactory = default_llm_factory,
        progress: bool = True,
        dataset_overrides: dict[str, Any] | None = None,
        interleave: bool = False,
        timed_samples: int = 0,
        finisher: Finisher | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        executor: ExecutorFactory = LocalPairs,
    ):
        """`dataset_overrides` replace keys of the workflow's dataset reference (e.g. a local
        `path`) without changing the workflow's identity; `interleave` runs every variant on
        sample 1, then on sample 2, ..., so a run cut short still has complete pairs for
        paired comparisons (the default runs variant by variant). `executor` decides where
        pairs run (flow/pairs.py); whatever it is, this process keeps the lock, the records
        file and the sinks."""
        self.workflow = workflow
        self.run_id = run_id or new_run_id(workflow.spec.name)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.run_id):
            raise WorkflowError(f"run id {self.run_id!r} may use only letters, digits, '_', '.', '-'")
        self.run_dir = Path(out_dir) / self.run_id
        self.results = ResultsFile(self.run_dir / RECORDS_FILE)
        self.limit = limit
        self.sinks = list(sinks)
        self.llm_factory = llm_factory
        self.progress = progress
        self.dataset_overrides = dict(dataset_overrides or {})
        self.interleave = interleave
        if not isinstance(timed_samples, int) or isinstance(timed_samples, bool) or timed_samples < 0:
            raise WorkflowError(f"timed samples {timed_samples!r} must be an integer >= 0 (0: none)")
        self.timed_samples = timed_samples
        self.finisher = finisher
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise WorkflowError(f"batch size {batch_size!r} must be an integer >= 1 (1 runs one pair at a time)")
        self.batch_size = batch_size
        self.executor = executor

    @property
    def dataset_ref(self) -> dict[str, Any]:
        return {**self.workflow.spec.dataset, **self.dataset_overrides}

    # --- setup -----------------------------------------------------------

    def load_samples(self) -> list[Sample]:
        """The run's samples (the dataset, cut to `limit`)."""
        samples = load_dataset(self.dataset_ref)
        if self.limit is not None:
            samples = samples[: self.limit]
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            raise WorkflowError("the dataset has repeated sample ids; resuming needs unique ids")
        return samples

    def run_record(self, samples: list[Sample] | None = None) -> RunRecord:
        return RunRecord(
            **self._identity(),
            dataset=json.dumps(self.dataset_ref, sort_keys=True, default=str),
            variants=list(self.workflow.variants),
            package_version=chared_flows.__version__,
            git_commit=_git_commit(),
            limit=self.limit,
            n_samples=len(samples) if samples is not None else 0,
            dataset_hash=dataset_hash(samples) if samples is not None else "",
            backend=backend_policy(),
        )

    def _write_run_file(self, run: RunRecord) -> None:
        path = self.run_dir / RUN_FILE
        identity = self._run_identity(run)
        write_atomically(path, json.dumps({**identity, "run": run.to_dict()}, indent=2, default=str) + "\n")

    def _run_identity(self, run: RunRecord) -> dict[str, str]:
        return {
            "workflow_hash": self.workflow.content_hash,
            "template_hash": run.template_hash,
            "workflow": f"{run.workflow} v{run.workflow_version}",
            "template": f"{run.template}@{run.template_version}",
            # subtle: the YAML names `models:/NAME@champion`, not the version it resolved to; an
            # alias moved between a run and its resume would mix two combinations in one column
            "combinations": ",".join(f"{v.name}={v.combination}" for v in run.variants if v.combination),
        }

    def _claim_run_dir(self, run: RunRecord) -> None:
        """Check that an existing run.json describes the same workflow, then (re)write it."""
        path = self.run_dir / RUN_FILE
        identity = self._run_identity(run)
        # subtle: a run that failed before its first pair (an unknown model, a dead --ray
        # address, repeated sample ids) left a run.json but no records; nothing can be mixed,
        # so the corrected workflow may take the id over.
        if path.is_file() and self.results.has_records():
            fix = f"delete {path} to resume with the same workflow, or start a new run with another --run-id"
            before = read_json_file(path, fix)
            if not isinstance(before, dict):
                raise WorkflowError(f"{path} holds a JSON {type(before).__name__}, not a run; {fix}")
            changed = [k for k in ("workflow_hash", "template_hash", "combinations")
                       if before.get(k, "") != identity[k]]
            if changed:
                raise WorkflowError(
                    f"run {self.run_id!r} in {self.run_dir} was started with {before.get('workflow')} / "
                    f"{before.get('template')} and different content ({', '.join(changed)} differ); "
                    "resume it with the same files, or start a new run with another --run-id"
                )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_run_file(run)  # finished_at is None again until this pass completes

    # --- the run ---------------------------------------------------------

    def run(self) -> Iterator[SampleRecord]:
        """Yield each new record as it finishes (already finished pairs are skipped).

        The run directory is locked for the whole run: a second process on the same run id
        fails at once with a WorkflowError instead of duplicating every record.
        """
        lock = RunLock(self.run_dir)
        lock.acquire()
        try:
            yield from self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> Iterator[SampleRecord]:
        samples = self.load_samples()
        run = self.run_record(samples)
        self._claim_run_dir(run)
        self.results.repair()  # before the first write: a torn last line would swallow it
        finished = [r for r in self.results.read() if r.error is None]
        done = {(r.sample_id, r.variant) for r in finished}
        todo = self._todo(samples, done)
        pair_runner = PairRunner(self.workflow, self._identity(), self.llm_factory)
        pair_runner.alone = frozenset((v.name, s.id) for s in self._timed(samples) for v in self.workflow.variants)
        executor = self.executor(pair_runner, self.batch_size)
        try:
            # Members load here, before on_run_start, so the run record names each member's
            # tokenizer family and a bad model spec fails before anything is logged.
            families = executor.prepare(list(self.workflow.variants), todo)
            run.variants = self.workflow.variants = [self._with_families(v, families.get(v.name)) for v in run.variants]
            self._notify("on_run_start", run)
            try:
                yield from self._run_pairs(run, samples, finished, todo, executor)
            except BaseException as exc:
                # subtle: GeneratorExit (the caller stopped iterating) and KeyboardInterrupt are
                # interruptions, anything else a failure; either way trackers must not leave the
                # run looking alive (an MLflow run would stay RUNNING forever).
                status = "FAILED" if isinstance(exc, Exception) else "KILLED"
                self._notify_optional("on_run_abort", run, status)
                raise
        finally:
            executor.close()

    def _todo(self, samples: list[Sample], done: set[tuple[str, str]]) -> list[tuple[VariantSpec, Sample]]:
        """The pairs still to run, in order: variant by variant, or interleaved a batch of samples at a time.

        Interleaved, every variant runs on samples 1..B, then on B+1..2B, ... (B the batch size),
        so a run cut short has complete pairs while each batch still holds one variant only.
        """
        variants = self.workflow.variants
        if not self.interleave:
            return [(v, s) for v in variants for s in samples if (s.id, v.name) not in done]
        timed = self._timed(samples)
        rest = samples[len(timed):]
        chunks = [[s] for s in timed] + [rest[i:i + self.batch_size] for i in range(0, len(rest), self.batch_size)]
        return [(v, s) for chunk in chunks for v in variants for s in chunk if (s.id, v.name) not in done]

    def _timed(self, samples: list[Sample]) -> list[Sample]:
        """The timed sub-sample: its pairs decode alone (batch 1), one variant after another.

        subtle: latency ratios between variants depend on the batch size even when a batch
        holds one variant (SmolLM2 gains more from batching than Gemma-3: CharED/SmolLM2 was
        2.70x at batch 1 and 3.54x at batch 8), so an A/B compares timings at one batch size,
        1, the latency one request sees; the other pairs still decode in batches.
        """
        return samples[: self.timed_samples] if self.interleave else []

    def _run_pairs(self, run, samples, finished, todo, executor: PairExecutor) -> Iterator[SampleRecord]:
        # subtle: a resumed run is a new run for the sinks, so they are given the records
        # finished earlier too and end up with the whole run; each tracker makes the replay
        # idempotent (MLflow reuses the run's MLflow runs, PromptLayer's outbox keys pairs).
        wanted = {s.id for s in samples}
        index = {s.id: i for i, s in enumerate(samples)}
        for record in finished:
            if record.sample_id in wanted:
                if record.sample_index < 0:  # written before records kept their index
                    record.sample_index = index[record.sample_id]
                self._notify("on_record", record)
        bar = progress_bar(len(todo), self.run_id, enabled=self.progress)
        results = executor.results(todo)
        try:
            # Records are written as they come: in todo order from LocalPairs, in the order
            # they finish from Ray actors (sample_index keeps each record's place).
            for (variant, sample), record in results:
                record.sample_index = index[sample.id]
                self.results.put(record)
                self._notify("on_record", record)
                bar.update(1)
                bar.set_postfix_str(variant.name, refresh=False)
                yield record
        finally:
            results.close()  # an interrupted run stops its generations in flight now, not at garbage collection
            bar.close()
        run.finished_at = time.time()
        self._write_run_file(run)
        all_records = [r for r in self.results.read() if r.sample_id in wanted]
        artifacts = [self.results.path, self.run_dir / RUN_FILE]
        summary = summarize(all_records)
        if self.finisher is not None:
            made = self.finisher(run, all_records)
            paths, extras = made if isinstance(made, tuple) else (made, {})
            artifacts += paths
            for variant, entries in extras.items():
                summary.setdefault(variant, {}).update(entries)
        self._notify("on_run_end", run, summary, artifacts)

    def run_all(self) -> list[SampleRecord]:
        return list(self.run())

    @staticmethod
    def _with_families(variant: VariantSpec, families: list[str] | None) -> VariantSpec:
        """The variant with each member's tokenizer family filled in (as its executor reported them)."""
        if families is None or variant.tokenizer_families:
            return variant
        return dataclasses.replace(variant, tokenizer_families=tuple(families))

    def _identity(self) -> dict[str, Any]:
        """The fields that tie a run and each of its records to one workflow and template version."""
        spec, template = self.workflow.spec, self.workflow.template
        return dict(
            run_id=self.run_id,
            workflow=spec.name,
            workflow_version=spec.version,
            template=template.name,
            template_version=template.version,
            template_hash=template.content_hash,
        )

    def _notify(self, hook: str, *args: Any) -> None:
        for sink in self.sinks:
            getattr(sink, hook)(*args)

    def _notify_optional(self, hook: str, *args: Any) -> None:
        """Call a hook on the sinks that have it; used while unwinding, so it never raises."""
        for sink in self.sinks:
            method = getattr(sink, hook, None)
            if method is not None:
                try:
                    method(*args)
                except Exception:  # noqa: BLE001 - the original exception is what the caller sees
                    pass


def dataset_hash(samples: list[Sample]) -> str:
    """A content hash of the samples a run covers: ids, inputs, references and domains, in order."""
    canonical = json.dumps(
        [[s.id, s.inputs, s.reference, s.domain] for s in samples], sort_keys=True, default=str, separators=(",", ":")
    )
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def summarize(records: list[SampleRecord]) -> dict[str, Any]:
    """Per variant: records.variant_summary (the names MLflow's child runs use too)."""
    by_variant: dict[str, list[SampleRecord]] = {}
    for record in records:
        by_variant.setdefault(record.variant, []).append(record)
    return {variant: variant_summary(rows) for variant, rows in by_variant.items()}


def backend_policy() -> str:
    """Which backend runs plain model specs in this process (decoding/backends/auto.py); logged as a run param."""
    from chared_flows.decoding import backend_policy as policy  # lazy: the engine loads only when a run needs it

    return policy()


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
