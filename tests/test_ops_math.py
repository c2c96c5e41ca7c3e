"""The elementwise math functions `softplus log1p expm1 sin cos round floor sign`: each against its formula (Python's
`math`, in float64) or values written by hand, in the reference interpreter, the generated torch module (-O0, -O2)
and the Triton target (its generated kernels, run in Triton's CPU interpreter); their type rules, FLOPs, constant
folding and glyphs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import pytest
import torch

import nnspec
from nnspec.backends.torch import Interpreter
from nnspec.compiler.diagrams import circuit_svg
from nnspec.compiler.ir import DType
from nnspec.compiler.passes.fold_constants import evaluate

INF, NAN = math.inf, math.nan


def spec(expr: str, dtype: str = "float32", out: str = "float32") -> str:
    return f"""nnspec: 1
name: f
inputs:
  x: {dtype}[N]
outputs:
  y: {out}[N]
body: |
  y = {expr}
"""


def modules(text: str) -> dict[str, Callable[..., torch.Tensor]]:
    """Every way nnspec runs a spec: the reference interpreter, generated torch code, the Triton target."""
    interp = Interpreter(nnspec.check(text).model).eval()
    out: dict[str, Callable[..., torch.Tensor]] = {"interpreter": lambda **kw: interp(**kw)["y"]}
    for opt in (0, 2):
        out[f"torch -O{opt}"] = nnspec.build(text, opt=opt).eval()
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        pytest.importorskip("triton")
        out["triton -O2"] = nnspec.build(text, target="triton", opt=2).eval()
    return out


def run_everywhere(text: str, x: torch.Tensor) -> dict[str, torch.Tensor]:
    from nnspec.backends.triton import runtime
    got = {}
    for how, module in modules(text).items():
        runtime.reset()
        with torch.no_grad():
            got[how] = module(x=x)
        if how.startswith("triton"):   # computed by a generated kernel, not by the torch fallback
            assert runtime.LAUNCHES and not runtime.FALLBACKS, (runtime.LAUNCHES, runtime.FALLBACKS)
    return got


def by_formula(fn: Callable[[float], float], xs: list[float]) -> torch.Tensor:
    return torch.tensor([fn(v) for v in xs], dtype=torch.float64).float()


def _softplus(v: float) -> float:
    """torch's definition: v itself above the threshold 20, else ln(1 + e^v)."""
    return v if v > 20 else math.log1p(math.exp(v)) if v > -700 else 0.0


SMOOTH = [-30.0, -5.0, -1.0, -1e-3, -1e-7, 0.0, 1e-8, 3e-5, 0.25, 1.0, 7.5, 19.5, 20.5, 60.0]
ACCURATE = {"rtol": 2e-6, "atol": 0.0}   # a few float32 ulps, relative: small results must be right, not just small


@pytest.mark.parametrize(("name", "fn", "xs"), [
    ("softplus", _softplus, SMOOTH),
    ("log1p", math.log1p, [-0.999, -0.5, -1e-4, -1e-7, 0.0, 1e-8, 3e-5, 0.5, 10.0, 1e6]),
    ("expm1", math.expm1, [-20.0, -1.0, -1e-4, -1e-7, 0.0, 1e-8, 3e-5, 0.5, 5.0, 80.0]),
    ("sin", math.sin, [-10.0, -1.0, 0.0, 1e-7, 0.5, 3.0, 100.0]),
    ("cos", math.cos, [-10.0, -1.0, 0.0, 1e-7, 0.5, 3.0, 100.0]),
])
def test_smooth_functions_match_their_formula(name: str, fn: Callable[[float], float], xs: list[float]) -> None:
    x = torch.tensor(xs)
    want = by_formula(fn, [float(v) for v in x.double()])
    # sin and cos of a large argument are not a few ulps in every libm: absolute error there
    tol = ACCURATE if name not in ("sin", "cos") else {"rtol": 1e-6, "atol": 1e-6}
    for how, got in run_everywhere(spec(f"{name}(x)"), x).items():
        torch.testing.assert_close(got, want, **tol, msg=lambda m, how=how: f"{how}: {m}")


@pytest.mark.parametrize(("expr", "xs", "want"), [
    ("log1p(x)", [INF, -1.0, -2.0, NAN], [INF, -INF, NAN, NAN]),
    ("expm1(x)", [INF, -INF, NAN, 100.0], [INF, -1.0, NAN, INF]),
    ("softplus(x)", [INF, -INF, NAN], [INF, 0.0, NAN]),
])
def test_edges(expr: str, xs: list[float], want: list[float]) -> None:
    for how, got in run_everywhere(spec(expr), torch.tensor(xs)).items():
        torch.testing.assert_close(got, torch.tensor(want), equal_nan=True, msg=lambda m, how=how: f"{how}: {m}")


# x, round(x) (halves to the even neighbour), floor(x), sign(x): written out by hand
TABLE = [
    (-2.5, -2.0, -3.0, -1.0),
    (-1.5, -2.0, -2.0, -1.0),
    (-0.5, -0.0, -1.0, -1.0),
    (0.5, 0.0, 0.0, 1.0),
    (1.5, 2.0, 1.0, 1.0),
    (2.5, 2.0, 2.0, 1.0),
    (0.49999997, 0.0, 0.0, 1.0),      # the float below 0.5: floor(x + 0.5) would say 1
    (-0.49999997, -0.0, -1.0, -1.0),
    (2.4999998, 2.0, 2.0, 1.0),
    (4194304.5, 4194304.0, 4194304.0, 1.0),   # 2^22 + 1/2: a tie, to the even neighbour
    (4194305.5, 4194306.0, 4194305.0, 1.0),
    (8388609.0, 8388609.0, 8388609.0, 1.0),   # 2^23 + 1: every float from here on is an integer
    (-3.7, -4.0, -4.0, -1.0),
    (3.2, 3.0, 3.0, 1.0),
    (-0.25, -0.0, -1.0, -1.0),
    (-0.0, -0.0, -0.0, 0.0),          # torch.sign gives +0 for both zeros
    (0.0, 0.0, 0.0, 0.0),
    (1e-30, 0.0, 0.0, 1.0),
    (INF, INF, INF, 1.0),
    (-INF, -INF, -INF, -1.0),
    (NAN, NAN, NAN, 0.0),             # torch.sign(nan) is 0
]


@pytest.mark.parametrize(("name", "column"), [("round", 1), ("floor", 2), ("sign", 3)])
def test_round_floor_sign_by_hand(name: str, column: int) -> None:
    x = torch.tensor([row[0] for row in TABLE])
    want = torch.tensor([row[column] for row in TABLE])
    for how, got in run_everywhere(spec(f"{name}(x)"), x).items():
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=lambda m, how=how: f"{how}: {m}")
        # the sign of a zero result too (round(-0.25) is -0.0)
        zeros = want == 0
        assert torch.equal(got[zeros].signbit(), want[zeros].signbit()), (how, got)


@pytest.mark.parametrize(("name", "want"), [
    ("round", [-7, -1, 0, 3, 9]),
    ("floor", [-7, -1, 0, 3, 9]),
    ("sign", [-1, -1, 0, 1, 1]),
])
def test_integers_stay_integers(name: str, want: list[int]) -> None:
    x = torch.tensor([-7, -1, 0, 3, 9])
    for how, got in run_everywhere(spec(f"{name}(x)", "int64", "int64"), x).items():
        assert got.dtype == torch.int64 and got.tolist() == want, (how, got)


def test_a_fused_chain_of_them_runs_in_one_kernel() -> None:
    from nnspec.backends.triton import runtime
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    text = spec("softplus(x) * sign(x) + log1p(abs(x)) - expm1(-abs(x)) + sin(x) * cos(x) + round(x) - floor(x)")
    module = nnspec.build(text, target="triton", opt=2).eval()
    x = torch.linspace(-6, 6, 97)
    runtime.reset()
    with torch.no_grad():
        got = module(x=x)
    assert sum(runtime.LAUNCHES.values()) == 1 and not runtime.FALLBACKS
    xd = x.double()
    want = (torch.where(xd > 20, xd, torch.log(1 + torch.exp(xd))) * torch.sign(xd) + torch.log(1 + xd.abs())
            - (torch.exp(-xd.abs()) - 1) + torch.sin(xd) * torch.cos(xd) + torch.round(xd) - torch.floor(xd))
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)


HALF_ULP = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}   # one unit in the last place, relative, at worst


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["softplus", "log1p", "expm1", "sin", "cos", "round", "floor", "sign"])
def test_half_precision_results_are_torchs_to_one_ulp(name: str, dtype: str) -> None:
    """In fp16/bf16 the kernel computes in float32 and rounds the result to the type, as torch does: the two may
    differ by the last bit where torch's float32 value and the kernel's round differently; round, floor and sign
    are exact."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    t = getattr(torch, dtype)
    x = torch.linspace(-0.99, 6, 71).to(t)
    want = nnspec.build(spec(f"{name}(x)", dtype, dtype), opt=0).eval()(x=x)   # torch's own fp16/bf16 kernels
    with torch.no_grad():
        got = nnspec.build(spec(f"{name}(x)", dtype, dtype), target="triton", opt=2).eval()(x=x)
    assert got.dtype == t
    if name in ("round", "floor", "sign"):
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=HALF_ULP[dtype], atol=1e-3)


# ---- types, cost, folding, glyphs ----
@pytest.mark.parametrize(("expr", "dtype", "message"), [
    ("round(x)", "bool", "round of a bool tensor"),
    ("floor(x)", "bool", "floor of a bool tensor"),
    ("sign(x)", "bool", "sign of a bool tensor"),
    ("softplus(x)", "int64", "softplus expects a floating-point tensor"),
    ("log1p(x)", "int64", "log1p expects a floating-point tensor"),
    ("sin(x)", "int32", "sin expects a floating-point tensor"),
])
def test_wrong_dtypes_are_located_errors(expr: str, dtype: str, message: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(spec(expr, dtype))
    assert err.value.code == "E013" and message in err.value.message
    assert (err.value.span.line, err.value.span.col) == (8, 7)   # `  y = f(x)`: the call


@pytest.mark.parametrize(("name", "per_element"), [
    ("softplus", 4), ("log1p", 1), ("expm1", 1), ("sin", 1), ("cos", 1), ("round", 1), ("floor", 1), ("sign", 1),
    ("stop_gradient", 0),
])
def test_flops_per_element(name: str, per_element: int) -> None:
    flops = nnspec.check(spec(f"{name}(x)").replace("[N]", "[N, 8]")).flops
    assert flops.subs({s: 5 for s in flops.free_symbols}) == per_element * 5 * 8   # at N = 5


@pytest.mark.parametrize(("op", "value", "dtype", "want"), [
    ("round", 2.5, DType.float32, 2.0),
    ("round", 3.5, DType.float32, 4.0),
    ("round", -0.25, DType.float32, -0.0),
    ("round", 7, DType.int64, 7),
    ("floor", -0.5, DType.float32, -1.0),
    ("floor", -0.0, DType.float32, -0.0),
    ("floor", -4, DType.int64, -4),
    ("sign", -3.5, DType.float32, -1.0),
    ("sign", NAN, DType.float32, 0.0),
    ("sign", -0.0, DType.float32, 0.0),
    ("sign", -9, DType.int64, -1),
    ("stop_gradient", 1.5, DType.float32, 1.5),
    ("stop_gradient", True, DType.bool, True),
])
def test_constant_folding_computes_what_torch_does(op: str, value: float, dtype: DType, want: float) -> None:
    got = evaluate(op, {}, [value], [dtype], dtype)
    assert got == want and type(got) is type(want)
    assert math.copysign(1, got) == math.copysign(1, want)


@pytest.mark.parametrize(("op", "value"), [
    ("round", INF), ("round", NAN), ("floor", -INF),           # Python refuses; torch keeps them: left alone
    ("sin", 1.0), ("cos", 1.0), ("softplus", 1.0), ("log1p", 1.0), ("expm1", 1.0),   # not correctly rounded
])
def test_constant_folding_leaves_alone_what_it_cannot_match(op: str, value: float) -> None:
    assert evaluate(op, {}, [value], [DType.float32], DType.float32) is None


def test_each_draws_with_its_glyph() -> None:
    text = spec("softplus(x) + log1p(x) + expm1(x) + sin(x) + cos(x) + round(x) + floor(x) + sign(x)")
    svg = circuit_svg(nnspec.check(text).model)
    for glyph in ("Softplus", "log1p", "expm1", "sin", "cos", "⌊·⌉", "⌊·⌋", "sgn"):
        assert f">{glyph}<" in svg, glyph
