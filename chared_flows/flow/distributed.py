"""Pairs on a Ray cluster (`chared run|ab NAME --ray ADDRESS`): the driver keeps the run, actors decode.

The driver (the `chared` process) keeps everything a local run has: the run directory's
lock, the records file, the sinks (MLflow, PromptLayer), the summary and the report. Only
the pairs move. `RayPairs` starts `actors` Ray actors, each for a group of variants
(`pairs.plan_actors`: variants sharing a member stay together, so each member loads once per
actor, in the actor's process); each actor runs the same `PairRunner` as a local run, up to
`batch_size` pairs at once in its own threads (a threaded actor), so their forward passes
batch in the actor's schedulers exactly as in one process.

Nothing is lost when a worker dies:
- the driver writes each record as soon as its pair returns (records come in the order
  they finish; `sample_index` keeps each one's place in the dataset);
- an actor killed mid-run is restarted by Ray (`max_restarts`) and its pairs in flight are
  resubmitted to it (`max_task_retries`); when Ray gives up on an actor (restarts used up,
  its node gone) the driver starts a new one for the same variants and resubmits its pairs;
  a pair that keeps killing its worker becomes an error row, which a rerun retries;
- the driver interrupted: what was written stays, the actors are killed (and would die with
  the driver's connection anyway: Ray ties an actor to the process that created it), and a
  rerun resumes.

`ray` is imported only here (the `ray` extra), and only when a run asks for it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

import chared_flows
from chared_flows.errors import CharedError, ConfigError, MissingExtraError, WorkflowError
from chared_flows.evaluation.base import Sample
from chared_flows.flow.pairs import Pair, PairRunner, plan_actors
from chared_flows.records import SampleRecord, VariantSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_RESTARTS = 3
PROBE_TIMEOUT_S = 3.0
WAIT_SLICE_S = 0.5
# A pair whose worker died this many times (each time after Ray's own retries) becomes an
# error row: a pair that kills every worker it runs on (one that runs out of memory) must
# not take the whole run with it; a rerun retries it.
PAIR_LOSSES = 3
START_HINT = "ray start --head --node-ip-address 127.0.0.1"


def require_ray() -> None:
    """A one-line MissingExtraError now, before anything runs, if the `ray` extra is missing."""
    _ray()


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError("ray", "ray") from exc
    return ray


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    """PairActor as a Ray actor class (made once: each ray.remote() would export the class again)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = _ray().remote(PairActor)
    return _ACTOR_CLASS


def _worker_lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for "the process running this pair is gone" (as opposed to an error in the pair)."""
    errors = _ray().exceptions
    return (errors.RayActorError, errors.WorkerCrashedError, errors.NodeDiedError, errors.ObjectLostError)


# --- the cluster ------------------------------------------------------------------


def parse_runtime_env(text: str | None) -> dict[str, Any] | None:
    """`--ray-runtime-env`: JSON text, or the path of a JSON file, holding one object."""
    if not text:
        return None
    source = text if text.lstrip().startswith("{") else None
    if source is None:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"--ray-runtime-env {text!r} is neither a JSON object nor a file; "
                              "write e.g. '{\"env_vars\": {\"HF_HUB_OFFLINE\": \"1\"}}'")
        source = path.read_text(encoding="utf-8")
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--ray-runtime-env {text!r} is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--ray-runtime-env must be a JSON object (a Ray runtime_env), got {type(value).__name__}")
    return value


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of `host:port` or `ray://host:port`; None for 'auto', 'local' and the like."""
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _answers(host: str, port: int) -> str | None:
    """None if something accepts a TCP connection at host:port, else why not."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _dialled_host(host: str) -> str:
    """The host Ray will really dial for `host`.

    subtle: Ray rewrites a loopback address (127.0.0.1, localhost) to this machine's
    routable IP, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set; a cluster started
    with that setting listens on loopback only, so the rewritten address finds nothing.
    """
    try:
        from ray._private.services import resolve_ip_for_localhost  # not public: guarded

        return resolve_ip_for_localhost(host)
    except Exception:  # noqa: BLE001 - a newer Ray without it: dial what the user gave
        return host


def check_reachable(address: str) -> None:
    """A one-line ConfigError unless a Ray cluster can be reached at `address` (a TCP probe, seconds).

    Without it, `ray.init` on a dead address retries for minutes, printing warnings.
    """
    parsed = _host_port(address)
    if parsed is None:
        return  # 'auto': Ray finds the cluster itself (and says so if there is none)
    host, port = parsed
    why = _answers(host, port)
    if why is not None:
        raise ConfigError(
            f"no Ray cluster answers at {address} ({why}); start one with `{START_HINT} --port {port}` "
            "or pass the address that `ray start` printed"
        )
    dialled = _dialled_host(host)
    if dialled != host and _answers(dialled, port) is not None:
        raise ConfigError(
            f"the Ray cluster at {address} listens on loopback only, but Ray dials {dialled}:{port} for it; "
            "set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for chared as for `ray start`, or start the cluster "
            "on a routable address"
        )


def connect(address: str, runtime_env: dict[str, Any] | None) -> bool:
    """Connect this process to the cluster; True if this call connected (and so must disconnect)."""
    ray = _ray()
    if ray.is_initialized():  # e.g. a notebook already connected: use that connection, leave it open
        return False
    check_reachable(address)
    # subtle: ray.init replaces this process's SIGTERM handler with one that exits at once
    # (and its core installs a C-level one that prints a stack dump); the caller's handler
    # (the CLI's: unwind like Ctrl-C, so the trackers hear of it and the actors are killed)
    # is put back.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"could not join the Ray cluster at {address}: {_one_line(exc)}; "
                          f"start one with `{START_HINT}`") from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return True


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]


# --- the actor --------------------------------------------------------------------


class PairActor:
    """One Ray actor: a PairRunner in its own process, with its own torch threads."""

    def __init__(self, runner: PairRunner, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.runner = runner

    def prepare(self, variants: list[VariantSpec]) -> dict[str, Any]:
        """Load the members of `variants` (once per process); their families and where this actor runs."""
        families = {v.name: self.runner.families(v) for v in variants}
        return {"families": families, **self.where()}

    def run(self, variant: VariantSpec, sample: Sample) -> tuple[SampleRecord, int]:
        return self.runner.run(variant, sample), os.getpid()

    @staticmethod
    def where() -> dict[str, Any]:
        import torch

        ray = _ray()
        return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(), "threads": torch.get_num_threads(),
                "version": chared_flows.__version__}


# --- the executor -----------------------------------------------------------------


@dataclass
class _Slot:
    """One actor place: the variants it serves, its current actor and that actor's pairs in flight."""

    index: int
    variants: list[str]
    handle: Any = None
    generation: int = 0  # bumped when the driver replaces the actor
    busy: int = 0
    pid: int | None = None
    turn: int = 0  # round-robin over the slot's variants
    current: str | None = None  # the variant of the pairs in flight (a batch holds one variant)


class RayPairs:
    """Pairs on `actors` Ray actors at `address`, `batch_size` in flight per actor, records as they come."""

    def __init__(
        self, runner: PairRunner, batch_size: int, *, address: str, actors: int = 1, threads: int | None = None,
        runtime_env: dict[str, Any] | None = None, max_restarts: int = DEFAULT_MAX_RESTARTS,
    ):
        if actors < 1:
            raise ConfigError(f"--ray-actors {actors} must be at least 1")
        if max_restarts < 0:
            raise ConfigError(f"--ray-max-restarts {max_restarts} must be 0 or more")
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads {threads} must be at least 1")
        self.runner = runner
        self.batch_size = batch_size
        self.address = address
        self.actors = actors
        self.threads = threads or 1  # torch threads per actor = the CPUs it reserves
        self.runtime_env = runtime_env
        self.max_restarts = max_restarts
        self._slots: list[_Slot] = []
        self._connected = False
        self._replaced = 0

    # -- setup --

    def prepare(self, variants: list[VariantSpec], todo: list[Pair] = ()) -> dict[str, list[str] | None]:
        ray = _ray()
        self._connected = connect(self.address, self.runtime_env)
        self._check_cpus(ray)
        counts = {v.name: 0 for v in variants}
        for variant, _ in todo:
            counts[variant.name] += 1
        self._slots = [_Slot(i, names) for i, names in enumerate(plan_actors(variants, counts, self.actors))]
        by_name = {v.name: v for v in variants}
        for slot in self._slots:
            slot.handle = self._start_actor()
        infos = self._get([s.handle.prepare.remote([by_name[n] for n in s.variants]) for s in self._slots],
                          starting=True)
        families: dict[str, list[str] | None] = {}
        for slot, info in zip(self._slots, infos):
            if info["version"] != chared_flows.__version__:
                raise WorkflowError(
                    f"the Ray actor on {info['node']} runs chared-flows {info['version']}, this driver "
                    f"{chared_flows.__version__}; install the same version on every node"
                )
            slot.pid = info["pid"]
            families.update(info["families"])
            log.info("ray: actor %d/%d (%s) pid %d on %s, %d torch threads, %d pairs at once",
                     slot.index + 1, len(self._slots), ", ".join(slot.variants), info["pid"], info["node"],
                     info["threads"], self.batch_size)
        return families

    def _check_cpus(self, ray: Any) -> None:
        # subtle: an actor asking for more CPUs than the cluster has is never scheduled and the
        # run would wait forever; say so now.
        have = ray.cluster_resources().get("CPU", 0.0)
        need = self.actors * self.threads
        if need > have:
            raise ConfigError(
                f"--ray-actors {self.actors} x {self.threads} torch thread(s) each need {need} CPUs; the cluster "
                f"at {self.address} has {have:g}; use fewer actors or threads, or add nodes"
            )

    def _start_actor(self) -> Any:
        # SPREAD: actors go to different nodes where they can (one node's loss costs one actor)
        actor = _actor_class().options(
            num_cpus=self.threads, max_concurrency=self.batch_size, scheduling_strategy="SPREAD",
            max_restarts=self.max_restarts, max_task_retries=self.max_restarts,
        )
        return actor.remote(self.runner, self.threads)

    def _get(self, refs: Any, starting: bool = False) -> Any:
        """ray.get, with a CharedError raised in an actor re-raised as itself (the CLI prints one line)."""
        ray = _ray()
        pending = list(refs) if isinstance(refs, list) else [refs]
        while pending:  # in slices, so Ctrl-C and SIGTERM get through while members load (see results)
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_SLICE_S)
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, CharedError):
                raise exc.cause from None
            raise
        except ray.exceptions.RayActorError as exc:
            if not starting:
                raise
            raise WorkflowError(
                f"a Ray actor could not start on the cluster at {self.address}: {_one_line(exc)}; every node "
                f"needs chared-flows {chared_flows.__version__} with the extras the workflow uses "
                "(or ship them with --ray-runtime-env)"
            ) from None

    # -- the pairs --

    def results(self, todo: list[Pair]) -> Generator[tuple[Pair, SampleRecord], None, None]:
        ray = _ray()
        lost_errors = _worker_lost_errors()
        queues: dict[str, deque[Pair]] = {name: deque() for slot in self._slots for name in slot.variants}
        for pair in todo:
            queues[pair[0].name].append(pair)
        in_flight: dict[Any, tuple[_Slot, int, Pair]] = {}
        attempts: dict[tuple[str, str], int] = {}

        def fill() -> None:
            for slot in self._slots:
                while slot.busy < self.batch_size:
                    pair = self._next_pair(slot, queues)
                    if pair is None:
                        break
                    in_flight[slot.handle.run.remote(*pair)] = (slot, slot.generation, pair)
                    slot.busy += 1

        fill()
        while in_flight:
            # subtle: a wait without a timeout blocks inside Ray's C++ core, where Python does
            # not run its signal handlers: Ctrl-C or SIGTERM would wait for the next record
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_SLICE_S)
            if not ready:
                continue
            ref = ready[0]
            slot, generation, pair = in_flight.pop(ref)
            if generation == slot.generation:
                slot.busy -= 1
            try:
                record, pid = self._get(ref)
            except lost_errors as exc:
                failed = self._lost(slot, generation, pair, exc, attempts, queues)
                fill()
                if failed is not None:
                    yield pair, failed
                continue
            self._note_pid(slot, pid)
            record.batch_size = self.batch_size  # at most this many of the variant's pairs shared the actor
            fill()  # keep the actors busy while the driver writes and logs this record
            yield pair, record

    @staticmethod
    def _next_pair(slot: _Slot, queues: dict[str, deque[Pair]]) -> Pair | None:
        """The slot's next pair: of the variant in flight while any is (flow/pairs.py: variant_batches)."""
        if slot.busy > 0 and slot.current is not None:
            return queues[slot.current].popleft() if queues[slot.current] else None
        for _ in range(len(slot.variants)):
            name = slot.variants[slot.turn % len(slot.variants)]
            slot.turn += 1
            if queues[name]:
                slot.current = name
                return queues[name].popleft()
        return None

    def _note_pid(self, slot: _Slot, pid: int) -> None:
        if slot.pid is not None and pid != slot.pid:
            log.info("ray: actor %d came back as pid %d (was %d); Ray restarted it and retried its pairs in flight",
                     slot.index + 1, pid, slot.pid)
        slot.pid = pid

    def _lost(self, slot: _Slot, generation: int, pair: Pair, exc: BaseException,
              attempts: dict[tuple[str, str], int], queues: dict[str, deque[Pair]]) -> SampleRecord | None:
        """A pair whose worker died for good: resubmit it (to a new actor), or after too many tries, an error row."""
        variant, sample = pair
        if generation == slot.generation:  # the first news of this actor's death: replace it
            self._replace(slot, exc)
        key = (sample.id, variant.name)
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] >= PAIR_LOSSES:
            return self.runner.failed(variant, sample, f"WorkerLost: the Ray worker running this pair died "
                                                       f"{attempts[key]} times ({_one_line(exc)}); a rerun retries it")
        queues[variant.name].appendleft(pair)
        return None

    def _replace(self, slot: _Slot, exc: BaseException) -> None:
        ray = _ray()
        self._replaced += 1
        if self._replaced > 2 * len(self._slots) + self.max_restarts:
            raise WorkflowError(
                f"Ray actors keep dying on the cluster at {self.address} (last: {_one_line(exc)}); the records "
                "written so far are kept; rerun the same command to resume"
            )
        log.warning("ray: actor %d (pid %s) is gone for good (%s); starting a new one for %s",
                    slot.index + 1, slot.pid, _one_line(exc), ", ".join(slot.variants))
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - it is already dead; the point is that it stays so
            pass
        slot.handle = self._start_actor()
        slot.generation += 1
        slot.busy = 0
        slot.pid = None

    def close(self) -> None:
        """Kill the actors (pairs in flight stop with them) and leave the cluster."""
        if not self._slots and not self._connected:
            return
        ray = _ray()
        for slot in self._slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - closing: an actor already gone is fine
                pass
        self._slots = []
        if self._connected:
            ray.shutdown()
            self._connected = False
