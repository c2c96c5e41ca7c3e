"""Round trips of more examples through `nnspec import`: the example spec at small dims -> generated module ->
import -> spec builds a model numerically equal to the first (same parameter count, the first model's state dict
loaded through the new mapping, equal outputs at other batch and sequence sizes than the traced ones).

The expected values are the first model's own outputs (the generated module, itself tested against Hugging Face
elsewhere); what is under test is that the importer's spec computes the same function with the same weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.importer.helpers import helpers_as_calls

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_round_trip import _assert_equal_models, _config_and_free  # noqa: E402


def _round_trip(example: str, dims: dict[str, int], make_inputs, *, expect: tuple[str, ...] = ()) -> str:
    """Import the example's generated module at free sizes equal to no dim, check the spec has `expect`, and that
    it is the same model at other sizes. Returns the imported spec."""
    path = str(ROOT / "examples" / example)
    config, free = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    imp = import_module(first, make_inputs(free.get("B", 3), free.get("T", 5)), config, name="imported")
    for piece in expect:
        assert piece in imp.text, piece
    assert "aten" not in imp.text
    torch.manual_seed(1)
    _assert_equal_models(first, imp.text, make_inputs(2, 7))
    return imp.text


def _tokens(vocab: int):
    return lambda b, t: {"input_ids": torch.randint(0, vocab, (b, t))}


# groups (heads per key/value head) = 3 and experts per token = 2 differ, so each size names one axis
_MIXTRAL = dict(num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                intermediate_size=24, vocab_size=50, num_local_experts=4, num_experts_per_tok=2,
                max_position_embeddings=64)


def test_round_trip_of_the_mixtral_example() -> None:
    """The generated sparse dispatch (`moe_swiglu`, host-side run lengths export cannot capture) is captured as one
    call and lifted back to `moe(...)`, top-k renormalised as Mixtral's is."""
    text = _round_trip("mixtral.yaml", _MIXTRAL, _tokens(50),
                       expect=("moe(", "num_local_experts, intermediate_size, num_experts_per_tok, name=mlp)",
                               "repeat(num_hidden_layers, layer, "))
    assert "norm_topk_prob=false" not in text


def test_round_trip_of_the_qwen2_moe_example() -> None:
    """Routed experts without renormalisation beside a shared expert and its one-output sigmoid gate."""
    dims = dict(num_hidden_layers=2, hidden_size=48, num_attention_heads=6, num_key_value_heads=2,
                intermediate_size=40, moe_intermediate_size=24, shared_expert_intermediate_size=36, num_experts=4,
                num_experts_per_tok=2, vocab_size=50)
    _round_trip("qwen2_moe.yaml", dims, _tokens(50),
                expect=("moe(x, num_experts, moe_intermediate_size, num_experts_per_tok, norm_topk_prob=false",
                        "shared_expert(", "repeat(num_hidden_layers, layer, "))


def _relu_moe_swiglu(x, router, gate_proj, up_proj, down_proj, k, norm_topk_prob):
    """Looks like nnspec's helper (same name and signature) but its experts use relu, not silu."""
    probs = F.softmax(F.linear(x, router).float(), dim=-1)
    top, index = probs.topk(k, dim=-1)
    if norm_topk_prob:
        top = top / top.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for j in range(router.shape[0]):
        w = (top * (index == j)).sum(-1, keepdim=True)
        out = out + w * F.linear(F.relu(F.linear(x, gate_proj[j])) * F.linear(x, up_proj[j]), down_proj[j])
    return out


_relu_moe_swiglu.__name__ = "moe_swiglu"
moe_swiglu = _relu_moe_swiglu        # found by name in this module's namespace, as in a generated file


class _LookAlike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.router = nn.Parameter(torch.randn(4, 8))
        self.mlp.gate_proj = nn.Parameter(torch.randn(4, 6, 8))
        self.mlp.up_proj = nn.Parameter(torch.randn(4, 6, 8))
        self.mlp.down_proj = nn.Parameter(torch.randn(4, 8, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mlp
        return moe_swiglu(x, m.router, m.gate_proj, m.up_proj, m.down_proj, k=2, norm_topk_prob=True)


def test_a_look_alike_moe_helper_is_refused_and_restored() -> None:
    """The helper is captured by name and signature, so its value decides: relu experts are not `moe`'s."""
    model = _LookAlike().eval()
    with pytest.raises(ImportFailure, match=r"^nnspec_import\.moe_swiglu\.default in module '.*': .*differs"):
        import_module(model, {"x": torch.randn(3, 5, 8)}, {"hidden_size": 8}, name="lookalike")
    assert globals()["moe_swiglu"] is _relu_moe_swiglu          # the original is back after capture
    with helpers_as_calls(model) as replaced:
        assert replaced == 1 and globals()["moe_swiglu"] is not _relu_moe_swiglu
    assert globals()["moe_swiglu"] is _relu_moe_swiglu


def test_round_trip_of_the_small_moe_example() -> None:
    """A dense top-k router: `topk` (a new axis for the k chosen), the softmax weights `scatter`ed into a zero
    table over the experts, and an expert weight read by a functional linear (`F.linear(x, w1.flatten(0, 1))`)
    written as the contraction `h[B, T, n_experts, d_ff] = x * w1`."""
    text = _round_trip("small/moe.yaml", {}, lambda b, t: {"x": torch.randn(b, t, 16)},
                       expect=("topk(linear(x, n_experts, bias=false, name=router), ", "scatter(zeros(B, T, n_experts)",
                               "= x * w1"))
    assert "over=n_experts, into=K)" in text


class _Moved(nn.Module):
    """Plain PyTorch: features moved to the front for a per-channel scale, then back (`movedim` both ways)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.proj(x)
        h = p.movedim(-1, 0)                               # [6, B, T]
        h = torch.sigmoid(h) * h
        return h.movedim(0, -1) + p


def test_movedim_is_a_layout_change() -> None:
    torch.manual_seed(0)
    model = _Moved().eval()
    imp = import_module(model, {"x": torch.randn(3, 5, 8)}, {"hidden": 8, "width": 6}, name="moved")
    assert "movedim" not in imp.text and "aten" not in imp.text
    _assert_equal_models(model, imp.text, {"x": torch.randn(2, 7, 8)})


class _TopkNearMiss(nn.Module):
    """The k smallest: not the language's `topk`, so refused with the op and module."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, _ = torch.topk(self.router(x), 2, dim=-1, largest=False)
        return top


def test_the_k_smallest_are_refused() -> None:
    with pytest.raises(ImportFailure, match=r"^aten\.topk\.default in module '.*': only the k largest"):
        import_module(_TopkNearMiss().eval(), {"x": torch.randn(3, 5, 8)}, {"hidden": 8, "experts": 4})


class _Twice(nn.Module):
    """Plain PyTorch: one Linear applied to two inputs (its weights shared), and a LayerNorm once."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(x)) + self.proj(self.norm(x))


def test_a_linear_called_twice_reads_its_weights_by_name() -> None:
    torch.manual_seed(0)
    model = _Twice().eval()
    imp = import_module(model, {"x": torch.randn(3, 5, 8)}, {"hidden": 8, "width": 6}, name="twice")
    assert imp.text.count("name=proj") == 1 and "proj.weight + proj.bias" in imp.text
    _assert_equal_models(model, imp.text, {"x": torch.randn(2, 7, 8)})


class _NormTwice(_Twice):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.norm(x)))


def test_other_modules_called_twice_are_refused() -> None:
    with pytest.raises(ImportFailure, match=r"in module 'norm': module LayerNorm called more than once"):
        import_module(_NormTwice().eval(), {"x": torch.randn(3, 5, 8)}, {"hidden": 8, "width": 6})


def test_round_trip_of_the_recursive_example() -> None:
    """small/recursive applies one layer six times with the same weights: the later calls of the block are the
    same block, written `repeat(6, shared, x, name=shared, shared=true)` with one set of parameters."""
    text = _round_trip("small/recursive.yaml", {}, lambda b, t: {"x": torch.randn(b, t, 32)},
                       expect=("name=shared, shared=true)",))
    assert text.count("name=qkv") == 1 and "shared@" not in text


class _TiedSquare(nn.Module):
    """A head tied to an embedding whose vocabulary size equals its width: named by size, both axes would get one
    name."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(12, 12)
        self.head = nn.Linear(12, 12, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.wte(ids)))


def test_a_tied_head_with_equal_vocabulary_and_width_round_trips() -> None:
    """The head's output axis is named after the embedding's count (`vocab_size`, the config key saying what it
    counts), not after its size, so `h[B, T, vocab_size] = h * wte.weight` sums the features, not the tokens (the
    weight is not symmetric, so a transposed reading would differ). Without a key naming the vocabulary apart from
    the width the two axes would get one name: refused."""
    torch.manual_seed(0)
    first = _TiedSquare().eval()
    imp = import_module(first, {"ids": torch.randint(0, 12, (3, 5))}, {"hidden_size": 12, "vocab_size": 12})
    assert "embedding(ids, vocab_size, hidden_size" in imp.text and "vocab_size] = " in imp.text
    _assert_equal_models(first, imp.text, {"ids": torch.randint(0, 12, (2, 7))})
    with pytest.raises(ImportFailure, match=r"in module 'head': a tied head whose vocabulary and features are both"):
        import_module(_TiedSquare().eval(), {"ids": torch.randint(0, 12, (3, 5))}, {"hidden_size": 12})


_SCAN = """\
nnspec: 1
name: recurrence
dims:
  hidden_size: 6
  state_size: 4
inputs:
  x: float32[B, T, hidden_size]
outputs:
  y: float32[B, T, state_size]
blocks:
  step(s, x): |
    s = 0.9 * s + tanh(linear(x, state_size, name=inp))
    return s, sigmoid(s)
body: |
  final, o = scan(step, zeros(B, state_size), x, over=T)
  y = linear(o, state_size, name=out)
"""


def test_round_trip_of_a_scan() -> None:
    """The generated loop (one call of the step block per position, `x.select(1, i)`, `torch.stack`) is unrolled
    by export into calls `step, step@1, ...`; they are lifted back to one `scan` over the step block."""
    config, free = _config_and_free(_SCAN)
    torch.manual_seed(0)
    first = nnspec.build(_SCAN).eval()
    imp = import_module(first, {"x": torch.randn(free["B"], free["T"], 6)}, config, name="recurrence")
    assert "scan(step, " in imp.text and ", x, over=T, name=step)" in imp.text and imp.text.count("name=inp") == 1
    _assert_equal_models(first, imp.text, {"x": torch.randn(2, 7, 6)})


# small/retention (a state with two axes of one size) and Mamba round-trip in tests/test_import_state_space.py
