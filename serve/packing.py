"""Prepacked oneDNN weights for the linear layers of a model served on CPU.

A batched decode step multiplies every weight by a few rows (one per running request). torch's `F.linear`
does that with an MKL gemm that runs far below the cost of its one-row gemv times the rows — on SmolLM2-135M
(float32, 1 thread) an 8-row decode step took 114 ms against 68 ms for one row, the 49152 × 576 head alone
21.5 ms at 8 rows against 11.1 ms at one. oneDNN with the weight reordered once into its blocked layout
(`mkldnn._reorder_linear_weight`, what torch.compile's CPU backend uses) takes 74 ms for the same 8-row step
(the head 8.8 ms); one row costs the same either way, so one row keeps `F.linear`, the gemv `model.generate`
runs for a lone request's decode steps.

The packed copy costs one more copy of the packed weights' memory (≈ 0.5 GB for SmolLM2-135M in float32).
It is redone when the weight changes in place (its `_version`), and skipped under autograd.
"""

from __future__ import annotations

MIN_DIM = 64  # LoRA's A/B (rank × features) stay on F.linear: too thin to gain, and added after packing anyway


def available() -> bool:
    """Whether this torch has the oneDNN ops and they agree with `F.linear` (checked on a random layer)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        weight, x = torch.randn(96, 80), torch.randn(5, 80)
        with torch.inference_mode():
            got = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(weight, None),
                                                     None, "none", [], "")
    except (AttributeError, RuntimeError):  # a torch built without them, or a CPU oneDNN refuses
        return False
    return bool(torch.allclose(got, x @ weight.t(), rtol=1e-4, atol=1e-4))


def _forward(self, x):
    """nn.Linear.forward, through the packed weight when x has more than one row and no gradient is wanted."""
    import torch
    import torch.nn.functional as F

    if x.numel() <= x.shape[-1] or torch.is_grad_enabled() or x.dtype != self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    if self._packed_version != self.weight._version:  # changed in place (a merge, a load): reorder again
        self._repack()
    return torch.ops.mkldnn._linear_pointwise(x, self._packed, self.bias, "none", [], "")


def _repack(self) -> None:
    import torch

    with torch.no_grad():
        self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
    self._packed_version = self.weight._version


def pack_linears(model) -> int:
    """Give every plain float32 `nn.Linear` of a CPU model (both dimensions ≥ MIN_DIM) the packed forward;
    returns how many. Nothing changes on other devices or dtypes, or where the ops are missing."""
    import types

    import torch

    if not available():
        return 0
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(module) is not torch.nn.Linear or weight is None or weight.device.type != "cpu" or \
                weight.dtype != torch.float32 or min(weight.shape) < MIN_DIM:
            continue
        module._repack = types.MethodType(_repack, module)
        module._repack()
        module.forward = types.MethodType(_forward, module)
        count += 1
    return count
