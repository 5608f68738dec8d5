"""serve/packing.py: batched rows go through the oneDNN-packed weight, one row through F.linear unchanged, a
weight changed in place is packed again, and what is not a float32 CPU linear wide enough is left alone."""

from __future__ import annotations

import pytest
import torch

from serve import packing

pytestmark = pytest.mark.skipif(not packing.available(), reason="this torch has no oneDNN linear ops")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(80, 96), torch.nn.Linear(96, 8),  # the second too thin: skipped
                               torch.nn.Linear(96, 96).to(torch.bfloat16)).eval()  # not float32: skipped


def test_rows_use_the_packed_weight_and_one_row_keeps_f_linear():
    import torch.nn.functional as F

    model = _model()
    assert packing.pack_linears(model) == 1
    wide, thin, half = model
    assert hasattr(wide, "_packed") and not hasattr(thin, "_packed") and not hasattr(half, "_packed")
    rows, one = torch.randn(6, 1, 80), torch.randn(1, 1, 80)
    with torch.inference_mode():
        assert torch.allclose(wide(rows), F.linear(rows, wide.weight, wide.bias), rtol=1e-4, atol=1e-4)
        assert torch.equal(wide(one), F.linear(one, wide.weight, wide.bias))  # bit for bit what generate gets
        # the packed copy really is what several rows use: swap in a packed zero weight (same version)
        wide._packed = torch.ops.mkldnn._reorder_linear_weight(torch.zeros_like(wide.weight), None)
        assert torch.allclose(wide(rows), wide.bias.expand(6, 1, 96))
        assert torch.equal(wide(one), F.linear(one, wide.weight, wide.bias))


def test_a_weight_changed_in_place_is_packed_again_and_autograd_keeps_f_linear():
    import torch.nn.functional as F

    model = _model()
    packing.pack_linears(model)
    wide, rows = model[0], torch.randn(4, 80)
    with torch.inference_mode():
        before = wide(rows)
    with torch.no_grad():
        wide.weight.mul_(2)  # what merging an adapter into the base weights does
    with torch.inference_mode():
        after = wide(rows)
    assert not torch.allclose(after, before, atol=1e-3)
    assert torch.allclose(after, F.linear(rows, wide.weight, wide.bias), rtol=1e-4, atol=1e-4)
    out = wide(rows.requires_grad_())  # the oneDNN op has no backward: under autograd F.linear runs
    out.sum().backward()
    assert rows.grad is not None and torch.equal(out, F.linear(rows, wide.weight, wide.bias))


def test_the_engine_packs_unless_told_not_to(tiny_model_dir):
    from alignkit.recipe import ModelConfig
    from serve.engine import TransformersEngine

    for pack, expect in ((True, True), (False, False)):
        engine = TransformersEngine(ModelConfig(base=tiny_model_dir), max_wait_ms=0, pack_weights=pack)
        try:
            packed = [m for m in engine.model.modules() if hasattr(m, "_packed")]
            assert (engine.packed > 0) is expect and len(packed) == engine.packed
        finally:
            engine.close()
