"""Vocabulary + prefix index build time on the embedded models' tokenizers: reference vs fast, side by side.

    python benchmarks/vocab.py [--threads 1] [--repeats 3]

For each tokenizer: ByteVocabulary.from_tokenizer and PrefixIndex (the fast
builds the engine uses) against the straightforward per-token builds in
tests/fixtures/reference_vocab.py (the first implementation), interleaved in
one run, best of --repeats. Tokenizer loading is not timed. Both builds are
checked to give the same bytes and the same index arrays. The machine's load
average and the torch thread count are printed with every figure: the
absolute times move with load, the ratio much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from chared_flows.decoding.index import PrefixIndex  # noqa: E402
from chared_flows.decoding.backends.files import EMBEDDED, default_cache_dir  # noqa: E402
from chared_flows.decoding.backends.loading import convert_gguf, quiet_transformers  # noqa: E402
from chared_flows.decoding.vocab import ByteVocabulary  # noqa: E402
from tests.fixtures.reference_vocab import (  # noqa: E402
    assert_same_index,
    assert_same_vocabulary,
    reference_index,
    reference_vocabulary,
)


def load_tokenizer(alias: str):
    """The embedded model's tokenizer and its output rows (config vocab_size), without loading weights."""
    from transformers import AutoTokenizer

    root = default_cache_dir()
    directory = convert_gguf(EMBEDDED[alias](root), root)
    rows = json.loads((directory / "config.json").read_text()).get("vocab_size")
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(directory), rows


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", default=",".join(EMBEDDED))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# vocabulary + index build: torch threads={torch.get_num_threads()}, best of {args.repeats}, "
          f"{os.cpu_count()} CPUs, load average {load_average()}")
    print("\n| tokenizer | rows | build | vocab s | index s | total s | speed-up | load avg |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for alias in args.models.split(","):
        tok, rows = load_tokenizer(alias)
        best = {"reference": [float("inf")] * 2, "fast": [float("inf")] * 2}
        for _ in range(args.repeats):
            ref_vocab, t_rv = timed(lambda: reference_vocabulary(tok, num_rows=rows, eos_token_ids=[tok.eos_token_id]))
            ref_index, t_ri = timed(lambda: reference_index(ref_vocab))
            vocab, t_v = timed(lambda: ByteVocabulary.from_tokenizer(tok, num_rows=rows, eos_token_ids=[tok.eos_token_id]))
            index, t_i = timed(lambda: PrefixIndex(vocab))
            best["reference"] = [min(best["reference"][0], t_rv), min(best["reference"][1], t_ri)]
            best["fast"] = [min(best["fast"][0], t_v), min(best["fast"][1], t_i)]
        assert_same_vocabulary(vocab, ref_vocab)
        assert_same_index(index, ref_index)
        ref_total, fast_total = sum(best["reference"]), sum(best["fast"])
        for name, (t_v, t_i) in best.items():
            speed = f"{ref_total / fast_total:.1f}x" if name == "fast" else ""
            print(f"| {alias} | {rows:,} | {name} | {t_v:.3f} | {t_i:.3f} | {t_v + t_i:.3f} | {speed} | {load_average()} |")
    print("\nfast == reference: identical token bytes and index arrays (checked above)")


if __name__ == "__main__":
    main()
