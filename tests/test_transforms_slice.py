"""--slice (SliceGPT): with the full width and any orthogonal rotation the outputs are the original's; with a
smaller width shapes, weights and the parameter count are consistent; unrecognised models are refused."""

from __future__ import annotations

import pytest
import torch
from _transforms_helpers import GPT2, LLAMA, ROOT, checked, ids, params_of, run, verify_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.backends.torch.calibrate import compute_rotation
from nnspec.backends.torch.transform_params import convert_params
from nnspec.compiler.analysis import Analysis
from nnspec.compiler.transforms import TransformError, apply, slice_model
from nnspec.compiler.transforms.slicegpt import plan
from nnspec.testing import inputs_for, specs

D = 32


def _random_rotation(seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.mark.parametrize("spec", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_full_width_reproduces_the_original(spec) -> None:
    model = checked(spec)
    params = params_of(model, perturb_norms=True)
    sliced, lines = apply(model, slice_width=D, rotation=_random_rotation())
    verify_model(sliced)
    x = ids(model)
    got = run(sliced, convert_params(model, params, slice_width=D, rotation=_random_rotation()), x)["logits"]
    torch.testing.assert_close(got, run(model, params, x)["logits"], atol=2e-5, rtol=1e-4)
    assert lines[0].startswith(f"slice {'n_embd' if spec is GPT2 else 'hidden_size'} 32->32: params")
    notes = {n.meta.get("transform", "").partition(":")[2].strip() for g in sliced.graphs() for n in g}
    assert {"rmsnorm, scale folded into readers", "read", "write", "embed"} <= notes


def _predicted_gpt2(w: int) -> int:
    """GPT-2 with the stream at width w: every [.., D] and [D, ..] matrix narrower, LayerNorms become
    RMSNorms (a weight, no bias), the tied head gets its own weight and a bias (LayerNorm's beta folded)."""
    d, v, p, layers = D, 96, 64, 4
    layer = (3 * d * w + 3 * d) + (w * d + w) + (4 * d * w + 4 * d) + (w * 4 * d + w) + 2 * w
    return v * w + p * w + layers * layer + w + (v * w + v)


def _predicted_llama(w: int) -> int:
    d, f, kv, v, layers = D, 64, 16, 96, 3
    layer = (d * w + 2 * kv * w + w * d) + (2 * f * w + w * f) + 2 * w
    return v * w + layers * layer + w + v * w


@pytest.mark.parametrize(("spec", "predicted"), [(GPT2, _predicted_gpt2), (LLAMA, _predicted_llama)],
                         ids=["gpt2", "llama"])
def test_smaller_width_shapes_weights_and_params(spec, predicted) -> None:
    model = checked(spec)
    params = params_of(model, perturb_norms=True)
    q = compute_rotation(model, params, [ids(model, 4, 16, seed=s) for s in range(2)])
    torch.testing.assert_close(q.T @ q, torch.eye(D, dtype=torch.float64))
    for width in (D, 24, 12):
        sliced = slice_model(model, width)
        verify_model(sliced)
        assert Analysis(sliced).total_params() == predicted(width)
        new = convert_params(model, params, slice_width=width, rotation=q)
        assert {p.path for p in Analysis(sliced).parameters()} == set(new)
        for p in Analysis(sliced).parameters():
            assert tuple(new[p.path].shape) == tuple(int(sliced.dims.concrete(s)) for s in p.type.sizes), p.path
        assert torch.isfinite(run(sliced, new, ids(model))["logits"]).all()


def test_pca_rotation_keeps_more_than_a_random_one() -> None:
    """Sliced along the principal directions, the logits stay closer to the original than along random ones."""
    model = checked(GPT2)
    params = params_of(model, perturb_norms=True)
    calib = [ids(model, 8, 32, seed=s) for s in range(3)]
    pca = compute_rotation(model, params, calib)
    x = ids(model, 4, 32, seed=9)
    want = run(model, params, x)["logits"]

    def error(q: torch.Tensor) -> float:
        got = run(slice_model(model, 20), convert_params(model, params, slice_width=20, rotation=q), x)["logits"]
        return ((got - want).norm() / want.norm()).item()

    assert error(pca) < 0.5 * min(error(_random_rotation(s)) for s in range(3))


@pytest.mark.parametrize(("spec", "message"), [
    ("bert", "--slice: dropout embeddings.dropout: a norm's output continues as the residual stream (a post-norm"),
    ("vit", "--slice: conv embeddings.projection: acts on the residual stream"),
])
def test_refuses_models_it_does_not_recognise(spec: str, message: str) -> None:
    model = nnspec.check(ROOT / "examples" / f"{spec}.yaml").model
    with pytest.raises(TransformError) as err:
        plan(model)
    assert str(err.value).startswith(message), str(err.value)


def test_refuses_a_bad_width_or_rotation() -> None:
    model = checked(GPT2)
    with pytest.raises(TransformError, match="--slice 40: the width must be between 1 and the stream's 32"):
        slice_model(model, 40)
    with pytest.raises(TransformError, match="orthogonal 32 x 32"):
        apply(model, slice_width=16, rotation=torch.ones(32, 32))


@st.composite
def prenorm_specs(draw: st.DrawFn) -> str:
    """Pre-norm residual towers SliceGPT applies to: LayerNorm or RMSNorm, biases or not, attention and/or an
    MLP (plain or gated) per layer, learned positions or not, a tied or separate head."""
    norm = draw(st.sampled_from(["layernorm", "rmsnorm"]))
    bias = draw(st.sampled_from(["true", "false"]))
    d = draw(st.sampled_from([4, 8, 12]))
    sublayers = draw(st.sampled_from([["attn", "mlp"], ["attn"], ["mlp"], ["mlp", "attn"]]))
    act = draw(st.sampled_from(["gelu", "relu", "silu"]))
    gated = draw(st.booleans())
    mlp = (f"u = linear(x, f, bias={bias}, name=up) * {act}(linear(x, f, bias={bias}, name=gate))" if gated else
           f"u = {act}(linear(x, f, bias={bias}, name=up))")
    layer = "\n".join(f"    x += {s}({norm}(x, name=n_{s}), name={s})" for s in sublayers)
    body = ["h = embedding(ids, vocab, d, name=wte)"]
    if draw(st.booleans()):
        body.append("h = h + embedding(arange(T), npos, d, name=wpe)")
    body += ["h = repeat(L, layer, h, name=layers)", f"h = {norm}(h, name=nf)",
             "logits[B, T, vocab] = h * wte.weight" if draw(st.booleans()) else
             f"logits = linear(h, vocab, bias={bias}, name=head)"]
    ffn, layers = draw(st.sampled_from([6, 16])), draw(st.integers(1, 3))
    return f"""nnspec: 1
name: prenorm
dims: {{vocab: 11, d: {d}, nh: 2, hd: d / nh, f: {ffn}, L: {layers}, npos: 16}}
inputs: {{ids: "int64[B, T]"}}
outputs: {{logits: "float32[B, T, vocab]"}}
blocks:
  attn(x): |
    q, k, v = split(linear(x, 3 * d, bias={bias}, name=qkv)[B, T, (3 nh hd)], over=3)
    s[B, nh, T, S] = q * k[B, S, nh, hd] / sqrt(hd)
    p = softmax(where(causal_mask(T, S), s, -inf), over=S)
    o[B, T, (nh hd)] = p * v[B, S, nh, hd]
    return linear(o, d, bias={bias}, name=out)
  mlp(x): |
    {mlp}
    return linear(u, d, bias={bias}, name=down)
  layer(x): |
{layer}
    return x
body: |
""" + "".join(f"  {line}\n" for line in body)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_slice_on_random_prenorm_specs(data: st.DataObject) -> None:
    """At full width with a random rotation every drawn pre-norm tower reproduces its outputs; sliced, its
    weights fit its shapes and it runs."""
    text = data.draw(prenorm_specs())
    model = nnspec.check(text).model
    full = int(model.dims.concrete(plan(model).axis.size))
    q, _ = torch.linalg.qr(torch.randn(full, full, dtype=torch.float64))
    params = params_of(model, perturb_norms=True)
    inputs = data.draw(inputs_for(model))
    want = run(model, params, inputs)
    for width in (full, data.draw(st.integers(1, full))):
        sliced = slice_model(model, width)
        verify_model(sliced)
        got = run(sliced, convert_params(model, params, slice_width=width, rotation=q), inputs)
        if width == full:
            torch.testing.assert_close(got["logits"], want["logits"], atol=1e-4, rtol=1e-3)
        assert got["logits"].shape == want["logits"].shape


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_slice_refuses_other_random_specs_with_a_reason(data: st.DataObject) -> None:
    """A drawn spec of any shape is either refused with a reason naming --slice, or sliced exactly at full width."""
    model = nnspec.check(data.draw(specs(max_width=16, max_layers=2))).model
    try:
        p = plan(model)
    except TransformError as err:
        assert str(err).startswith("--slice: ")
        return
    full = int(model.dims.concrete(p.axis.size))
    q, _ = torch.linalg.qr(torch.randn(full, full, dtype=torch.float64))
    params = params_of(model, perturb_norms=True)
    inputs = data.draw(inputs_for(model))
    got = run(slice_model(model, full), convert_params(model, params, slice_width=full, rotation=q), inputs)
    for name, want in run(model, params, inputs).items():
        torch.testing.assert_close(got[name], want, atol=1e-4, rtol=1e-3)
