"""Attention in any layout runs as `F.scaled_dot_product_attention` through views: queries with axes the keys
lack (PVT's `q[B, H, W, heads, d]`, grouped heads) are folded into SDPA's query axis; `s + 0.0` (Swin's unshifted
windows) is recognised. Values against a plain-PyTorch softmax attention written here."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

D = 8


def spec(inputs: str, scores: str, out: str, value: str, zero: str = "") -> str:
    return f"""\
nnspec: 1
name: att
dims: {{hd: {D}}}
inputs:
{inputs}
outputs:
  o: float32[{out}]
body: |
  s[{scores}] = q * k / sqrt(hd){zero}
  o[{out}] = softmax(s, over=S) * v
"""


CASES = {
    "spatial queries (PVT)": ("  q: float32[B, H, W, n, hd]\n  k: float32[B, S, n, hd]\n  v: float32[B, S, n, hd]",
                              "B, H, W, n, S", "B, H, W, n, hd", "bhwnd,bsnd->bhwns", "bhwns,bsnd->bhwnd"),
    "grouped heads, not causal": ("  q: float32[B, T, g, r, hd]\n  k: float32[B, S, g, hd]\n  v: float32[B, S, g, hd]",
                                  "B, g, r, T, S", "B, T, g, r, hd", "btgrd,bsgd->bgrts", "bgrts,bsgd->btgrd"),
    "windows, plus zero (Swin)": ("  q: float32[B, a, c, N, n, hd]\n  k: float32[B, a, c, S, n, hd]\n"
                                  "  v: float32[B, a, c, S, n, hd]", "B, a, c, n, N, S", "B, a, c, N, n, hd",
                                  "bacxnd,bacsnd->bacnxs", "bacnxs,bacsnd->bacxnd"),
}
SIZES = {"B": 2, "H": 3, "W": 4, "n": 2, "S": 5, "T": 6, "g": 2, "r": 3, "a": 2, "c": 2, "N": 4, "hd": D}


def run(text: str, inputs: str) -> tuple[torch.Tensor, list[torch.Tensor], str]:
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*[SIZES[a] for a in line.split("[")[1].rstrip("]").split(", ")], generator=g)
            for line in inputs.splitlines()]
    model = nnspec.build(text, opt=2).eval()
    with torch.inference_mode():
        return model(*args), args, compile_spec(text, opt=2).source


@pytest.mark.parametrize("case", list(CASES))
def test_layouts_run_as_sdpa_and_equal_plain_attention(case: str) -> None:
    inputs, scores, out, qk, pv = CASES[case]
    zero = " + 0.0" if "zero" in case else ""
    got, (q, k, v), source = run(spec(inputs, scores, out, "", zero), inputs)
    want = torch.einsum(pv, torch.softmax(torch.einsum(qk, q, k) / math.sqrt(D), dim=-1), v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "F.scaled_dot_product_attention(" in source
    assert "torch.einsum" not in source.split("def forward", 1)[1]


def test_a_nonzero_constant_added_is_not_taken_for_attention() -> None:
    inputs, scores, out, qk, pv = CASES["windows, plus zero (Swin)"]
    got, (q, k, v), source = run(spec(inputs, scores, out, "", " + 1.0"), inputs)
    want = torch.einsum(pv, torch.softmax(torch.einsum(qk, q, k) / math.sqrt(D) + 1.0, dim=-1), v)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert "scaled_dot_product_attention(" not in source.split("class Att(", 1)[1]
