"""How a (variant, sample) pair becomes a SampleRecord, and where pairs run.

`PairRunner` is the one code path from a pair to its record (render, generate through
`template | CharEDLLM | parser`, parse, score). It is built from picklable parts (the
resolved workflow, the run's identity fields, the LLM factory) and builds each variant's
chain once per process, so the driver's threads and a Ray actor in another process run
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
    """Runs one pair to its record; builds (and keeps) each variant's chain on first use."""

    def __init__(self, workflow: Any, identity: dict[str, Any], llm_factory: LLMFactory):
        self.workflow = workflow
        self.identity = dict(identity)
        self.llm_factory = llm_factory
        self._chains: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # subtle: shipped to a Ray actor before any model loads; the loaded chains and the
        # lock stay behind (the actor loads its own members, once, in its own process).
        return {"workflow": self.workflow, "identity": self.identity, "llm_factory": self.llm_factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["workflow"], state["identity"], state["llm_factory"])

    def chain(self, variant: VariantSpec) -> tuple[Any, Any]:
        """(chain, llm) of the variant; the first call loads its members (one thread loads, others wait)."""
        with self._lock:
            if variant.name not in self._chains:
                from chared_flows.integrations.langchain import build_chain

                llm = self.llm_factory(variant)
                self._chains[variant.name] = (build_chain(self.workflow.template.render, llm, self.workflow.parser), llm)
            return self._chains[variant.name]

    def families(self, variant: VariantSpec) -> list[str] | None:
        """Each member's tokenizer family (loads the members), or None for a non-CharED LLM."""
        families = getattr(self.chain(variant)[1], "tokenizer_families", None)
        return None if families is None else list(families())

    def run(self, variant: VariantSpec, sample: Sample) -> SampleRecord:
        """The pair's record: its output and scores, or the CharedError that stopped it (kept, not raised)."""
        from chared_flows.integrations.langchain import GenerationInfoCollector

        chain, llm = self.chain(variant)
        record = self.blank_record(variant, sample)
        collector = GenerationInfoCollector()
        started = time.perf_counter()
        try:
            record.prompt = self.workflow.template.render(sample.inputs)
            result = chain.invoke(sample.inputs, config={"callbacks": [collector], "run_name": variant.name})
        except CharedError as exc:  # a user-visible problem with this sample: keep it, go on
            record.error = f"{type(exc).__name__}: {exc}"
            record.latency_s = time.perf_counter() - started
            record.timestamp = time.time()
            return record
        record.latency_s = time.perf_counter() - started
        record.timestamp = time.time()  # the end of the call: it ran from timestamp - latency_s
        record.output, record.parsed = result["output"], result["parsed"]
        if _cancelled():
            record.error = "cancelled"  # the run is being interrupted: never written, not scored
            return record
        info = collector.info
        record.finish_reason = str(info.get("finish_reason", ""))
        record.forward_passes = int(info.get("total_forward_passes", 0))
        record.generation = generation_summary(info)
        decode_s = float(info.get("wall_time_s") or record.latency_s)
        record.chars_per_s = len(record.output) / decode_s if decode_s > 0 else 0.0
        for scorer in self.workflow.scorers:
            try:
                record.scores.update(self._score(scorer, llm, variant, sample, record))
            except Exception as exc:  # noqa: BLE001 - a text too long to score, a scorer's bug on one output
                # subtle: any exception, not only ours: one pair's scorer failure must not end the
                # run and lose the pairs still in flight; the error row is retried on resume.
                record.error = f"scorer {getattr(scorer, 'name', type(scorer).__name__)}: {type(exc).__name__}: {exc}"
                break
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
        )


class LocalPairs:
    """Pairs in this process: up to `batch_size` at once, in worker threads, records in `todo` order.

    Pairs in flight run in threads; their forward passes meet in the members' schedulers
    and run as batched forwards (decoding/scheduler.py). Subtle: if the caller stops
    (Ctrl-C, an error, a closed generator) the generations in flight are cancelled, not
    waited for, and pairs not started are never started.
    """

    def __init__(self, runner: PairRunner, batch_size: int):
        self.runner = runner
        self.batch_size = batch_size

    def prepare(self, variants: list[VariantSpec], todo: list[Pair] = ()) -> dict[str, list[str] | None]:
        return {v.name: self.runner.families(v) for v in variants}

    def results(self, todo: list[Pair]) -> Generator[tuple[Pair, SampleRecord], None, None]:
        if self.batch_size == 1:
            for pair in todo:
                yield pair, self.runner.run(*pair)
            return
        from concurrent.futures import ThreadPoolExecutor

        from chared_flows.decoding.decoder import CancelToken, cancellable

        token = CancelToken()

        def work(pair: Pair) -> SampleRecord:
            with cancellable(token):
                return self.runner.run(*pair)

        pool = ThreadPoolExecutor(max_workers=self.batch_size, thread_name_prefix="chared-pair")
        pending: list = []
        pairs = iter(todo)
        finished = False
        try:
            for pair in pairs:
                pending.append((pair, pool.submit(work, pair)))
                if len(pending) >= self.batch_size:
                    break
            while pending:
                pair, future = pending.pop(0)
                record = future.result()
                for following in pairs:  # keep the window full
                    pending.append((following, pool.submit(work, following)))
                    break
                yield pair, record
            finished = True
        finally:
            if not finished:
                token.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        pass


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


def _cancelled() -> bool:
    from chared_flows.decoding.decoder import cancel_requested

    return cancel_requested()


def scoring_ensemble(members: list[Any], variant: VariantSpec, mode: str) -> Any:
    """The variant's members, weights and rule as an Ensemble in `mode` (scoring: "exact" by default).

    `mode="variant"` keeps the variant's own mode. Beam settings come from the variant's
    decoding parameters when it sets them.
    """
    from chared_flows.decoding import Ensemble

    options = {k: variant.decoding[k] for k in ("beam_width", "prune_threshold") if k in variant.decoding}
    raw = [m.with_chat(False) for m in members]  # the text is scored as it is, not as a chat turn
    return Ensemble(raw, weights=variant.weights, mode=variant.mode if mode == "variant" else mode,
                    rule=variant.rule, **options)


def generation_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What a tracker needs about one generation: rounds and per-member token counts."""
    keys = ("rounds", "chars", "wall_time_s", "forward_passes", "prompt_tokens", "output_tokens", "tokens_fed")
    return {k: info[k] for k in keys if k in info}
