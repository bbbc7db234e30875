"""PromptLayer tracking with the official SDK, through a durable outbox.

Traps this module exists to avoid:
- The SDK's HTTP calls have no timeout (a hung server blocks the caller
  forever), so they never run on the decoding thread. `on_record` only writes
  the item to the outbox (one fsynced SQLite commit) and queues its key; a
  background sender makes the SDK call in a throw-away thread and waits for it
  at most `call_timeout_s`.
- An item is marked done only after a 2xx. If a timed-out call finishes later,
  its thread still marks the item done (or failed); until then the item's lease
  keeps `sync` from sending it a second time.
- The API key lives only in the SDK client object. It is not put into outbox
  items, log lines or error texts (`_redact`).

Flow per generation: a `log` item (`POST /log-request`, metadata carries the
model set, weights and the idempotency key); its answer's id makes one `score`
item per score in [0, 1] (`POST /library-track-score`, as an int 0..100).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chared_flows.errors import ConfigError, MissingExtraError
from chared_flows.records import RunRecord, SampleRecord, VariantSpec
from chared_flows.tracking.outbox import Item, Outbox, default_outbox_path

log = logging.getLogger(__name__)

API_KEY_ENV = "PROMPTLAYER_API_KEY"
BASE_URL_ENV = "PROMPTLAYER_BASE_URL"


class _Permanent(Exception):
    """The server refused the item for good (4xx other than 408/429): do not retry."""


class _TimedOut(Exception):
    pass


def _api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise ConfigError(
            f"{API_KEY_ENV} is not set; export it (any non-empty value works for a local endpoint) "
            "or remove 'promptlayer' from the workflow's trackers"
        )
    return key


def _sdk(api_key: str, base_url: str | None):
    try:
        from promptlayer import PromptLayer
    except ImportError as exc:
        raise MissingExtraError("promptlayer", "tracking") from exc
    # throw_on_error=True: failures come back as exceptions we can classify and
    # record, instead of the SDK logging a warning and returning None.
    return PromptLayer(api_key=api_key, base_url=base_url or os.environ.get(BASE_URL_ENV), throw_on_error=True)


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    if code is None and exc.__cause__ is not None:
        return _status_of(exc.__cause__)
    return code


# -- building items (plain dicts, JSON-safe, no secrets) ---------------------

def log_item(record: SampleRecord, spec: VariantSpec | None, key: str) -> dict[str, Any]:
    members = ",".join(spec.members) if spec else ""
    weights = ",".join(f"{w:g}" for w in spec.weights) if spec and spec.weights else ""
    metadata = {
        "chared_idempotency_key": key,
        "run_id": record.run_id,
        "workflow": f"{record.workflow}@{record.workflow_version}",
        "template": f"{record.template}@{record.template_version}",
        "template_hash": record.template_hash,
        "variant": record.variant,
        "sample_id": record.sample_id,
        "members": members,
        "weights": weights,
        "mode": spec.mode if spec else "",
        "rule": spec.rule if spec else "",
        "finish_reason": record.finish_reason,
        "latency_s": f"{record.latency_s:.4f}",
        "chars_per_s": f"{record.chars_per_s:.2f}",
        "forward_passes": str(record.forward_passes),
        "error": record.error or "",
    }
    metadata.update({f"score.{k}": f"{v:g}" for k, v in record.scores.items()})
    prompt_text = "\n".join(f"{k}: {v}" for k, v in record.inputs.items())
    return {
        "provider": "chared",
        "model": record.variant,
        "input": {"type": "completion", "content": [{"type": "text", "text": prompt_text}]},
        "output": {"type": "completion", "content": [{"type": "text", "text": record.output}]},
        "request_start_time": record.timestamp - record.latency_s,
        "request_end_time": record.timestamp,
        "parameters": dict(spec.decoding) if spec else {},
        "tags": ["chared", record.workflow, record.variant],
        "metadata": metadata,
        "prompt_name": record.template,
        "prompt_version_number": record.template_version,
        "prompt_input_variables": {k: str(v) for k, v in record.inputs.items()},
        "function_name": "chared_flows",
        "status": "ERROR" if record.error else "SUCCESS",
        "scores": {k: v for k, v in record.scores.items() if 0.0 <= v <= 1.0},
    }


def _score_followups(key: str, item: dict[str, Any], request_id: Any) -> list[tuple[str, str, dict]]:
    return [
        (f"{key}:score:{name}", "score", {"request_id": request_id, "name": name, "score": round(100 * v)})
        for name, v in sorted(item.get("scores", {}).items())
    ]


# -- sending ------------------------------------------------------------------

@dataclass
class Sender:
    """Sends outbox items with the SDK, each call bounded by `call_timeout_s`."""

    outbox: Outbox
    api_key: str
    base_url: str | None = None
    call_timeout_s: float = 5.0
    _client: Any = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            self._client = _sdk(self.api_key, self.base_url)
        return self._client

    def send(self, key: str) -> str:
        """One attempt. Returns 'sent', 'skipped' (not claimable), 'failed' or 'timeout'."""
        # The lease outlives the wait, so a call still in flight is not re-sent.
        item = self.outbox.claim(key, lease_s=self.call_timeout_s * 4 + 30)
        if item is None:
            return "skipped"
        done = threading.Event()
        outcome: list[str] = []

        def attempt() -> None:
            try:
                followups = self._deliver(item)
            except Exception as exc:  # noqa: BLE001 - classified and recorded below
                status = _status_of(exc)
                permanent = status is not None and 400 <= status < 500 and status not in (408, 429)
                message = _redact(f"{type(exc).__name__}: {exc}", self.api_key)
                self.outbox.fail(key, message, permanent=permanent)
                log.warning("promptlayer: %s not sent (%s)%s", key, message, " - dropped" if permanent else "")
                outcome.append("failed")
            else:
                self.outbox.complete(key, followups)
                outcome.append("sent")
            finally:
                done.set()

        # Subtle: a daemon thread, because a hung call can only be abandoned,
        # not cancelled; it still records its result if it ever returns.
        threading.Thread(target=attempt, name=f"promptlayer-{key}", daemon=True).start()
        if not done.wait(self.call_timeout_s):
            log.warning("promptlayer: %s got no answer in %.1fs; left in the outbox", key, self.call_timeout_s)
            return "timeout"
        return outcome[0]

    def _deliver(self, item: Item) -> list[tuple[str, str, dict]]:
        client = self.client()
        if item.kind == "log":
            kwargs = {k: v for k, v in item.payload.items() if k != "scores"}
            answer = client.log_request(**kwargs)
            request_id = (answer or {}).get("id") or (answer or {}).get("request_id")
            if request_id is None:
                raise RuntimeError(f"log-request answered without an id: {answer!r}")
            return _score_followups(item.key, item.payload, request_id)
        if item.kind == "score":
            p = item.payload
            client.track.score(p["request_id"], int(p["score"]), p["name"])
            return []
        raise ConfigError(f"unknown outbox item kind {item.kind!r}; expected 'log' or 'score'")


@dataclass
class SyncResult:
    sent: int = 0
    failed: int = 0
    timed_out: int = 0
    pending: int = 0
    dead: int = 0


def sync_outbox(
    root: Path | None = None,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    call_timeout_s: float = 10.0,
    outbox_path: Path | None = None,
) -> SyncResult:
    """Send everything pending in the outbox (`chared sync`). Stops at the first timeout.

    Items made by a sent item (scores after their log) are sent in the same
    call. Safe to run while another process syncs: leases keep items apart.
    """
    outbox = Outbox(outbox_path or default_outbox_path(root))
    sender = Sender(outbox, _api_key(api_key), base_url, call_timeout_s)
    result = SyncResult()
    seen: set[str] = set()
    while True:
        batch = [k for k in outbox.keys("pending") if k not in seen]
        if not batch:
            break
        for key in batch:
            seen.add(key)
            outcome = sender.send(key)
            if outcome == "sent":
                result.sent += 1
            elif outcome == "failed":
                result.failed += 1
            elif outcome == "timeout":
                result.timed_out += 1
                break  # a hung server: do not pile up stuck threads
        if result.timed_out:
            break
    counts = outbox.counts()
    result.pending, result.dead = counts["pending"], counts["dead"]
    return result


class PromptLayerTracker:
    """Logs every generation to PromptLayer without ever blocking the caller on the network."""

    name = "promptlayer"

    def __init__(
        self,
        root: Path | None = None,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        call_timeout_s: float = 5.0,
        flush_timeout_s: float = 15.0,
        max_consecutive_failures: int = 3,
        sync_on_start: bool = True,
        outbox_path: Path | None = None,
    ):
        self.outbox = Outbox(outbox_path or default_outbox_path(root))
        self.sender = Sender(self.outbox, _api_key(api_key), base_url, call_timeout_s)
        self.flush_timeout_s = flush_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.sync_on_start = sync_on_start
        self._specs: dict[str, VariantSpec] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._gave_up = threading.Event()

    def on_run_start(self, run: RunRecord) -> None:
        self._specs = {spec.name: spec for spec in run.variants}
        self._gave_up.clear()
        self._start_worker()
        if self.sync_on_start:
            for key in self.outbox.keys("pending"):  # left over from earlier runs
                self._queue.put(key)

    def on_record(self, record: SampleRecord) -> None:
        key = f"{record.run_id}:{record.variant}:{record.sample_id}"
        self.outbox.put(key, "log", log_item(record, self._specs.get(record.variant), key))
        self._start_worker()
        self._queue.put(key)

    def on_run_end(self, run: RunRecord, summary: dict | None = None, artifacts: list | None = None) -> None:
        self.flush(self.flush_timeout_s)

    def flush(self, timeout_s: float) -> dict[str, int]:
        """Wait up to `timeout_s` for queued items; whatever is left stays in the outbox."""
        worker = self._worker
        if worker is not None:
            self._queue.put(None)
            worker.join(timeout_s)
            if worker.is_alive():
                log.warning("promptlayer: flush gave up after %.1fs; unsent items stay in the outbox", timeout_s)
            self._worker = None
        counts = self.outbox.counts()
        if counts["pending"]:
            log.warning(
                "promptlayer: %d item(s) wait in %s; send them with `chared sync`",
                counts["pending"], self.outbox.path,
            )
        return counts

    # -- worker ---------------------------------------------------------------
    def _start_worker(self) -> None:
        if self._worker is None:
            self._queue = queue.Queue()  # a fresh queue: an old worker may still drain its own
            self._worker = threading.Thread(
                target=self._work, args=(self._queue,), name="promptlayer-sender", daemon=True
            )
            self._worker.start()

    def _work(self, jobs: "queue.Queue[str | None]") -> None:
        failures = 0
        while True:
            key = jobs.get()
            if key is None:
                return
            if self._gave_up.is_set():
                continue  # stays pending in the outbox for `chared sync`
            outcomes = [self.sender.send(key)]
            if outcomes[0] == "sent":
                outcomes += [self.sender.send(k) for k in self._followups(key)]
            failures = 0 if "sent" in outcomes else failures + ("failed" in outcomes)
            if "timeout" in outcomes or failures >= self.max_consecutive_failures:
                log.warning("promptlayer: server unreachable or slow; keeping the rest in the outbox")
                self._gave_up.set()

    def _followups(self, key: str) -> list[str]:
        return [k for k in self.outbox.keys("pending") if k.startswith(f"{key}:score:")]
