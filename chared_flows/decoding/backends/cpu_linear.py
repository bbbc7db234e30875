"""A faster output layer on CPU for the small batches decoding runs (transformers backend).

The trap: on CPU, `torch.nn.Linear` calls MKL's sgemm, and for the 1-16 rows a decode
step feeds, the output layer (vocabulary x hidden, the largest matrix of a small model)
costs far more than reading its weights once. Measured on this machine (1 thread, torch
2.13 CPU, Gemma-3's 262,144 x 640 output layer): 60 ms for 1 row, 125 for 2, 188 for 3,
107 for 4, 129 for 8: two and three rows run as that many matrix-vector products, so a
batch of 2 or 3 paths costs 2-3 single passes. oneDNN's linear on the same dense weight
(`torch.ops.mkldnn._linear_pointwise`, what torch.compile emits for CPU linears): 51, 70,
71, 74, 90 ms. And one row is read fastest from the transposed layout: `x @ W.T` with
`W.T` contiguous took 32 ms. The hidden layers are left alone: they are small, oneDNN's
fixed cost per call (about 15 us) makes it slower on most of them, and whole-model
timings with them switched were no better (`benchmarks/cpu_linear.py` prints the
whole-model effect).

So `install(model)` gives the output layer of a CPU fp32 model a forward that uses one
transposed copy of its weight for 1-row products (the one memory cost: Gemma-3 671 MB,
SmolLM2 113 MB; the weights must not change after `install`, inference only) and oneDNN
for more rows. Results differ from MKL's by float rounding only (summation order; about
1e-4 absolute on logits of size 10-30). The layer is checked against `F.linear` on a
random input before it is switched; if the check fails (or this torch has no oneDNN
linear) it keeps its stock forward. Both happen once per model load: 1.3 s for Gemma-3
(the copy 0.7 s, the check 0.6 s; 1 thread). `install` returns which it is ("onednn" or
"stock"), which the backend reports in its identity; CHARED_LINEAR=stock opts out.
"""

from __future__ import annotations

import os
import types
from typing import Any

import torch
import torch.nn.functional as F

ENV = "CHARED_LINEAR"  # "stock": leave every linear layer as transformers built it
ONEDNN = "onednn"
STOCK = "stock"
_CHECK_TOLERANCE = 1e-3  # relative to the output's scale: rounding differences are ~1e-6


def install(model: Any) -> str:
    """Switch the model's output layer to the faster kernels where it can; return which kernels it uses."""
    if os.environ.get(ENV, "").strip().lower() == STOCK or not _onednn_linear_available():
        return STOCK
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(output) is not torch.nn.Linear or not _eligible(output.weight):
        return STOCK
    return ONEDNN if _switch(output) else STOCK


def uninstall(model: Any) -> None:
    """The output layer (every linear layer) back to its stock forward; benchmarks compare both in one process."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            _restore(module)


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _eligible(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2


def _switch(module: torch.nn.Linear) -> bool:
    # A copy, not a view: tied embeddings share `weight` and need its row-major layout.
    module._row_weight = module.weight.detach().t().contiguous()
    module.forward = types.MethodType(_fast_forward, module)
    if _agrees(module):
        return True
    _restore(module)
    return False


def _restore(module: torch.nn.Linear) -> None:
    module.__dict__.pop("forward", None)
    module.__dict__.pop("_row_weight", None)


def _fast_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.device.type != "cpu" or not x.dtype == self.weight.dtype == torch.float32:  # moved or cast since
        return F.linear(x, self.weight, self.bias)
    if x.numel() == x.shape[-1]:  # one row: the transposed layout reads fastest
        out = x @ self._row_weight
        return out + self.bias if self.bias is not None else out
    return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def _agrees(module: torch.nn.Linear) -> bool:
    """The fast forward gives F.linear's result on 1, 3 and 2x2 rows of a random input."""
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.inference_mode():
            for shape in ((1, module.in_features), (3, module.in_features), (2, 2, module.in_features)):
                x = torch.randn(shape, generator=generator)
                want, got = F.linear(x, module.weight, module.bias), module(x)
                scale = float(want.abs().max()) + 1e-6
                if got.shape != want.shape or float((got - want).abs().max()) > _CHECK_TOLERANCE * scale:
                    return False
    except RuntimeError:
        return False
    return True
