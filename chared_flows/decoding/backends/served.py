"""A member served by an inference server over HTTP: token ids in, next-token top-k log-probs out.

Wire formats (`api=`):
- "llama_cpp": llama.cpp's `llama-server`, POST /completion with the prompt as
  token ids, `n_predict: 1`, `n_probs: k`, `cache_prompt: true`. The reply's
  `completion_probabilities[0].top_logprobs` holds {id, logprob} for the
  first generated position, i.e. the token after the prompt; without
  `post_sampling_probs` they are the plain softmax of the model's logits,
  whatever the sampler settings. When the greedy token ends inside a UTF-8
  character the server sends no probabilities (it holds the partial
  character back); the request is then sent again with a grammar that
  samples one printable ASCII character (`held_back`). `top_k="all"` asks for
  the whole vocabulary (llama-server does not cap n_probs).
- "openai": vLLM's OpenAI-compatible POST /v1/completions with the prompt as
  token ids, `max_tokens: 1`, `logprobs: k`, `return_tokens_as_token_ids:
  true`; `choices[0].logprobs.top_logprobs[0]` maps "token_id:<id>" to its
  log-prob (vLLM caps k at its `--max-logprobs`, 20 by default: start it with
  a larger value for larger k; -9999.0 stands for -inf).

The runner is stateless: the server keeps the KV of recent prompts (prefix
caching), so snapshots only remember the last ids and logits. Tokenization
stays the HF tokenizer's (members.py); the server must serve the same model.

Robustness: each call has a total deadline (`deadline`, 30 s) that bounds
its tries, backoff sleeps included; each try's socket timeout is the
smaller of `timeout` and the time left. Connection errors, timeouts and 5xx
replies (llama-server answers 503 while it loads) are retried with
exponential backoff; 4xx replies are not (the request is wrong). When the
retries or the deadline run out, `BackendError` says in one line which URL
failed, why, and what to start. Every reply is checked before it is used
(`check_top`): ids inside the vocabulary, finite log-probs <= 0 whose
probabilities sum to at most 1, between 1 and top_k distinct entries; a
reply that fails is a `BackendError` naming the server and the fault, never
a silent wrong distribution. A failed call changes nothing in the runner, so the caller can
retry the same call later. `next_logits_batch` sends one request per
sequence from a thread pool, at most `concurrency` in flight per backend.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence
from urllib.parse import urlsplit

import torch

from chared_flows.decoding.backends.protocol import TokenRunner, common_prefix_len
from chared_flows.decoding.backends.topk import ALL, DEFAULT_REST, check_rest, check_top_k, topk_logits
from chared_flows.errors import BackendError, ConfigError

APIS = ("llama_cpp", "openai")
START_HINT = {
    "llama_cpp": "start it, e.g. `llama-server -m MODEL.gguf --host 127.0.0.1 --port PORT`",
    "openai": "start it, e.g. `vllm serve MODEL --port PORT --max-logprobs K`",
}


class _Retryable(Exception):
    """A failure worth another try (connection, timeout, 5xx)."""


def check_url(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"server URL {url!r} is not an http(s) URL; write it like http://127.0.0.1:8080")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class ServedBackend:
    """One model behind an HTTP inference server (see the module docstring for the wire formats)."""

    kind = "served"

    def __init__(
        self,
        url: str,
        *,
        num_rows: int,
        api: str = "llama_cpp",
        top_k: int | str = 1000,  # measured: at 100 the tail lost already changes greedy text (topk.py)
        rest: str = DEFAULT_REST,
        model: str | None = None,
        timeout: float = 30.0,
        deadline: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        concurrency: int = 8,
    ):
        if api not in APIS:
            raise ConfigError(f"api {api!r} is not a supported server API; use one of: {', '.join(APIS)}")
        for name, value in (("timeout", timeout), ("deadline", deadline), ("backoff", backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name != "backoff" and value == 0):
                raise ConfigError(f"{name} is {value!r}; give a positive number of seconds")
        for name, value, low in (("retries", retries, 0), ("concurrency", concurrency, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} is {value!r}; give an integer >= {low}")
        self.url = url.rstrip("/")
        self._scheme, self._host, self._port, self._base = check_url(url)
        self.api, self.num_rows = api, num_rows
        self.top_k, self.rest = check_top_k(num_rows if top_k == ALL else top_k), check_rest(rest)
        self.model = model
        self.timeout, self.retries, self.backoff = float(timeout), retries, float(backoff)
        self.deadline = float(deadline)
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency)
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # -- the protocol ---------------------------------------------------------------------------

    def new_runner(self) -> TokenRunner:
        return ServedRunner(self)

    def next_logits_batch(self, runners: Sequence[TokenRunner], token_ids: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        if len(runners) != len(token_ids):
            raise ValueError(f"{len(runners)} runners for {len(token_ids)} id sequences; pass one per runner")
        if len(runners) <= 1:
            return [r.next_logits(ids) for r, ids in zip(runners, token_ids)]
        futures = [self._executor().submit(r.next_logits, ids) for r, ids in zip(runners, token_ids)]
        return [f.result() for f in futures]  # the first failure raises, after all requests ended

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "api": self.api, "url": self.url, "model": self.model or "",
                "top_k": self.top_k, "rest": self.rest}

    # -- requests --------------------------------------------------------------------------------

    def top_logprobs(self, token_ids: Sequence[int]) -> tuple[list[int], list[float]]:
        """The server's top-k (token id, log-prob) of the token after `token_ids`."""
        ids = [int(i) for i in token_ids]
        if self.api == "openai":
            body = {"model": self._model_name(), "prompt": ids, "max_tokens": 1, "logprobs": self.top_k,
                    "temperature": 0.0, "return_tokens_as_token_ids": True}
            top = parse_openai(self._post("/v1/completions", body), self.url)
        else:
            body = {"prompt": ids, "n_predict": 1, "n_probs": self.top_k, "cache_prompt": True,
                    "temperature": 0.0, "post_sampling_probs": False}
            reply = self._post("/completion", body)
            if held_back(reply):
                # subtle: llama-server holds back a sampled token that ends inside a UTF-8
                # character (an emoji's or a CJK character's first bytes), and its probabilities
                # with it. Asked again with a grammar that samples one printable ASCII
                # character, it answers; the log-probs are the logits' softmax before
                # sampling, so the grammar leaves them unchanged (measured: identical).
                reply = self._post("/completion", {**body, "grammar": ASCII_GRAMMAR})
            top = parse_llama_cpp(reply, self.url)
        return check_top(*top, num_rows=self.num_rows, top_k=self.top_k, url=self.url)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the server's /health answers 200 (llama-server: model loaded)."""
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            try:
                status, _ = self._request("GET", "/health", None)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except _Retryable as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BackendError(f"served member at {self.url} not ready after {timeout:.0f} s ({last}); {START_HINT[self.api]}")

    def _model_name(self) -> str:
        if self.model is None:
            reply = self._call("GET", "/v1/models", None)
            try:
                self.model = reply["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise BackendError(f"served member at {self.url}: /v1/models lists no model; pass model=NAME") from None
        return self.model

    def _post(self, path: str, body: dict) -> Any:
        return self._call("POST", path, body)

    def _call(self, method: str, path: str, body: dict | None) -> Any:
        """One request with retries and backoff, all inside `deadline`; the decoded JSON reply."""
        start, last, tries = time.monotonic(), "", 0
        end = start + self.deadline
        for attempt in range(self.retries + 1):
            if attempt:
                pause = self.backoff * 2 ** (attempt - 1)
                if time.monotonic() + pause >= end:
                    break  # no time left for another try
                time.sleep(pause)
            try:
                with self._slots:
                    left = end - time.monotonic()
                    if left <= 0:
                        last = last or "no time left"
                        break
                    tries += 1
                    status, data = self._request(method, path, body, min(self.timeout, left))
            except _Retryable as exc:
                last = str(exc)
                continue
            if status >= 500:
                last = f"HTTP {status}: {_snippet(data)}"
                continue
            if status >= 400:
                raise BackendError(f"served member at {self.url}{path} refused the request: HTTP {status}: {_snippet(data)}")
            try:
                return json.loads(data)
            except ValueError:
                raise BackendError(
                    f"served member at {self.url}{path} sent no JSON ({_snippet(data)}); is api={self.api!r} right for it?"
                ) from None
        within = f" within its {self.deadline:g} s deadline" if tries < self.retries + 1 else ""
        raise BackendError(
            f"served member at {self.url} failed {tries} {'try' if tries == 1 else 'tries'}{within} in "
            f"{time.monotonic() - start:.1f} s ({last}); {START_HINT[self.api]}, or fix the URL"
        )

    def _request(self, method: str, path: str, body: dict | None, timeout: float | None = None) -> tuple[int, bytes]:
        conn = self._connection()
        # subtle: the socket timeout bounds each blocking read, so a server that never
        # answers is cut at the time left; one that trickles a byte at a time could still
        # stretch a try, which the deadline check before the next try then stops.
        conn.timeout = self.timeout if timeout is None else timeout
        if conn.sock is not None:
            conn.sock.settimeout(conn.timeout)
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, self._base + path, body=payload, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # a half-read connection cannot be reused
            self._local.conn = None
            reason = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else (
                str(exc) or exc.__class__.__name__)
            raise _Retryable(reason) from None

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's keep-alive connection (http.client connections are not thread-safe)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="served")
            return self._pool


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", "replace").strip().replace("\n", " ")
    try:  # both servers wrap errors as {"error": {"message": ...}}
        text = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    return text[:limit] or "empty reply"


ASCII_GRAMMAR = "root ::= [ -~]"  # GBNF: one printable ASCII character


def held_back(reply: Any) -> bool:
    """A llama-server reply that generated a token but sent no probabilities (a partial UTF-8 character)."""
    return isinstance(reply, dict) and "completion_probabilities" not in reply and reply.get("tokens_predicted") == 1


def parse_llama_cpp(reply: Any, url: str = "") -> tuple[list[int], list[float]]:
    """(ids, logprobs) from llama-server's /completion reply with n_probs (see the module docstring)."""
    try:
        first = reply["completion_probabilities"][0]
        top = first["top_logprobs"]
        return [_token_id(t["id"]) for t in top], [_number(t["logprob"]) for t in top]
    except (KeyError, IndexError, TypeError, ValueError):
        raise BackendError(
            f"served member at {url}: reply has no completion_probabilities[0].top_logprobs "
            f"(keys: {sorted(reply) if isinstance(reply, dict) else type(reply).__name__}); is it llama.cpp's llama-server?"
        ) from None


def _token_id(value: Any) -> int:
    # int() would silently turn 7.9, "7" or true into a token id
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(value)
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(value)
    return float(value)


def parse_openai(reply: Any, url: str = "") -> tuple[list[int], list[float]]:
    """(ids, logprobs) from an OpenAI-style completions reply with return_tokens_as_token_ids."""
    try:
        top = reply["choices"][0]["logprobs"]["top_logprobs"][0]
        ids, logprobs = [], []
        for token, logprob in top.items():
            if not token.startswith("token_id:"):
                raise ValueError(token)
            ids.append(_token_id(int(token.split(":", 1)[1])))
            logprobs.append(_number(logprob) if _number(logprob) > -9999.0 else float("-inf"))
        return ids, logprobs
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise BackendError(
            f"served member at {url}: reply has no choices[0].logprobs.top_logprobs[0] keyed by 'token_id:<id>'; "
            "does the server support return_tokens_as_token_ids (vLLM does)?"
        ) from None


def check_top(ids: list[int], logprobs: list[float], *, num_rows: int, top_k: int, url: str = "") -> tuple[list[int], list[float]]:
    """The reply's (ids, logprobs) if they can be a top-k of one distribution over `num_rows` tokens.

    A server that serves another model, a proxy that mangles numbers or a bug in the server
    would otherwise give a silently wrong distribution (NaN log-probs decode to nothing).
    """
    where = f"served member at {url}: reply"
    if not ids:
        raise BackendError(f"{where} has no top-k entries; the server must return the top {top_k} log-probs")
    if len(ids) != len(logprobs):
        raise BackendError(f"{where} has {len(ids)} token ids for {len(logprobs)} log-probs")
    if len(ids) > top_k:
        raise BackendError(f"{where} has {len(ids)} entries for top_k={top_k}; is the server honouring n_probs/logprobs?")
    if len(set(ids)) != len(ids):
        raise BackendError(f"{where} repeats a token id ({_first_repeat(ids)}); a top-k lists each token once")
    for token, logprob in zip(ids, logprobs):
        if not 0 <= token < num_rows:
            raise BackendError(
                f"{where} has token id {token} outside the tokenizer's {num_rows} tokens; "
                "does the server serve the model whose tokenizer= you gave?"
            )
        # -inf is allowed: vLLM's -9999.0 stands for a probability of 0
        if math.isnan(logprob) or logprob > _LOGPROB_SLACK:
            raise BackendError(f"{where} has log-prob {logprob!r} for token {token}; log-probs must be finite and <= 0")
    total = math.fsum(math.exp(v) for v in logprobs)
    if total > 1.0 + _MASS_SLACK:
        raise BackendError(f"{where} has probabilities summing to {total:.4f} > 1; they are not log-probs of one softmax")
    return ids, logprobs


_LOGPROB_SLACK = 1e-4  # float32 rounding of log(1) on the server
_MASS_SLACK = 1e-3


def _first_repeat(ids: list[int]) -> int:
    seen: set[int] = set()
    return next(i for i in ids if i in seen or seen.add(i))


class ServedRunner:
    """Stateless: the server caches prefixes. Remembers the last call so a repeated one costs nothing."""

    def __init__(self, backend: ServedBackend):
        self.backend = backend
        self.forward_passes = 0
        self.tokens_fed = 0  # tokens past the previous request's common prefix: what the server's cache must add
        self.cache_rebuilds = 0
        self._ids: tuple[int, ...] = ()
        self._logits: torch.Tensor | None = None

    def next_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        ids = tuple(int(i) for i in token_ids)
        if not ids:
            raise ValueError("a forward pass needs at least one token; add a BOS token or a prompt")
        if ids == self._ids and self._logits is not None:
            return self._logits
        top_ids, top_logprobs = self.backend.top_logprobs(ids)
        logits = topk_logits(top_ids, top_logprobs, self.backend.num_rows, self.backend.rest)
        self.forward_passes += 1
        self.tokens_fed += len(ids) - min(common_prefix_len(self._ids, ids), len(ids) - 1)
        self._ids, self._logits = ids, logits
        return logits

    def snapshot(self) -> tuple[tuple[int, ...], torch.Tensor | None]:
        return self._ids, self._logits

    def restore(self, snapshot: tuple[tuple[int, ...], torch.Tensor | None]) -> None:
        self._ids, self._logits = snapshot
