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


def _assert_equal_models(first: torch.nn.Module, text: str, inputs: dict[str, torch.Tensor]) -> None:
    assert nnspec.check(text).params == sum(p.numel() for p in first.parameters())
    second = nnspec.build(text).eval()
    nnspec.load_weights(second, first.state_dict())
    with torch.no_grad():
        want, got = first(**inputs), second(**inputs)
    if isinstance(want, dict):
        assert len(got) == len(want)
        for (_, a), (_, b) in zip(want.items(), got.items(), strict=True):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


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
    """Of 30 random specs (a fixed, derandomised draw) at least half import to an equal model, none fails other
    than by a clean refusal."""
    outcomes: list[str] = []

    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        outcomes.append(_round_trip_or_refusal(data.draw(specs(max_layers=2, max_blocks=2, max_width=16)), data))

    run()
    assert outcomes.count("equal") >= len(outcomes) // 2, outcomes
