"""Attention with more than two batch axes (Swin's windows `[B, nh, nw, heads]`) reaches SDPA's fused CPU kernel:
the leading batch axes are flattened into one (a view) and a bias or mask over some of them is expanded to
match. Values against a plain-PyTorch softmax attention written here; near miss: two batch axes stay as they were."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

HD = 4
SIZES = {"B": 2, "a": 3, "c": 2, "n": 2, "N": 5}


def spec(extra_inputs: str, scores_extra: str, axes: str = "B, a, c") -> str:
    return f"""\
nnspec: 1
name: att
dims: {{hd: {HD}}}
inputs:
  q: float32[{axes}, N, n, hd]
  k: float32[{axes}, M, n, hd]
  v: float32[{axes}, M, n, hd]
{extra_inputs}
outputs:
  o: float32[{axes}, N, n, hd]
body: |
  s[{axes}, n, N, M] = q * k / sqrt(hd){scores_extra}
  o[{axes}, N, n, hd] = softmax(s, over=M) * v
"""


def tensor(shape: list[int], g: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, add: torch.Tensor | float) -> torch.Tensor:
    """q [..., N, n, hd] -> scores [..., n, N, M] + add -> softmax over M -> [..., N, n, hd]."""
    s = torch.einsum("...xnd,...ynd->...nxy", q, k) / math.sqrt(HD) + add
    return torch.einsum("...nxy,...ynd->...xnd", torch.softmax(s, dim=-1), v)


def run(text: str, names: list[str], extra: dict[str, list[int]]) -> tuple[torch.Tensor, torch.Tensor, dict, str]:
    g = torch.Generator().manual_seed(0)
    lead = [SIZES[n] for n in names]
    args = {"q": tensor([*lead, 5, 2, HD], g), "k": tensor([*lead, 5, 2, HD], g), "v": tensor([*lead, 5, 2, HD], g)}
    args.update({name: tensor(shape, g) for name, shape in extra.items()})
    with torch.inference_mode():
        got = nnspec.build(text, opt=2).eval()(**args)
        plain = nnspec.build(text, opt=0).eval()(**args)
    return got, plain, args, compile_spec(text, opt=2).source


def test_windows_with_a_per_head_bias_fold_into_4d_sdpa() -> None:
    """Swin's unshifted windows: a bias [n, N, M] that broadcasts over the folded axes."""
    got, plain, a, source = run(spec("  bias: float32[n, N, M]", " + bias"), ["B", "a", "c"],
                                {"bias": [2, 5, 5]})
    torch.testing.assert_close(got, reference(a["q"], a["k"], a["v"], a["bias"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    assert ".flatten(0, 2)" in source and ".unflatten(0, (" in source and ".expand(" not in source


def test_windows_with_a_per_window_bias_expand_it() -> None:
    """Swin's shifted windows: a bias [a, c, n, N, M] (per window, not per batch row) is expanded over B."""
    got, plain, a, source = run(spec("  bias: float32[a, c, n, N, M]", " + bias"), ["B", "a", "c"],
                                {"bias": [3, 2, 2, 5, 5]})
    torch.testing.assert_close(got, reference(a["q"], a["k"], a["v"], a["bias"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    assert ".expand(" in source and "attn_mask=mask.flatten(0, 2)" in source


def test_windows_with_a_boolean_mask() -> None:
    text = spec("  keep: bool[B, a, M]", "").replace("softmax(s, over=M)", "softmax(where(keep, s, -inf), over=M)")
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(2, 3, 5, generator=g) > 0.3
    keep[..., 0] = True    # every query sees a key (an empty row is NaN in both)
    args = {n: tensor([2, 3, 2, 5, 2, HD], g) for n in "qkv"}
    with torch.inference_mode():
        got = nnspec.build(text, opt=2).eval()(**args, keep=keep)
    add = torch.zeros(2, 3, 1, 1, 1, 5).masked_fill(~keep[:, :, None, None, None, :], float("-inf"))
    torch.testing.assert_close(got, reference(args["q"], args["k"], args["v"], add), rtol=1e-5, atol=1e-5)
    assert ".flatten(0, 2)" in compile_spec(text, opt=2).source


def test_two_batch_axes_are_not_folded() -> None:
    got, plain, a, source = run(spec("  bias: float32[n, N, M]", " + bias", axes="B"), ["B"], {"bias": [2, 5, 5]})
    torch.testing.assert_close(got, reference(a["q"], a["k"], a["v"], a["bias"]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-5)
    assert "flatten(" not in source.split("class Att(", 1)[1] and "F.scaled_dot_product_attention(" in source
