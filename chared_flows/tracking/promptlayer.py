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

Items, all through the outbox:
- `template` (one per template version the run uses): published to PromptLayer's
  registry (name, text, input variables; our version and hash in its metadata) unless a
  version with that hash is there already; the answer is PromptLayer's version number.
- `group` (one per run and sample): `group.create()`; the answer is the group id, so all
  variants of one sample land in one group.
- `log` (one per generation): `POST /log-request` with the rendered prompt as input, the
  real call window as request times, the template's name and PromptLayer version, token
  counts, and metadata (model set, weights, idempotency key, version). It needs its
  template: a sender publishes that first, in the same attempt. Its answer's id makes
  one `score` item per score in [0, 1] (the SDK's score call, as an int 0..100) and one
  `link` item (`track.group`, after its group exists) putting the request in its
  sample's group.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import string
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chared_flows.errors import ConfigError, MissingExtraError, TrackingError
from chared_flows.records import RunRecord, SampleRecord, VariantSpec
from chared_flows.tracking.outbox import Item, Outbox, default_outbox_path

log = logging.getLogger(__name__)

API_KEY_ENV = "PROMPTLAYER_API_KEY"
BASE_URL_ENV = "PROMPTLAYER_BASE_URL"


def _api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get(API_KEY_ENV)
    if not key:
        raise ConfigError(
            f"{API_KEY_ENV} is not set; export it (any non-empty value works for a local endpoint) "
            "or remove 'promptlayer' from the workflow's trackers"
        )
    return key


def require_api_key() -> None:
    """Raise the missing-key ConfigError now (checked before a run starts)."""
    _api_key(None)


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

def template_key(name: str, version: int, text: str) -> str:
    return f"template:{name}@{version}:{hashlib.sha256(text.encode('utf-8')).hexdigest()[:16]}"


def template_item(name: str, version: int, text: str) -> dict[str, Any]:
    """A template version for PromptLayer's registry (f-string syntax, like ours)."""
    variables = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    return {
        "name": name,
        "version": version,
        "text": text,
        "input_variables": list(dict.fromkeys(variables)),
        "hash": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
    }


def group_key(record: SampleRecord) -> str:
    return f"group:{record.run_id}:{record.sample_id}"


def log_item(
    record: SampleRecord, spec: VariantSpec | None, key: str, template: str | None = None
) -> dict[str, Any]:
    """The log-request body for one generation; `template`: the outbox key of its published template."""
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
    generation = record.generation or {}
    for member, count in (generation.get("output_tokens") or {}).items():
        metadata[f"output_tokens.{member}"] = str(count)
    # The prompt the model saw; records from before `prompt` existed fall back to their inputs.
    prompt_text = record.prompt or "\n".join(f"{k}: {v}" for k, v in record.inputs.items())
    item = {
        "provider": "chared",
        "model": record.variant,
        "input": {"type": "completion", "content": [{"type": "text", "text": prompt_text}]},
        "output": {"type": "completion", "content": [{"type": "text", "text": record.output}]},
        # record.timestamp is when the call ended (the workflow runner sets it then)
        "request_start_time": record.timestamp - record.latency_s,
        "request_end_time": record.timestamp,
        "parameters": dict(spec.decoding) if spec else {},
        "tags": ["chared", record.workflow, record.variant],
        "metadata": metadata,
        "prompt_name": record.template,
        "prompt_version_number": record.template_version,
        "prompt_input_variables": {k: str(v) for k, v in record.inputs.items()},
        "input_tokens": sum(int(v) for v in (generation.get("prompt_tokens") or {}).values()),
        "output_tokens": sum(int(v) for v in (generation.get("output_tokens") or {}).values()),
        "function_name": "chared_flows",
        "status": "ERROR" if record.error else "SUCCESS",
        "scores": {k: v for k, v in record.scores.items() if 0.0 <= v <= 1.0},
        "group_key": group_key(record),
    }
    if record.error:
        item["error_message"] = record.error[:1000]
    if template is not None:
        item["template_key"] = template  # its PromptLayer version number is filled in when sent
    return item


def _followups(key: str, version: int, item: dict[str, Any], request_id: Any):
    """Items that need the request id: one score per score, and the link into the sample's group."""
    prefix = f"{key}#{version}"
    out = [
        (f"{prefix}:score:{name}", "score", {"request_id": request_id, "name": name, "score": round(100 * v)})
        for name, v in sorted(item.get("scores", {}).items())
    ]
    if item.get("group_key"):
        out.append((f"{prefix}:group", "link", {"request_id": request_id, "group_key": item["group_key"]}))
    return out


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
        item = self.outbox.claim(key, lease_s=self._lease_s())
        if item is None:
            return "skipped"
        done = threading.Event()
        outcome: list[str] = []

        def attempt() -> None:
            try:
                followups, answer = self._deliver(item)
            except Exception as exc:  # noqa: BLE001 - classified and recorded below
                self._failed(item.key, exc)
                outcome.append("failed")
            else:
                self.outbox.complete(key, followups, answer=answer, version=item.version)
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

    def _lease_s(self) -> float:
        return self.call_timeout_s * 4 + 30

    def _failed(self, key: str, exc: BaseException) -> None:
        status = _status_of(exc)
        permanent = status is not None and 400 <= status < 500 and status not in (404, 408, 429)
        message = _redact(f"{type(exc).__name__}: {exc}", self.api_key)
        self.outbox.fail(key, message, permanent=permanent)
        log.warning("promptlayer: %s not sent (%s)%s", key, message, " - dropped" if permanent else "")

    def _needed(self, key: str | None) -> str | None:
        """The answer of an item this one depends on (template version, group id), sent now if need be."""
        if key is None:
            return None
        answer = self.outbox.answer(key)
        if answer:
            return answer
        item = self.outbox.claim(key, lease_s=self._lease_s())
        if item is None:
            raise RuntimeError(f"{key} is not sent yet (another sender has it, or it was dropped); retry later")
        try:
            followups, answer = self._deliver(item)
        except Exception as exc:
            self._failed(key, exc)
            raise
        self.outbox.complete(key, followups, answer=answer, version=item.version)
        return answer

    def _deliver(self, item: Item) -> tuple[list[tuple[str, str, dict]], str]:
        """Send one item; returns (followup items, the receiver's answer)."""
        client = self.client()
        p = item.payload
        if item.kind == "log":
            kwargs = {k: v for k, v in p.items() if k not in ("scores", "group_key", "template_key")}
            published = self._needed(p.get("template_key"))
            if published is not None:
                kwargs["prompt_version_number"] = int(published)  # PromptLayer's own version number
            kwargs["metadata"] = {**kwargs.get("metadata", {}), "chared_version": str(item.version)}
            if item.version > 1 and item.answer:
                kwargs["metadata"]["chared_supersedes"] = item.answer  # the earlier version's request
            answer = client.log_request(**kwargs)
            request_id = (answer or {}).get("id") or (answer or {}).get("request_id")
            if request_id is None:
                raise RuntimeError(f"log-request answered without an id: {answer!r}")
            return _followups(item.key, item.version, p, request_id), str(request_id)
        if item.kind == "score":
            client.track.score(p["request_id"], int(p["score"]), p["name"])
            return [], ""
        if item.kind == "link":
            group_id = self._needed(p["group_key"])  # created once per sample, by whichever link comes first
            client.track.group(p["request_id"], int(group_id) if group_id.isdigit() else group_id)
            return [], ""
        if item.kind == "group":
            group_id = client.group.create()
            if not group_id:
                raise RuntimeError(f"create-group answered without an id: {group_id!r}")
            return [], str(group_id)
        if item.kind == "template":
            return [], str(self._publish(client, p))
        raise ConfigError(
            f"unknown outbox item kind {item.kind!r}; expected one of: log, score, link, group, template"
        )

    def _publish(self, client: Any, p: dict[str, Any]) -> int:
        """PromptLayer's version number of this template text, publishing it if it is not there."""
        found = self._find_template(client, p)
        if found is None:
            client.templates.publish({
                "prompt_name": p["name"],
                "prompt_template": {
                    "type": "completion", "template_format": "f-string", "input_variables": p["input_variables"],
                    "content": [{"type": "text", "text": p["text"]}],
                },
                "commit_message": f"{p['name']}@{p['version']} (chared_flows)",
                "metadata": {"chared_version": str(p["version"]), "chared_hash": p["hash"]},
                "tags": ["chared"],
            })
            found = self._find_template(client, p)
        if found is None:
            raise RuntimeError(f"template {p['name']!r} was published but cannot be found by its hash")
        return found

    @staticmethod
    def _find_template(client: Any, p: dict[str, Any]) -> int | None:
        try:
            got = client.templates.get(p["name"], {"metadata_filters": {"chared_hash": p["hash"]}})
        except Exception as exc:  # noqa: BLE001 - 404 means "not published yet"; others propagate
            if _status_of(exc) == 404:
                return None
            raise
        return int(got["version"]) if got and got.get("version") is not None else None


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


def waiting_items(root: Path | None = None, outbox_path: Path | None = None) -> int:
    """Items pending in the outbox, without creating it (0 for a user who never used PromptLayer)."""
    path = outbox_path or default_outbox_path(root)
    return Outbox(path).counts()["pending"] if path.is_file() else 0


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
        prompts: list[tuple[str, int, str]] | None = None,
    ):
        """`prompts`: (name, version, text) of the templates the run uses, published to
        PromptLayer's registry; each request names its template's PromptLayer version."""
        self.prompts = list(prompts or [])
        self.outbox = Outbox(outbox_path or default_outbox_path(root))
        self.sender = Sender(self.outbox, _api_key(api_key), base_url, call_timeout_s)
        self.flush_timeout_s = flush_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self.sync_on_start = sync_on_start
        self._specs: dict[str, VariantSpec] = {}
        self._keys: set[str] = set()  # this run's items; their followups are `<key>#...`
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._gave_up = threading.Event()

    def on_run_start(self, run: RunRecord) -> None:
        self._specs = {spec.name: spec for spec in run.variants}
        self._templates = {}
        for name, version, text in self.prompts:
            key = template_key(name, version, text)
            self.outbox.put(key, "template", template_item(name, version, text))
            self._templates[(name, version)] = key
            self._keys.add(key)
        self._gave_up.clear()
        self._start_worker()
        for key in self._templates.values():
            self._queue.put(key)
        if self.sync_on_start:
            for key in self.outbox.keys("pending"):  # left over from earlier runs
                self._queue.put(key)

    def on_record(self, record: SampleRecord) -> None:
        key = f"{record.run_id}:{record.variant}:{record.sample_id}"
        self.outbox.put(group_key(record), "group", {"run_id": record.run_id, "sample_id": record.sample_id})
        template = getattr(self, "_templates", {}).get((record.template, record.template_version))
        # put() replaces an earlier version of this pair (an error row, now retried)
        self.outbox.put(key, "log", log_item(record, self._specs.get(record.variant), key, template))
        self._keys.update((key, group_key(record)))
        self._start_worker()
        self._queue.put(key)

    def on_run_end(self, run: RunRecord, summary: dict | None = None, artifacts: list | None = None) -> None:
        """Flush; if items of this run were not delivered, raise (the CLI exits 3, as for MLflow).

        subtle: nothing is lost either way (the items stay in the outbox), but a run that
        ends "ok" while PromptLayer misses part of it would let a user trust an incomplete
        PromptLayer view; `chared sync` sends the rest.
        """
        self.flush(self.flush_timeout_s)
        pending, dead = self._undelivered("pending"), self._undelivered("dead")
        if dead:
            errors = self.outbox.errors()
            raise TrackingError(
                f"PromptLayer refused {len(dead)} item(s) of run {run.run_id} for good "
                f"({errors.get(dead[0], 'no error text')[:200]}); fix the cause (e.g. the API key); "
                f"they are kept in {self.outbox.path}"
            )
        if pending:
            raise TrackingError(
                f"{len(pending)} PromptLayer item(s) of run {run.run_id} were not delivered (server unreachable or "
                f"slow); they wait in {self.outbox.path}"
            )

    def _undelivered(self, status: str) -> list[str]:
        return [k for k in self.outbox.keys(status) if k.split("#", 1)[0] in self._keys]

    def on_run_abort(self, run: RunRecord, status: str = "KILLED") -> None:
        """Interrupted: give the sender a short while; what is left stays in the outbox."""
        self.flush(min(self.flush_timeout_s, 2.0))

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
        return [k for k in self.outbox.keys("pending") if k.startswith(f"{key}#")]
