"""Member backends beyond transformers in process (see backend.py for the protocol).

- `llamacpp`: llama.cpp in process through llama-cpp-python (extra `llamacpp`);
- `served`: a model behind an inference server's HTTP API (stdlib only);
- `topk`: a wrapper that keeps only the top-k logits of another backend (what a
  served member sees), used to measure the cost of that truncation exactly.

Each module imports its optional library lazily, so importing this package
never needs an extra.
"""
