"""Suite-wide settings.

Subtle: torch's default of one OpenMP thread per core stalls at barriers when
anything else runs on these 2 cores (seen: a tiny-model test 50x slower, 158 s
instead of 3 s). Tests are many small matrix products, so one thread is both
faster and steady. Integration tests on real models use the same setting.
"""

import os

import torch

torch.set_num_threads(1)

# Plain model specs run on transformers in the suite, whether or not the llama.cpp binding is
# installed (the default, auto, would switch GGUF models to it): the tests' numbers and their
# use of `assets.model` stay the same on every machine. Tests of `auto` pass it explicitly.
os.environ.setdefault("CHARED_BACKEND", "transformers")
