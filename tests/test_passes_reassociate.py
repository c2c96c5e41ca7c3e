"""reassociate-products: `(x * y) * z` regrouped so the broadcast factors with fewer axes multiply first (Mamba's
`dt * bb * u` writes its [B, T, I, N] product once instead of twice). Planted patterns and near misses; the
numbers compared with plain PyTorch products written here."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.compiler.passes import optimize  # noqa: E402

PASS = "reassociate-products"


def spec(body: str, *, u: str = "float32[B, T, i]", extra_output: str = "") -> str:
    return f"""\
nnspec: 1
name: prod
dims: {{i: 6, n: 4}}
inputs:
  dt: float32[B, T, i]
  bb: float32[B, T, n]
  u: {u}
outputs:
  y: float32[B, T, i, n]{extra_output}
body: |
{body}
"""


def rewrites(text: str) -> list[str]:
    lines: list[str] = []
    optimize(nnspec.check(text).model, passes=PASS, explain=lines)
    return [line for line in lines if f"rewrite [{PASS}]" in line]


PLANTED = {
    "left to right": "  y[B, T, i, n] = dt * bb * u",
    "big factor first": "  y[B, T, i, n] = bb * dt * u",
    "through a name": "  p[B, T, i, n] = dt * bb\n  y = p * u",
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_planted_products_regrouped_and_equal(name: str) -> None:
    text = spec(PLANTED[name])
    assert len(rewrites(text)) == 1
    g = torch.Generator().manual_seed(0)
    dt, u = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    bb = torch.randn(2, 3, 4, generator=g)
    want = dt[..., None] * bb[:, :, None] * u[..., None]
    for opt in (0, 2):
        torch.testing.assert_close(nnspec.build(text, opt=opt)(dt=dt, bb=bb, u=u), want)
    model = optimize(nnspec.check(text).model, passes=PASS)
    small = [n for n in model.graph.nodes.values() if n.op == "mul" and n.type.names == ("B", "T", "i")]
    assert len(small) == 1 and set(small[0].inputs) == {"dt", "u"}


NEAR_MISSES = {
    # already smallest first: dt * u spans [B, T, i], then one [B, T, i, n] product
    "already smallest first": spec("  y[B, T, i, n] = dt * u * bb"),
    # the inner product is an output too: it is written anyway
    "inner product used elsewhere": spec("  p[B, T, i, n] = dt * bb\n  y = p * u\n  q = p",
                                         extra_output="\n  q: float32[B, T, i, n]"),
    # u spans every axis of dt * bb: no grouping writes less
    "no smaller grouping": spec("  y[B, T, i, n] = dt * bb * u", u="float32[B, T, i, n]"),
    # a bfloat16 factor is promoted: regrouping would change where the promotion (and its rounding) happens
    "mixed dtypes": spec("  y[B, T, i, n] = dt * bb * cast(u, bfloat16)"),
}


@pytest.mark.parametrize("name", list(NEAR_MISSES))
def test_near_misses_left_alone(name: str) -> None:
    assert rewrites(NEAR_MISSES[name]) == []
