"""CharED speed with llama.cpp members vs transformers members, side by side in one run.

    python benchmarks/backends.py [--threads 1] [--chars 150] [--repeats 3]
    python benchmarks/backends.py --mode score [--chars 286] [--repeats 2] [--models smollm2,gemma3-270m]

`--mode score`: exact-mode scoring, `Ensemble([m], mode="exact").score("", text)` of the
first --chars characters of benchmarks/texts/prose.txt, one member at a time, per backend
on the same GGUF file: llama.cpp as before state copies and prefill
(`?state_copies=0&prefill=0`: every forked path re-fed prompt + text from position 0),
with state copies only (`?prefill=0`), as now (both), transformers, and a `served:`
llama-server (`.venv/bin/llama-server`, 127.0.0.1, -t 1, ended by its process group).
Runs alternate (A B C D E A B ...); each run's seconds, bits/char, forward passes and
tokens fed, with the load average. Pin it: `taskset -c 1`, --threads 1.

Both ensembles are SmolLM2-135M + Gemma-3-270M at weights 0.5/0.5, greedy,
from the same GGUF files: transformers runs their fp32 dequantisation,
llama.cpp runs the quantised files (Q4_1 / Q4_K_M). Runs alternate between
the two (A B A B ...) so that load on the machine hits both alike; we report
the best chars/s of each and their ratio, with the thread count (torch and
llama.cpp use the same number) and the load average before and after. Also:
whether the greedy texts are equal, and the per-member forward passes.

First, how close the two backends' logits are on the same GGUF file
(llama.cpp: quantised weights, transformers: their fp32 dequantisation): at
every position of the texts in benchmarks/texts/ (first --agree-chars chars,
fed token by token, as decoding does), max |logit difference|, top-1
agreement and KL(transformers || llama.cpp) in nats.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from chared_flows.decoding import Ensemble, Member

PROMPT = (
    "Question: A baker makes 24 muffins in the morning and 18 in the afternoon. "
    "He sells 30 of them. How many muffins are left?\nAnswer: Let's think step by step."
)


def agreement(members: dict[str, list[Member]], chars: int) -> None:
    texts = [p.read_text()[:chars] for p in sorted((Path(__file__).resolve().parent / "texts").glob("*.txt"))]
    print("\n| model | positions | max abs logit diff | top-1 agreement | mean KL nats | max KL nats |")
    print("|---|---:|---:|---:|---:|---:|")
    for hf, llama in zip(members["transformers"], members["llama.cpp"]):
        diffs, same, kls = [], [], []
        for text in texts:
            ids = hf.encode(text)
            a, b = hf.assets.backend.new_runner(), llama.assets.backend.new_runner()
            for end in range(1, len(ids) + 1):
                la, lb = a.next_logits(ids[:end]).double(), b.next_logits(ids[:end]).double()
                pa, pb = torch.log_softmax(la, -1), torch.log_softmax(lb, -1)
                diffs.append(float((la - lb).abs().max()))
                same.append(int(la.argmax()) == int(lb.argmax()))
                kls.append(float((pa.exp() * (pa - pb)).sum()))
        print(f"| {hf.name} | {len(kls)} | {max(diffs):.3f} | {sum(same) / len(same):.3f} | "
              f"{sum(kls) / len(kls):.4f} | {max(kls):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chars", type=int, default=None, help="characters generated (150) or scored (286)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default="chared", choices=["chared", "exact", "score"])
    parser.add_argument("--models", default="smollm2,gemma3-270m", help="--mode score: the models, one after another")
    parser.add_argument("--agree-chars", type=int, default=300, help="characters of each text for the logits check")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode == "score":
        for model in args.models.split(","):
            score_backends(model, args.threads, args.chars or 286, args.repeats)
        return
    args.chars = args.chars or 150
    load_before = os.getloadavg()
    ensembles, loaded = {}, {}
    kinds = [("transformers", "", ""), ("llama.cpp", "llama_cpp:", "")]
    if args.mode == "exact":  # snapshots as sequence copies (above) vs re-feeding the tokens after the common prefix
        kinds.append(("llama.cpp re-feed", "llama_cpp:", "?snapshot_seqs=0"))
    for kind, prefix, options in kinds:
        start = time.perf_counter()
        pin = {} if prefix else {"backend": "transformers"}  # a plain alias would go to llama.cpp under auto
        members = [Member.load(prefix + "smollm2" + options, **pin), Member.load(prefix + "gemma3-270m" + options, **pin)]
        loaded[kind] = members
        ensembles[kind] = Ensemble(members, weights=[0.5, 0.5], mode=args.mode)
        ensembles[kind].generate(PROMPT, max_new_chars=5)  # warm-up
        print(f"# {kind}: loaded in {time.perf_counter() - start:.1f} s")
    if args.agree_chars and args.mode == "chared":
        agreement(loaded, args.agree_chars)
    best: dict[str, float] = {}
    results = {}
    for _ in range(args.repeats):
        for kind, ens in ensembles.items():
            result = ens.generate(PROMPT, max_new_chars=args.chars)
            best[kind] = max(best.get(kind, 0.0), result.stats.chars_per_s)
            results[kind] = result
    load_after = os.getloadavg()
    print(f"# threads={args.threads} (torch and llama.cpp), mode={args.mode}, {args.chars} chars, "
          f"best of {args.repeats}, load average before {load_before[0]:.2f} after {load_after[0]:.2f}")
    print("\n| members | chars/s (best) | forward passes (smollm2, gemma) | tokens fed |")
    print("|---|---:|---|---|")
    for kind, result in results.items():
        st = result.stats
        passes = ", ".join(str(v) for v in st.forward_passes.values())
        fed = ", ".join(str(v) for v in st.tokens_fed.values())
        print(f"| {kind} | {best[kind]:.2f} | {passes} | {fed} |")
    print(f"\nllama.cpp / transformers = {best['llama.cpp'] / best['transformers']:.2f}x")
    same = results["llama.cpp"].text == results["transformers"].text
    print(f"greedy texts equal: {same}")
    for kind, result in results.items():
        print(f"{kind}: {result.text!r}")


def llama_server(model: str, threads: int):
    """A llama-server on the model's GGUF file (a context manager), or None where none is built."""
    import shutil
    import sys
    import tempfile

    from chared_flows.decoding.backends.files import default_cache_dir
    from chared_flows.decoding.backends.specs import gguf_path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.servers import free_port, server

    binary = shutil.which("llama-server", path=str(Path(sys.executable).parent)) or shutil.which("llama-server")
    if binary is None:
        return None, None
    port = free_port()
    cmd = [binary, "-m", str(gguf_path(model, default_cache_dir())), "--host", "127.0.0.1", "--port", str(port),
           "-c", "8192", "-np", "4", "-t", str(threads), "-tb", str(threads), "--no-webui", "--no-warmup"]
    log = Path(tempfile.mkdtemp(prefix="llama-server-")) / "log"
    return server(cmd, port, log), f"http://127.0.0.1:{port}"


def score_backends(model: str, threads: int, chars: int, repeats: int) -> None:
    """Exact-mode scoring of one model's members per backend, runs alternating (see the docstring)."""
    import contextlib

    from chared_flows.decoding import scoring
    from chared_flows.decoding.backends.served import ServedBackend

    text = (Path(__file__).resolve().parent / "texts" / "prose.txt").read_text()[:chars]
    counts: dict = {}
    original = scoring._passes

    def passes(ens, sessions):  # keep every pass count of the last scoring, not only forward passes
        counts.clear()
        counts.update({n: s.pass_counts() for n, s in zip(ens.names, sessions) if s is not None})
        return original(ens, sessions)

    scoring._passes = passes
    variants = {
        "llama_cpp before (state_copies=0&prefill=0)": f"llama_cpp:{model}?threads={threads}&state_copies=0&prefill=0",
        "llama_cpp state copies (prefill=0)": f"llama_cpp:{model}?threads={threads}&prefill=0",
        "llama_cpp now": f"llama_cpp:{model}?threads={threads}",
        "transformers": model,
    }
    served, url = llama_server(model, threads)
    with served if served is not None else contextlib.nullcontext():
        if url is not None:
            ServedBackend(url, num_rows=1).wait_ready(120)
            variants["served (llama-server, top_k 1000)"] = f"served:{url}?tokenizer={model}"
        ensembles = {}
        for label, spec in variants.items():
            pin = {"backend": "transformers"} if label == "transformers" else {}
            ensembles[label] = Ensemble([Member.load(spec, **pin)], mode="exact")
            ensembles[label].score("", text[:20])  # warm-up (loads, pools, the server's slots)
        print(f"\n## {model}: exact-mode score of {len(text)} chars of prose.txt, threads={threads}, "
              f"load average {os.getloadavg()[0]:.2f}")
        print("| run | backend | seconds | bits/char | forward passes | tokens fed | load avg (1 min) |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for run in range(repeats):
            for label, ens in ensembles.items():
                start = time.perf_counter()
                result = ens.score("", text)
                wall = time.perf_counter() - start
                c = next(iter(counts.values()))
                print(f"| {run + 1} | {label} | {wall:.2f} | {result.bits_per_char:.6f} | {c.forward_passes} | "
                      f"{c.tokens_fed} | {os.getloadavg()[0]:.2f} |", flush=True)
    scoring._passes = original


if __name__ == "__main__":
    main()
