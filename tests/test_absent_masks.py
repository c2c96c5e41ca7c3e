"""-O2 passes an attention mask that is all True without an optional input (`attention_mask`, default 1) to the
blocks as None, so SDPA runs unmasked or with `is_causal` (nnspec/backends/torch/absent_masks.py). Planted: the
GPT-2 / BERT shapes of the mask; near misses: a default that masks something, a mask also read outside attention,
a mask from a required input. Numbers against a plain-PyTorch softmax attention written here and against -O0."""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

HD, HEADS, D = 4, 2, 8


def spec(mask_input: str, keep: str, *, causal: bool, extra: str = "") -> str:
    """x[B, T, d] -> attention over T with the mask `keep` (from `mask_input`), causal or not, in a repeat of a
    block calling a block (the mask passes two block boundaries, as in BERT)."""
    tri = "where(causal_mask(T, S), s, -inf)" if causal else "s"
    return f"""\
nnspec: 1
name: att
dims: {{heads: {HEADS}, hd: {HD}, d: heads * hd}}
inputs:
  x: float32[B, T, d]
  {mask_input}
outputs:
  y: float32[B, T, d]
blocks:
  attend(x[B, T, d], visible): |
    q = linear(x, d, name=q)[B, T, (heads hd)]
    k = linear(x, d, name=k)[B, S, (heads hd)]
    v = linear(x, d, name=v)[B, S, (heads hd)]
    s[B, heads, T, S] = q * k / sqrt(hd)
    s = where(visible, {tri}, -inf)
    o[B, T, (heads hd)] = softmax(s, over=S) * v
    return linear(o, d, name=o){extra}
  layer(x, visible): |
    return x + attend(x, visible, name=attn)
body: |
  {keep}
  y = repeat(2, layer, x, visible, name=layers)
"""


GPT2_MASK = "mask: {type: 'int64[B, T]', default: 1}"
GPT2_KEEP = "keep = mask == 1\n  visible[B, T, S] = keep[B, S] or not keep"
BERT_KEEP = "keep = mask == 1\n  visible = keep[B, S]"


def reference(model: torch.nn.Module, x: torch.Tensor, visible: torch.Tensor, causal: bool) -> torch.Tensor:
    """The spec's arithmetic in plain PyTorch, on the built model's parameters."""
    b, t, _ = x.shape
    allowed = visible[:, None]
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()
    for layer in model.layers:
        a = layer.attn
        q, k, v = (lin(x).reshape(b, t, HEADS, HD).transpose(1, 2) for lin in (a.q, a.k, a.v))
        s = (q @ k.transpose(-1, -2) / math.sqrt(HD)).masked_fill(~allowed, float("-inf"))
        x = x + a.o((torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, t, D))
    return x


def build(text: str, opt: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return nnspec.build(text, opt=opt, B=2, T=5).eval()


def padding() -> torch.Tensor:
    mask = torch.ones(2, 5, dtype=torch.int64)
    mask[1, 3:] = 0
    return mask


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("keep", [GPT2_KEEP, BERT_KEEP], ids=["gpt2-style", "bert-style"])
def test_absent_mask_is_passed_as_none(keep: str, causal: bool) -> None:
    text = spec(GPT2_MASK, keep, causal=causal)
    source = compile_spec(text, opt=2, B=2, T=5).source
    assert "mask_given = mask is not None" in source and re.search(r"layer\(x, \w+ if mask_given else None\)", source)
    assert bool(re.search(r"is_causal=\w+ is None", source)) == causal
    assert_equal_to_reference_and_o0(text, keep, causal)


def assert_equal_to_reference_and_o0(text: str, keep: str, causal: bool) -> tuple[torch.nn.Module, torch.Tensor]:
    """-O2 of `text` equals the plain softmax attention written here and -O0, with the padding mask given and
    left out. Returns the -O2 model and its input, for further checks."""
    model, plain = build(text, 2), build(text, 0)
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for mask in (None, padding()):
            got = model(x) if mask is None else model(x, mask)
            m = torch.ones(2, 5, dtype=torch.int64) if mask is None else mask
            k = m == 1
            visible = k[:, None, :] | ~k[:, :, None] if keep == GPT2_KEEP else k[:, None, :].expand(2, 5, 5)
            want = reference(model, x, visible, causal)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
            torch.testing.assert_close(got, plain(x) if mask is None else plain(x, mask), rtol=1e-5, atol=1e-5,
                                       equal_nan=True)
    return model, x


@pytest.mark.parametrize(("mask_input", "keep", "extra", "causal", "why"), [
    ("mask: {type: 'int64[B, T]', default: 0}", GPT2_KEEP.replace("or not keep", "and keep[B, T]"), "", True,
     "the default hides keys"),
    # with the layer's own values: a read of the mask alone would be computed once before the layers (the
    # hoist-invariant pass), leaving the blocks an attention mask only again. Not causal: a causal attention's
    # mask is `visible & causal_mask` (causal-into-mask), a value of its own that the attention alone reads
    (GPT2_MASK, GPT2_KEEP, " * sum(where(visible, mean(x, over=d)[B, S], 0.0), over=S)", False,
     "the mask is read outside attention"),
    ("mask: int64[B, T]", GPT2_KEEP, "", True, "the mask input is required"),
])
def test_near_misses_keep_the_mask(mask_input: str, keep: str, extra: str, causal: bool, why: str) -> None:
    text = spec(mask_input, keep, causal=causal, extra=extra)
    source = compile_spec(text, opt=2, B=2, T=5).source
    assert "_given" not in source and "is not None else" not in source, why
    model, plain = build(text, 2), build(text, 0)
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(model(x, padding()), plain(x, padding()), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_triton_target_keeps_the_mask() -> None:
    """The Triton generator's attention template takes a tensor: no None there."""
    source = compile_spec(spec(GPT2_MASK, GPT2_KEEP, causal=True), target="triton", opt=2, B=2, T=5).source
    assert "_given" not in source
