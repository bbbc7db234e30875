"""Faster fp32 linear layers on CPU for the small batches decoding runs (transformers backend).

The trap: on CPU, `torch.nn.Linear` calls MKL's sgemm, and for the 1-16 rows a decode
step feeds, that is far from the cost of reading the weights once. Measured with
`python benchmarks/cpu_linear.py` (1 thread, torch 2.13 CPU, Gemma-3's 262,144 x 640
output layer): 60 ms for 1 row, 125 for 2, 188 for 3, 107 for 4, 129 for 8. Two and
three rows run as that many separate matrix-vector products, so a batch of 2 or 3 paths
costs 2-3 single passes and batching does not pay. oneDNN's linear
(`torch.ops.mkldnn._linear_pointwise`, what torch.compile emits for CPU linears) on the
same dense weight: 51, 70, 71, 74, 90 ms. And one row is read fastest from the
transposed layout: `x @ W.T` with `W.T` contiguous took 32 ms.

So `install(model)` gives each `nn.Linear` of a CPU fp32 model a forward that uses
oneDNN, and the output layer (the largest matrix, tied to the embeddings in the
embedded models) one transposed copy for 1-row products: that copy is the one memory
cost (Gemma-3: 671 MB, SmolLM2: 113 MB), and why the weights must not change after
`install` (inference only: a trained weight would leave the copy stale). Results differ from MKL's by float rounding
only (summation order; about 1e-4 absolute on logits of size 10-30).

Each layer is checked once against `F.linear` on a random input before it is switched,
and any layer whose check fails (or a torch without the op) keeps the stock forward:
`install` returns what it did, which the backend reports in its identity.
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
    """Switch the model's CPU fp32 linear layers to the faster kernels; return which kernels it now uses."""
    if os.environ.get(ENV, "").strip().lower() == STOCK or not _onednn_linear_available():
        return STOCK
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    switched = [
        _switch(module, transposed_row=module is output)
        for module in model.modules()
        if type(module) is torch.nn.Linear and _eligible(module.weight)
    ]
    return ONEDNN if any(switched) else STOCK


def uninstall(model: Any) -> None:
    """Every linear layer back to its stock forward (benchmarks compare both in one process)."""
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            _restore(module)


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _eligible(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2


def _switch(module: torch.nn.Linear, transposed_row: bool) -> bool:
    if transposed_row:
        # A copy, not a view: the embeddings share `weight` and need its row-major layout.
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
    if x.dtype != self.weight.dtype or x.device.type != "cpu":
        return F.linear(x, self.weight, self.bias)
    row_weight = self.__dict__.get("_row_weight")
    if row_weight is not None and x.numel() == x.shape[-1]:  # one row: the transposed layout reads fastest
        out = x @ row_weight
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
