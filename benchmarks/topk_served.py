"""Served vs in process on the same GGUF file: exact-mode bits/char by text class, and seconds per request.

    python benchmarks/topk_served.py [--ks 1000,4000,all] [--texts emoji,prose] [--threads 1]

Starts llama.cpp's `llama-server` (.venv/bin/llama-server, or $LLAMA_SERVER) on SmolLM2's
embedded GGUF file, bound to 127.0.0.1 on a free port, in its own process group, ended by
that group at the end. The reference is the in-process llama.cpp backend on the same file
(`llama_cpp:smollm2`), full distributions: quantisation differences between the GGUF and the
HF weights are not counted. For each text of benchmarks/texts/classes/ and each k (top_k of
the served member; "all" = the vocabulary), exact-mode `Ensemble.score("", text)`.

Seconds per request: `top_logprobs` of one fixed 40-token prefix repeated (the server's cache
holds the prefix, so a request costs one token's evaluation plus sorting, JSON and parsing),
median of --repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.decoding import Ensemble, Member, MemberAssets  # noqa: E402
from chared_flows.decoding.backends.files import default_cache_dir  # noqa: E402
from chared_flows.decoding.backends.served import ServedBackend  # noqa: E402
from chared_flows.decoding.backends.specs import gguf_path  # noqa: E402
from tests.support.servers import free_port, server  # noqa: E402

TEXTS = ROOT / "benchmarks" / "texts" / "classes"


def binary() -> str:
    import shutil

    found = os.environ.get("LLAMA_SERVER") or shutil.which("llama-server", path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit("llama-server not found (make setup-llamacpp, or set LLAMA_SERVER)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1000,4000,all")
    parser.add_argument("--texts", default="emoji")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    local = Member.load(f"llama_cpp:smollm2?threads={args.threads}")
    a = local.assets
    rows = len(a.vocab)
    port = free_port()
    cmd = [binary(), "-m", str(gguf_path("smollm2", default_cache_dir())), "--host", "127.0.0.1", "--port", str(port),
           "-c", "8192", "-np", "1", "-t", str(args.threads), "--no-webui", "--no-warmup"]
    log = Path(tempfile.mkdtemp()) / "llama-server.log"
    print(f"# served vs in process (SmolLM2 GGUF, llama.cpp), exact mode; threads={args.threads}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with server(cmd, port, log):
        url = f"http://127.0.0.1:{port}"
        ServedBackend(url, num_rows=rows).wait_ready(120)

        def served(k: str) -> Member:
            backend = ServedBackend(url, num_rows=rows, top_k=k if k == "all" else int(k), deadline=120, timeout=120)
            return Member(MemberAssets.build(f"served@{k}", a.tokenizer, backend, num_rows=rows, source=url))

        ids = local.encode("The library opens at nine on weekdays. Most mornings a few students wait by the door")
        for k in args.ks.split(","):
            backend = served(k).assets.backend
            backend.top_logprobs(ids)
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                got = backend.top_logprobs(ids)
                times.append(time.perf_counter() - t)
            print(f"k={k:>5s}: {len(got[0])} entries, {statistics.median(times) * 1000:.1f} ms per request "
                  f"(median of {args.repeats}); load average {os.getloadavg()[0]:.2f}", flush=True)
        print("\n| text | k | chars | bits/char in process (full) | bits/char served | Δ | s (served score) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in args.texts.split(","):
            text = (TEXTS / f"{name}.txt").read_text()
            ref = Ensemble([local], mode="exact").score("", text).bits_per_char
            for k in args.ks.split(","):
                t = time.perf_counter()
                got = Ensemble([served(k)], mode="exact").score("", text).bits_per_char
                print(f"| {name} | {k} | {len(text)} | {ref:.4f} | {got:.4f} | {got - ref:+.4f} "
                      f"| {time.perf_counter() - t:.1f} |", flush=True)
    print(f"\nthreads={args.threads}; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
