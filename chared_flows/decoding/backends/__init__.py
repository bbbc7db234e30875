"""Everything that turns token ids into logits or finds a model (the engine is one level up).

- `protocol`: what the engine needs from a model (Backend, TokenRunner);
- `transformers`: transformers in process, with KV-cache reuse and batched passes;
- `llamacpp`: llama.cpp in process through llama-cpp-python (extra `llamacpp`);
- `served`: a model behind an inference server's HTTP API (stdlib only);
- `topk`: a wrapper that keeps only the top-k logits of another backend (what a
  served member sees), used to measure the cost of that truncation exactly;
- `scheduler`: one worker per model that batches the passes owed at one step;
- `assets`: a member's heavy, shareable part (tokenizer, byte index, backend);
- `loading` (a spec -> assets), `specs` (`llama_cpp:` and `served:` specs) and
  `files` (a leaf: cache folder, embedded GGUF files, fingerprints).

Nothing here imports the engine (decoding/*.py) but the byte tables
(vocab, index, utf8); each module imports its optional library lazily, so
importing this package never needs an extra.
"""
