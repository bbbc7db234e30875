"""How a (variant, sample) pair becomes a SampleRecord, and where pairs run.

`PairRunner` is the one code path from a pair to its record (render the template, generate
with the variant's LLM (flow/llm.py), parse, score). It is built from picklable parts (the
resolved workflow, the run's identity fields, the LLM factory) and builds each variant's
LLM once per process, so the driver's threads and a Ray actor in another process run
exactly the same code.

An executor is where pairs run; the runner needs three methods from it:
- `prepare(variants, todo)` -> {variant name: tokenizer families or None}: load the members
  (so a bad model spec fails before anything is logged) and say their families;
- `results(todo)`: a generator of (pair, record) for every pair of `todo`, each once, as
  they finish (closing it stops the pairs in flight);
- `close()`: stop whatever is still running (called however the run ends).
`LocalPairs` runs them in this process (threads); `distributed.RayPairs` on Ray actors.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generator, Protocol

from chared_flows.decoding import CancelToken, Ensemble, cancel_requested, cancellable
from chared_flows.errors import CharedError, WorkflowError
from chared_flows.evaluation.base import Sample
from chared_flows.records import SampleRecord, VariantSpec

Pair = tuple[VariantSpec, Sample]
LLMFactory = Callable[[VariantSpec], Any]


class PairExecutor(Protocol):
    def prepare(self, variants: list[VariantSpec], todo: list[Pair]) -> dict[str, list[str] | None]: ...

    def results(self, todo: list[Pair]) -> Generator[tuple[Pair, SampleRecord], None, None]: ...

    def close(self) -> None: ...


class PairRunner:
    """Runs one pair to its record; builds (and keeps) each variant's LLM on first use."""

    def __init__(self, workflow: Any, identity: dict[str, Any], llm_factory: LLMFactory):
        self.workflow = workflow
        self.identity = dict(identity)
        self.llm_factory = llm_factory
        self._llms: dict[str, Any] = {}
        self._lock = threading.Lock()
        # (variant, sample id) of the pairs that must decode alone: the timed sub-sample
        self.alone: frozenset[tuple[str, str]] = frozenset()

    def __getstate__(self) -> dict[str, Any]:
        # subtle: shipped to a Ray actor before any model loads; the loaded LLMs and the
        # lock stay behind (the actor loads its own members, once, in its own process).
        return {"workflow": self.workflow, "identity": self.identity, "llm_factory": self.llm_factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["workflow"], state["identity"], state["llm_factory"])

    def llm(self, variant: VariantSpec) -> Any:
        """The variant's LLM (`complete(prompt) -> (text, info)`), built once (one thread builds, others wait)."""
        with self._lock:
            if variant.name not in self._llms:
                self._llms[variant.name] = self.llm_factory(variant)
            return self._llms[variant.name]

    def families(self, variant: VariantSpec) -> list[str] | None:
        """Each member's tokenizer family (loads the members), or None for a non-CharED LLM."""
        families = getattr(self.llm(variant), "tokenizer_families", None)
        return None if families is None else list(families())

    def run(self, variant: VariantSpec, sample: Sample) -> SampleRecord:
        """The pair's record: its output and scores, or the CharedError that stopped it (kept, not raised)."""
        llm = self.llm(variant)
        record = self.blank_record(variant, sample)
        started = time.perf_counter()
        try:
            record.prompt = self.workflow.template.render(sample.inputs)
            output, info = llm.complete(record.prompt)
            parsed = self.workflow.parser(output)
        except CharedError as exc:  # a user-visible problem with this sample: keep it, go on
            record.error = f"{type(exc).__name__}: {exc}"
            record.latency_s = time.perf_counter() - started
            record.timestamp = time.time()
            return record
        record.latency_s = time.perf_counter() - started
        record.timestamp = time.time()  # the end of the call: it ran from timestamp - latency_s
        record.output, record.parsed = output, parsed
        if cancel_requested():
            record.error = "cancelled"  # the run is being interrupted: never written, not scored
            return record
        record.finish_reason = str(info.get("finish_reason", ""))
        record.forward_passes = int(info.get("total_forward_passes", 0))
        record.generation = generation_summary(info)
        decode_s = float(info.get("wall_time_s") or record.latency_s)
        record.chars_per_s = len(record.output) / decode_s if decode_s > 0 else 0.0
        for scorer in self.workflow.scorers:
            scoring_started = time.perf_counter()
            try:
                record.scores.update(self._score(scorer, llm, variant, sample, record))
            except Exception as exc:  # noqa: BLE001 - a text too long to score, a scorer's bug on one output
                # subtle: any exception, not only ours: one pair's scorer failure must not end the
                # run and lose the pairs still in flight; the error row is retried on resume.
                record.error = f"scorer {getattr(scorer, 'name', type(scorer).__name__)}: {type(exc).__name__}: {exc}"
                break
            if getattr(scorer, "needs_model", False):
                _time_scoring(record, len(scorer.text_of(sample)), time.perf_counter() - scoring_started)
        return record

    def failed(self, variant: VariantSpec, sample: Sample, error: str) -> SampleRecord:
        """An error row for a pair that could not run (a rerun retries it and replaces the row)."""
        record = self.blank_record(variant, sample)
        record.error = error
        record.timestamp = time.time()
        return record

    @staticmethod
    def _score(scorer: Any, llm: Any, variant: VariantSpec, sample: Sample, record: SampleRecord) -> dict[str, float]:
        """A scorer's numbers; one that reads the model (bits per character) gets the variant's members."""
        if not getattr(scorer, "needs_model", False):
            return scorer.score(sample, record.output, record.parsed)
        members = getattr(llm, "loaded_members", None)
        if members is None:
            raise WorkflowError(f"scorer {scorer.name!r} needs a CharED model; variant {variant.name!r} has none")
        return scorer.score_model(sample, lambda mode: scoring_ensemble(members(), variant, mode))

    def blank_record(self, variant: VariantSpec, sample: Sample) -> SampleRecord:
        return SampleRecord(
            **self.identity,
            variant=variant.name,
            sample_id=sample.id,
            inputs=dict(sample.inputs),
            output="",
            reference=sample.reference,
            domain=sample.domain,
            timed=(variant.name, sample.id) in self.alone,
        )


def variant_batches(todo: list[Pair], batch_size: int, alone: frozenset[tuple[str, str]] = frozenset()) -> list[list[Pair]]:
    """`todo` cut into batches of at most `batch_size` consecutive pairs of one variant;
    a pair named in `alone` (variant, sample id) is a batch of its own (a timed pair).

    subtle: pairs of different variants must never decode side by side when their timings
    are reported: a SmolLM2 pair batched with ensemble pairs waits on the ensemble's
    forward passes (23-30 s per sample instead of 2-3 s at batch 1), and the comparison's
    latency ratio then says more about the batch than about the variants.
    """
    batches: list[list[Pair]] = []
    for pair in todo:
        last = batches[-1] if batches else None
        timed = (pair[0].name, pair[1].id) in alone or (last and (last[0][0].name, last[0][1].id) in alone)
        if last and not timed and last[0][0].name == pair[0].name and len(last) < batch_size:
            last.append(pair)
        else:
            batches.append([pair])
    return batches


class LocalPairs:
    """Pairs in this process: one variant's batch at a time, in worker threads, records in `todo` order.

    A batch's pairs run in threads; their forward passes meet in the members' schedulers
    and run as batched forwards (decoding/backends/scheduler.py). A batch holds one variant's pairs
    only (`variant_batches`), and each record says how many pairs shared it (`batch_size`).
    Subtle: if the caller stops (Ctrl-C, an error, a closed generator) the generations in
    flight are cancelled, not waited for, and pairs not started are never started.
    """

    def __init__(self, runner: PairRunner, batch_size: int):
        self.runner = runner
        self.batch_size = batch_size

    def prepare(self, variants: list[VariantSpec], todo: list[Pair] = ()) -> dict[str, list[str] | None]:
        return {v.name: self.runner.families(v) for v in variants}

    def results(self, todo: list[Pair]) -> Generator[tuple[Pair, SampleRecord], None, None]:
        batches = variant_batches(todo, self.batch_size, self.runner.alone)
        if self.batch_size == 1:
            for (pair,) in batches:
                yield pair, _in_batch(self.runner.run(*pair), 1)
            return
        from concurrent.futures import ThreadPoolExecutor

        token = CancelToken()

        def work(pair: Pair) -> SampleRecord:
            with cancellable(token):
                return self.runner.run(*pair)

        pool = ThreadPoolExecutor(max_workers=self.batch_size, thread_name_prefix="chared-pair")
        finished = False
        try:
            for batch in batches:
                futures = [(pair, pool.submit(work, pair)) for pair in batch]
                for pair, future in futures:
                    yield pair, _in_batch(future.result(), len(batch))
            finished = True
        finally:
            if not finished:
                token.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


def _in_batch(record: SampleRecord, size: int) -> SampleRecord:
    record.batch_size = size
    return record


def _time_scoring(record: SampleRecord, chars: int, seconds: float) -> None:
    """A scorer that reads the model (bits per character) is the pair's real work: its timings are the record's.

    subtle: a scoring workflow generates one character, so output characters per second
    of the generation (0.19 chars/s in char_compare) says nothing; the scored text's
    characters per second does. The latency then covers generation and scoring.
    """
    record.latency_s += seconds
    record.chars_per_s = chars / seconds if seconds > 0 else 0.0
    record.generation["timing"] = "scoring"
    record.generation["scored_chars"] = chars


def plan_actors(variants: list[VariantSpec], pairs: dict[str, int], actors: int) -> list[list[str]]:
    """Which variants each of `actors` workers serves: a list of variant names per worker.

    Variants that share a member form one group and stay together (each worker loads a
    member once and serves every variant that uses it). With at least as many workers as
    groups, each worker serves one group, and the spare workers go, one at a time, to the
    group with the most pairs per worker (replicas share the group's pairs); with fewer,
    groups are dealt out largest first to the worker with the fewest pairs.
    """
    groups: list[tuple[list[str], set[str]]] = []  # (variant names, their member specs)
    for variant in variants:
        members = set(variant.members)
        touching = [g for g in groups if g[1] & members]
        merged = ([variant.name], members)
        for g in touching:
            merged = (g[0] + merged[0], g[1] | merged[1])
            groups.remove(g)
        groups.append(merged)
    order = {v.name: i for i, v in enumerate(variants)}
    names = [sorted(g[0], key=order.__getitem__) for g in groups]
    load = [sum(pairs.get(n, 0) for n in g) for g in names]
    if actors >= len(names):
        replicas = [1] * len(names)
        for _ in range(actors - len(names)):
            busiest = max(range(len(names)), key=lambda i: (load[i] / replicas[i], -i))
            replicas[busiest] += 1
        return [list(g) for g, n in zip(names, replicas) for _ in range(n)]
    workers: list[list[str]] = [[] for _ in range(actors)]
    assigned = [0] * actors
    for i in sorted(range(len(names)), key=lambda i: -load[i]):
        target = min(range(actors), key=lambda w: (assigned[w], w))
        workers[target] += names[i]
        assigned[target] += load[i]
    return [sorted(w, key=order.__getitem__) for w in workers]


def scoring_ensemble(members: list[Any], variant: VariantSpec, mode: str) -> Any:
    """The variant's members, weights and rule as an Ensemble in `mode` (scoring: "exact" by default).

    `mode="variant"` keeps the variant's own mode. Beam settings come from the variant's
    decoding parameters when it sets them.
    """
    options = {k: variant.decoding[k] for k in ("beam_width", "prune_threshold") if k in variant.decoding}
    raw = [m.with_chat(False) for m in members]  # the text is scored as it is, not as a chat turn
    return Ensemble(raw, weights=variant.weights, mode=variant.mode if mode == "variant" else mode,
                    rule=variant.rule, **options)


def generation_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a tracker needs about one generation: rounds and per-member token counts."""
    keys = ("rounds", "chars", "wall_time_s", "forward_passes", "prompt_tokens", "output_tokens", "tokens_fed")
    return {k: info[k] for k in keys if k in info}
