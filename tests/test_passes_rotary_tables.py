"""rotary-tables (+ cse, hoist-invariant): rotary's cos/sin tables are made once per forward, not twice per layer.

Planted: Llama's query and key rotations (the keys' positions are a relabelled `positions[B, S]`), rotations without
positions (0, 1, ...), the interleaved style. Numbers: -O2 against -O0 in the reference interpreter and in the
generated code, with left-padded per-row positions; the emitted decoding step against the full forward.
"""

from __future__ import annotations

import pytest
from test_passes_support import assert_idempotent, assert_same_outputs, optimized, state

import nnspec

torch = pytest.importorskip("torch")

LLAMA = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 48, "vocab_size": 50}


def where_op(model, op: str) -> dict[str, int]:
    found = {g.name: sum(n.op == op for n in g) for g in model.graphs()}
    return {k: v for k, v in found.items() if v}


def test_llama_tables_once_per_forward() -> None:
    model, opt, lines = optimized("examples/llama.yaml", **LLAMA)
    assert where_op(opt, "rotary_tables") == {"llama": 1}    # one table for q and k, made before the layers
    rotations = [n for g in opt.graphs() for n in g if n.op == "rotary"]
    assert len(rotations) == 2 and all(len(n.inputs) == 4 for n in rotations)
    assert any("[rotary-tables]" in line for line in lines)
    assert any("[hoist-invariant]" in line and "cos" in line for line in lines)
    assert state(opt) == state(model)
    assert_same_outputs(model, opt, T=6)
    assert_idempotent(opt)


def test_queries_and_keys_without_positions_share_one_table() -> None:
    """Qwen2-MoE rotates q along T and k along S with no positions given: one arange, one table, relabelled."""
    dims = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 24, "moe_intermediate_size": 8,
            "shared_expert_intermediate_size": 20, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2}
    model, opt, _ = optimized("examples/qwen2_moe.yaml", **dims)
    assert where_op(opt, "rotary_tables") == {"qwen2_moe": 1}
    assert_same_outputs(model, opt, T=5)


def test_llama_generated_code_at_O2_matches_O0_with_padded_positions() -> None:
    o0 = nnspec.build("examples/llama.yaml", opt=0, **LLAMA).eval()
    o2 = nnspec.build("examples/llama.yaml", opt=2, **LLAMA).eval()
    o2.load_state_dict(o0.state_dict())
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask, "position_ids": positions}):
            torch.testing.assert_close(o2(ids, **kwargs), o0(ids, **kwargs), rtol=1e-5, atol=1e-5, equal_nan=True)


SPEC = """
nnspec: 1
name: rope
dims: {h: 2, d: 8}
inputs:
  x: float32[B, T, h, d]
outputs:
  y: float32[B, T, h, d]
blocks:
  layer(x): |
    a = rotary(x, pos=T, dim=d, base=100.0)
    b = rotary(x * 0.5, pos=T, dim=d, base=100.0, style="interleaved")
    c = rotary(x, pos=T, dim=d, base=500.0)
    return a + b + c
body: |
  y = repeat(3, layer, x, name=layers)
"""


def test_rotations_without_positions_and_both_styles() -> None:
    model, opt, _ = optimized(SPEC)
    # 0, 1, ... as an arange: one table per base (the two styles read the same one), made before the repeat
    assert where_op(opt, "rotary_tables") == {"rope": 2} and where_op(opt, "arange")["rope"] == 1
    assert_same_outputs(model, opt, T=5)
    o0, o2 = nnspec.build(SPEC, opt=0).eval(), nnspec.build(SPEC, opt=2).eval()
    x = torch.randn(2, 5, 2, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(o2(x), o0(x), rtol=1e-5, atol=1e-6)


def test_float32_tables_rotate_a_bf16_model_in_bf16() -> None:
    """The tables are float32 values; under `--dtype bf16` the rotation casts them to x's dtype, as -O0 does."""
    o0 = nnspec.build(SPEC, opt=0, transforms={"dtype": "bf16"}).eval()
    o2 = nnspec.build(SPEC, opt=2, transforms={"dtype": "bf16"}).eval()
    o2.load_state_dict(o0.state_dict())
    x = torch.randn(2, 5, 2, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = o2(x), o0(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want)
