"""Round trips of `nnspec import`: spec -> generated module -> import -> spec builds a model numerically equal to the
first (same parameter count, the first model's state dict loaded through the generated mapping). For the Llama
example, for hand-written specs that use what the importer lifts (chunked rotary, grouped-query scores over merged
axes, a causal mask broadcast over heads, a projection tied to `up.weight`, softplus, a one-output gate), and as a
property over random specs from `nnspec.testing`: equal, or refused cleanly (an `ImportFailure` naming the aten op
and module path, never another exception)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.testing import inputs_for, specs

ROOT = Path(__file__).resolve().parent.parent


def _config_and_free(text_or_path: str, **dims: int) -> tuple[dict[str, int], dict[str, int]]:
    """The checked model's dims as the import's config, and free-dim sizes equal to none of them (so that the
    importer sees those axes as free)."""
    model = nnspec.check(text_or_path, **dims).model
    config = {str(k): int(v) for k, v in model.dims.values.items()}
    free = sorted(name for name, sym in model.dims.free.items() if sym not in model.dims.values)
    picks = [n for n in range(3, 64) if n not in config.values()]
    return config, {f: picks[i] for i, f in enumerate(free)}


def _assert_equal_models(
    first: torch.nn.Module, text: str, inputs: dict[str, torch.Tensor], *, min_magnitude: float = 0.0
) -> None:
    """The imported spec `text`, loaded with `first`'s state dict (weights re-drawn by `_lively`) through its own
    mapping, computes `first`'s outputs (a tensor, a tuple, or a dict: the spec's outputs in the same order), each
    at least `min_magnitude` large somewhere."""
    assert nnspec.check(text).params == sum(p.numel() for p in first.parameters())
    _lively(first)
    second = nnspec.build(text).eval()
    nnspec.load_weights(second, first.state_dict())
    with torch.no_grad():
        want, got = _outputs(first(**inputs)), _outputs(second(**inputs))
    assert len(got) == len(want)
    for a, b in zip(want, got, strict=True):
        if min_magnitude:
            assert a.abs().max() > min_magnitude  # values large enough for the comparison to tell
        _assert_close_at_scale(b, a)


def _outputs(out: object) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _lively(model: torch.nn.Module) -> None:
    """Weights of unit-order sizes (std 0.2, norms' scales and biases too): at a spec's init (std 0.02, norms at
    1 and 0) a stack of linears can bring outputs near 1e-10, and a sum over a normalised axis is exactly 0 up to
    rounding, where any two models compare equal (or no two do, relative to the output's size)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.2)


def _assert_close_at_scale(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal relative to the output's own size (the largest finite magnitude; -inf where both mask alike)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    if not want.is_floating_point():
        torch.testing.assert_close(got, want)
        return
    assert torch.isfinite(want).any(), "an output with no finite value compares nothing"
    scale = want.abs().nan_to_num(0.0, 0.0, 0.0).max().clamp_min(1e-30)
    torch.testing.assert_close(got / scale, want / scale, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_round_trip_of_the_llama_example() -> None:
    """The generated rotary (`x.chunk(2)`, `cat(-x2, x1)`) is lifted back as `rotary`, and the grouped-query scores
    (`(T groups)` flattened into one torch dim for a matmul) as a contraction naming both axes."""
    dims = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=50)
    path = str(ROOT / "examples/llama.yaml")
    config, _ = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    imp = import_module(first, {"input_ids": torch.randint(0, 50, (3, 5))}, config, name="llama")
    assert "rotary(" in imp.text and "causal_mask(T, S)" in imp.text and "aten" not in imp.text
    assert "repeat(num_hidden_layers, layer, " in imp.text
    _assert_equal_models(first, imp.text, {"input_ids": torch.randint(0, 50, (2, 11))})


def test_round_trip_of_the_bert_example_with_a_padding_mask() -> None:
    """Token types defaulted to a constant table (`full`), a padding mask given as an input (aligned with the keys by
    position in torch, relabelled `[B, S]` for the language), read by every layer besides the carried stream."""
    dims = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    path = str(ROOT / "examples/bert.yaml")
    config, free = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    ids = torch.randint(0, 50, (free["B"], free["T"]))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0                                       # padding at the end of one sequence
    imp = import_module(first, {"input_ids": ids, "attention_mask": mask}, config, name="bert")
    assert "repeat(num_hidden_layers, layer, " in imp.text and "[B, S]" in imp.text
    mask2 = torch.ones(2, 7, dtype=torch.int64)
    mask2[1, :3] = 0
    _assert_equal_models(first, imp.text, {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": mask2})


@pytest.mark.slow
def test_round_trip_of_the_vit_example() -> None:
    """The patch convolution's grid axes (`into=(gh, gw)`) are flattened into the sequence after it."""
    dims = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, image_size=16,
                patch_size=8)
    path = str(ROOT / "examples/vit.yaml")
    config, free = _config_and_free(path, **dims)
    torch.manual_seed(0)
    first = nnspec.build(path, **dims).eval()
    imp = import_module(first, {"pixel_values": torch.randn(free["B"], 3, 16, 16)}, config, name="vit")
    assert "conv(" in imp.text and "concat(" in imp.text
    _assert_equal_models(first, imp.text, {"pixel_values": torch.randn(2, 3, 16, 16)})


_HAND = """\
nnspec: 1
name: hand
dims:
  hidden_size: 16
  num_heads: 2
  head_dim: hidden_size / num_heads
  intermediate_size: 24
  num_layers: 2
inputs:
  x: float32[B, T, hidden_size]
outputs:
  y: float32[B, T, hidden_size]
blocks:
  attn(x): |
    qkv = linear(x, 3 * hidden_size, name=qkv)[B, T, (3 num_heads head_dim)]
    q, k, v = split(qkv, over=3)
    q = rotary(q, pos=T, dim=head_dim, base=10000.0)
    s[B, num_heads, T, S] = q * k[B, S, num_heads, head_dim] / sqrt(head_dim)
    p = softmax(where(causal_mask(T, S), s, -inf), over=S)
    o[B, T, num_heads, head_dim] = p * v[B, S, num_heads, head_dim]
    return linear(o[B, T, (num_heads head_dim)], hidden_size, name=out)
  mlp(x): |
    h = softplus(linear(x, intermediate_size, name=up))
    g = sigmoid(sum(linear(x, 1, bias=false, name=gate), over=1))
    o[B, T, hidden_size] = g * h * up.weight
    return o
  layer(x): |
    x += attn(layernorm(x, name=ln1), name=attn)
    return x + mlp(rmsnorm(x, name=ln2), name=mlp)
body: |
  y = repeat(num_layers, layer, x, name=h)
"""


def test_round_trip_of_a_spec_using_what_the_importer_lifts() -> None:
    config, free = _config_and_free(_HAND)
    torch.manual_seed(1)
    first = nnspec.build(_HAND).eval()
    x = torch.randn(free["B"], free["T"], 16)
    imp = import_module(first, {"x": x}, config, name="hand")
    text = imp.text
    for fn in ("rotary(", "softplus(", "causal_mask(", "* up.weight", "sum(linear(", "repeat(num_layers, layer, "):
        assert fn in text, fn
    _assert_equal_models(first, text, {"x": torch.randn(2, 7, 16)})


_ACROSS_BLOCKS = """\
nnspec: 1
name: across
dims:
  d_model: 8
  n_head: 2
  d_head: d_model / n_head
  n_layers: 2
  n_vocab: 40
inputs:
  ids: int64[B, T]
outputs:
  pooled: float32[B, d_model]
blocks:
  attn(x): |
    q = linear(x, d_model, name=q_proj)[B, T, (n_head d_head)]
    k = linear(x, d_model, name=k_proj)[B, T, (n_head d_head)]
    v = linear(x, d_model, name=v_proj)[B, T, (n_head d_head)]
    s[B, S, n_head, T] = k[B, S, n_head, d_head] * q / sqrt(d_head)
    p = softmax(where(causal_mask(T, S), s, -inf), over=S)
    o[B, T, n_head, d_head] = p * v[B, S, n_head, d_head]
    return linear(o[B, T, (n_head d_head)], d_model, name=out)
  mix(x): |
    z = mean(linear(x, d_model, name=fc), over=T) + x
    return z[B, T, d_model]
body: |
  h = embedding(ids, n_vocab, d_model, name=wte)
  h = attn(h, name=attn)
  h = repeat(n_layers, mix, h, name=layers)
  z = where(not h <= 0 and h < 100 or h < -100, h, 0.1 * h)
  pooled = max(z, over=T)
"""


def test_values_leaving_a_block_are_named_as_its_caller_names_them() -> None:
    """Scores written keys first (an einsum `k * q`, so the importer's `S` lands on the queries and survives to the
    block's result: outside it is `T`, as the language renames a block's made-up axes; the causal mask over
    `[S, ..., T]` is `causal_mask(T, S)` transposed); a layer whose language order differs from torch's (`mean(x,
    over=T) + x` is `[B, d, T]`) returns `h[B, T, d]` so that `repeat` gets its input's type back; `not`, `and`,
    `or` of masks; an integer input not called `input_ids` still has a sequence axis `T`."""
    config, free = _config_and_free(_ACROSS_BLOCKS)
    torch.manual_seed(0)
    first = nnspec.build(_ACROSS_BLOCKS).eval()
    imp = import_module(first, {"ids": torch.randint(0, 40, (free["B"], free["T"]))}, config, name="across")
    text = imp.text
    for piece in ("ids: int64[B, T]", "attn(x): |", "over=T)", "causal_mask(", "h[B, T, d_model] = ", "(not (",
                  " and ", " or ", "repeat(n_layers, layer, "):
        assert piece in text, piece
    assert "over=S)\n" not in text.split("body: |")[1]          # the body never reads the block's own `S`
    _assert_equal_models(first, text, {"ids": torch.randint(0, 40, (2, 7))})


_GATED = """\
nnspec: 1
name: gated
dims:
  d_model: 8
inputs:
  features: float32[B, T, d_model]
outputs:
  y: float32[B, T, d_model]
blocks:
  gate(x, g): |
    return x * sigmoid(linear(g, d_model, name=gate_proj))
  layer(x): |
    return repeat(3, gate, x, x, name=layers{shared})
body: |
  h = linear(features, d_model, name=in_proj)
  y = layer(h, name=layer)
"""


@pytest.mark.parametrize("shared", [True, False])
def test_a_repeat_whose_first_call_passes_one_value_twice(shared: bool) -> None:
    """`repeat(3, gate, x, x)` calls `gate(x, x)` first: one value for two parameters, so the first call is compared
    value by value with the second (`alike.py`) and the block written from the second, `gate(x, x2)`."""
    text = _GATED.replace("{shared}", ", shared=true" if shared else "")
    config, free = _config_and_free(text)
    torch.manual_seed(0)
    first = nnspec.build(text).eval()
    imp = import_module(first, {"features": torch.randn(free["B"], free["T"], 8)}, config, name="gated")
    assert "(x, x2): |" in imp.text and imp.text.count("name=gate_proj") == 1
    assert ("name=layers, shared=true)" if shared else "name=layers)") in imp.text
    _assert_equal_models(first, imp.text, {"features": torch.randn(2, 7, 8)})


class _Residual(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm, self.fc = torch.nn.LayerNorm(d), torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc(self.norm(x))


class _Gated(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x))


class _Lists(torch.nn.Module):
    """A module list whose layers differ (residual, gated, residual), and one whose alike layers do not chain
    (a tanh between them)."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Residual(d), _Gated(d), _Residual(d)])
        self.pair = torch.nn.ModuleList([_Residual(d), _Residual(d)])
        self.head = torch.nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(self.pair[1](torch.tanh(self.pair[0](x))))


def test_module_list_layers_that_differ_are_separate_calls() -> None:
    torch.manual_seed(0)
    first = _Lists().eval()
    imp = import_module(first, {"x": torch.randn(3, 6, 8)}, {"hidden_size": 8}, name="lists")
    text = imp.text
    for piece in ("name=layers_0)", "name=layers_1)", "name=layers_2)", "name=pair_0)", "name=pair_1)",
                  "layers_1.fc.weight: layers.1.fc.weight", "pair_0.norm.bias: pair.0.norm.bias"):
        assert piece in text, piece
    assert "repeat(" not in text
    _assert_equal_models(first, text, {"x": torch.randn(2, 7, 8)})


class _Shared(torch.nn.Module):
    """One block applied three times with one set of weights (`for _ in range(3): h = self.block(h)`)."""

    def __init__(self, d: int = 8, again: bool = False) -> None:
        super().__init__()
        self.inp, self.block, self.head = torch.nn.Linear(d, d), _Residual(d), torch.nn.Linear(d, 5)
        self.again = again

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for _ in range(3):
            h = self.block(h)
            h = torch.tanh(h) if self.again else h     # calls that do not chain: no `repeat` writes them
        return self.head(h)


def test_a_block_called_repeatedly_with_shared_weights_is_one_block() -> None:
    """The hand-written shared-weight module: its calls `block`, `block@1`, `block@2` are one block and one
    `repeat(..., shared=true)`, never one block holding all calls; calls with work between them are refused."""
    torch.manual_seed(0)
    first = _Shared().eval()
    imp = import_module(first, {"x": torch.randn(3, 6, 8)}, {"hidden_size": 8}, name="shared")
    assert "repeat(3, block, inp, name=block, shared=true)" in imp.text
    assert imp.text.count("name=fc") == 1 and imp.text.count("layernorm(") == 1
    _assert_equal_models(first, imp.text, {"x": torch.randn(2, 7, 8)})
    with pytest.raises(ImportFailure, match=r"^repeat in module 'block': the calls of block block differ"):
        import_module(_Shared(again=True).eval(), {"x": torch.randn(3, 6, 8)}, {"hidden_size": 8})


_NESTED_SHARED = """\
nnspec: 1
name: nested
dims:
  d_model: 8
inputs:
  features: float32[B, T, d_model]
outputs:
  y: float32[B, T, d_model]
blocks:
  inner(x): |
    return x + tanh(linear(x, d_model, name=fc))
  outer(x): |
    x = repeat(2, inner, x, name=inner, shared=true)
    return layernorm(x, name=ln)
body: |
  h = linear(features, d_model, name=in_proj)
  h = repeat(2, outer, h, name=outer, shared=true)
  y = linear(h, d_model, name=out_proj)
"""


def test_a_shared_repeat_inside_a_shared_repeat() -> None:
    """The inner block's calls in the outer block's second call are export's `inner@2`, `inner@3`: written as the
    same `repeat(2, inner, x, name=inner, shared=true)` as in the first call, so both outer calls are one block."""
    config, free = _config_and_free(_NESTED_SHARED)
    torch.manual_seed(0)
    first = nnspec.build(_NESTED_SHARED).eval()
    imp = import_module(first, {"features": torch.randn(free["B"], free["T"], 8)}, config, name="nested")
    assert imp.text.count("repeat(2, inner, x, name=inner, shared=true)") == 1 and "@" not in imp.text
    assert "repeat(2, outer, " in imp.text and imp.text.count("name=fc") == 1
    _assert_equal_models(first, imp.text, {"features": torch.randn(2, 7, 8)})


_DEAD = """\
nnspec: 1
name: dead
dims:
  d_model: 8
  n_layers: 2
  vocab: 11
inputs:
  x: float32[B, T, d_model]
outputs:
  y: float32[B, T, d_model]
blocks:
  layer(x): |
    unused = linear(x, d_model, name=side)
    return x + tanh(linear(x, d_model, name=fc))
  extra(x): |
    return tanh(linear(x, d_model, bias=false, name=fc))
body: |
  spare = embedding(arange(T), vocab, d_model, name=spare)
  h = repeat(n_layers, layer, x, name=layers)
  u = repeat(2, extra, h, name=extra)
  y = layernorm(h, name=ln)
"""


def test_parameters_no_output_reads_are_kept() -> None:
    """Export drops what reads them but keeps the parameters: each is a `param` nothing reads, in its own block
    where that block is written (`side` inside the repeated layer, so the layers still form one `repeat`), else in
    the body with its path spelled out (`extra_0_fc_weight`, its checkpoint key literal), so the counts agree and
    the state dict loads."""
    config, free = _config_and_free(_DEAD)
    torch.manual_seed(0)
    first = nnspec.build(_DEAD).eval()
    imp = import_module(first, {"x": torch.randn(free["B"], free["T"], 8)}, config, name="dead")
    text = imp.text
    for piece in ("repeat(n_layers, layer, x, name=layers)", "param(d_model, d_model, name=side_weight)",
                  "param(vocab, d_model, name=spare_weight)", "layers.{i}.side_bias: layers.{i}.side.bias",
                  "extra_1_fc_weight: extra.1.fc.weight"):
        assert piece in text, piece
    assert text.count("name=side_weight") == 1
    _assert_equal_models(first, text, {"x": torch.randn(2, 7, 8)})


_DOUBLE = """\
nnspec: 1
name: double
dims:
  n_heads: 1
  d_head: 4
  n_embd: n_heads * d_head
inputs:
  features: float32[B, T, n_embd]
outputs:
  pooled: float32[B, n_embd]
blocks:
  mlp(x, width=d_head): |
    h = gelu_tanh(linear(x, width, name=up))
    o[B, T, n_embd] = h * up.weight
    return o
body: |
  h = linear(features, n_embd, bias=false, name=in_proj)
  h += mlp(rmsnorm(h, name=norm), width=8, name=mlp)
  pooled = max(h, over=T)
"""


def test_a_width_no_config_key_holds_is_written_from_a_dim() -> None:
    """A width of 8 beside `n_embd = 4` is `2 * n_embd`; the projection tied to `up.weight` sums it whole (its
    pieces `(2 n_embd)` would repeat the weight's other axis)."""
    config, free = _config_and_free(_DOUBLE)
    torch.manual_seed(0)
    first = nnspec.build(_DOUBLE).eval()
    imp = import_module(first, {"features": torch.randn(free["B"], free["T"], 4)}, config, name="double")
    assert ", 2 * n_embd, name=up)" in imp.text and "* up.weight" in imp.text
    _assert_equal_models(first, imp.text, {"features": torch.randn(2, 7, 4)})


_VOCAB_AS_WIDE = """\
nnspec: 1
name: coincide
dims:
  vocab: 16
  d_model: 16
  n_heads: 4
  d_head: d_model / n_heads
  n_layers: 2
inputs:
  ids: int64[B, T]
outputs:
  logits: float32[B, T, vocab]
blocks:
  attn(x): |
    q = linear(x, d_model, name=q_proj)[B, T, (n_heads d_head)]
    k = linear(x, d_model, name=k_proj)[B, T, (n_heads d_head)]
    v = linear(x, d_model, name=v_proj)[B, T, (n_heads d_head)]
    s[B, n_heads, T, S] = q * k[B, S, n_heads, d_head] / sqrt(d_head)
    p = softmax(where(causal_mask(T, S), s, -inf), over=S)
    o[B, T, n_heads, d_head] = p * v[B, S, n_heads, d_head]
    return linear(o[B, T, (n_heads d_head)], d_model, name=out)
  layer(x): |
    return x + attn(layernorm(x, name=ln), name=attn)
body: |
  h = embedding(ids, vocab, d_model, name=wte)
  h = repeat(n_layers, layer, h, name=layers)
  logits[B, T, vocab] = layernorm(h, name=ln_f) * wte.weight
"""

_ONE_HEAD = """\
nnspec: 1
name: onehead
dims:
  max_len: 8
  d_head: 8
  n_heads: 1
  d_model: n_heads * d_head
  n_layers: 2
inputs:
  features: float32[B, T, d_model]
outputs:
  y: float32[B, T, d_model]
blocks:
  attn(x): |
    q = linear(x, d_model, name=q_proj)[B, T, (n_heads d_head)]
    k = linear(x, d_model, name=k_proj)[B, T, (n_heads d_head)]
    v = linear(x, d_model, name=v_proj)[B, T, (n_heads d_head)]
    s[B, n_heads, T, S] = q * k[B, S, n_heads, d_head] / sqrt(d_head)
    o[B, T, n_heads, d_head] = softmax(s, over=S) * v[B, S, n_heads, d_head]
    z = softmax(o, over=n_heads) * o
    return linear(z[B, T, (n_heads d_head)], d_model, name=out)
  layer(x): |
    return x + attn(rmsnorm(x, name=ln), name=attn)
body: |
  h = features + embedding(arange(T), max_len, d_model, name=wpe)
  y = repeat(n_layers, layer, h, name=layers)
"""

_SQUARE_MLP = """\
nnspec: 1
name: square
dims:
  intermediate_size: 6
  hidden_size: 6
  n_vocab: 10
inputs:
  ids: int64[B, T]
outputs:
  stream: float32[B, T, hidden_size]
blocks:
  mlp(x, width=intermediate_size): |
    h = gelu_tanh(linear(x, width, bias=false, name=up))
    o[B, T, hidden_size] = h * up.weight
    return o
body: |
  h = embedding(ids, n_vocab, hidden_size, name=wte)
  stream = repeat(2, mlp, h, name=layers, shared=true)
"""


@pytest.mark.parametrize("text, width, pieces", [
    (_VOCAB_AS_WIDE, None, ("embedding(ids, vocab, d_model, name=wte)", "[B, T, vocab] = ", "(n_heads d_head)")),
    (_ONE_HEAD, 8, ("features: float32[B, T, d_model]", "embedding(arange(T), max_len, d_model, name=wpe)", "exp(")),
    (_SQUARE_MLP, None, ("* up.weight", "shared=true")),
], ids=["vocab-as-wide-as-width", "one-head-as-wide-as-width", "square-tied-mlp"])
def test_sizes_that_coincide_are_named_apart(text: str, width: int | None, pieces: tuple[str, ...]) -> None:
    """Where configured sizes coincide (a vocabulary as large as the width, heads as many as a head's size; one
    head as wide as the model and the position count; an MLP as wide as the model with its projection tied to
    `up.weight`), the names come from where an axis comes from: an embedding's count from the key saying what it
    counts, the stream from the width before a head's size, a square weight's input axis `d_in` as the language
    names it; a softmax over one head (a size-1 axis) is 1 where finite, `exp(x - x)`."""
    config, free = _config_and_free(text)

    def inputs(b: int, t: int) -> dict[str, torch.Tensor]:
        return {"features": torch.randn(b, t, width)} if width else {"ids": torch.randint(0, 10, (b, t))}

    torch.manual_seed(0)
    first = nnspec.build(text).eval()
    imp = import_module(first, inputs(free["B"], free["T"]), config, name="coincide")
    for piece in pieces:
        assert piece in imp.text, piece
    _assert_equal_models(first, imp.text, inputs(2, 7))


def _round_trip_or_refusal(text: str, data: st.DataObject) -> str:
    config, free = _config_and_free(text)
    inputs = data.draw(inputs_for(nnspec.check(text), **free), label="inputs")
    torch.manual_seed(0)
    first = nnspec.build(text).eval()
    try:
        imp = import_module(first, inputs, config, name="drawn")
    except ImportFailure as exc:            # a clean refusal names the aten op (or parameter) and the module
        assert exc.op and exc.module is not None and str(exc).startswith(f"{exc.op} in module "), str(exc)
        return "refused"
    _assert_equal_models(first, imp.text, inputs)
    return "equal"


@settings(max_examples=2, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_specs_round_trip_or_are_refused_cleanly(data: st.DataObject) -> None:
    _round_trip_or_refusal(data.draw(specs(max_layers=2, max_blocks=2, max_width=16), label="spec"), data)


@pytest.mark.slow
def test_most_random_specs_round_trip() -> None:
    """Of 30 random specs (a fixed, derandomised draw) at least 95% import to an equal model (all 30 did when this
    was written; seeded draws of 100, seeds 1-8, gave 99-100 each), none fails other than by a clean refusal (what
    is still refused: a sequence split into windows whose two window axes get one name, a layer whose split
    sequence leaves it split)."""
    outcomes: list[str] = []

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        outcomes.append(_round_trip_or_refusal(data.draw(specs(max_layers=2, max_blocks=2, max_width=16)), data))

    run()
    assert outcomes.count("equal") >= 0.95 * len(outcomes), outcomes
