"""`stop_gradient(x)` and `straight_through(x, y)`: values and gradients against hand-written torch (`detach`,
`x + (y - x).detach()`) and hand-derived formulas, in the reference interpreter, the generated torch module (-O0,
-O2) and the Triton target (whose kernels have no backward: while autograd records, it runs the torch code; under
no_grad its kernel computes the value)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from _backend_matrix import modules, triton_available

import nnspec

QAT = """nnspec: 1
name: qat
dims: {D: 4, E: 3}
inputs:
  x: float32[B, D]
outputs:
  y: float32[B, E]
body: |
  w = param(D, E, name=w)
  y[B, E] = x * straight_through(w, round(w * 8) / 8)
"""


def spec(body: str, inputs: str = "v: float32[B, T]", out: str = "float32[B, T]") -> str:
    return f"""nnspec: 1
name: g
inputs:
  {inputs}
outputs:
  y: {out}
body: |
  {body}
"""


def call(how: str, module: torch.nn.Module, **inputs: torch.Tensor) -> torch.Tensor:
    out = module(**inputs)
    return out["y"] if how == "interpreter" else out


def value_and_grad(text: str, x: torch.Tensor, weight: torch.Tensor
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each module's y(v) and d(sum(y * weight))/dv."""
    out = {}
    for how, module in modules(text).items():
        v = x.clone().requires_grad_(True)
        y = call(how, module, v=v)
        (y * weight).sum().backward()
        assert v.grad is not None
        out[how] = (y.detach(), v.grad)
    return out


def check(text: str, x: torch.Tensor, value: Callable[[torch.Tensor], torch.Tensor],
          grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    weight = torch.randn_like(x)
    for how, (got, dv) in value_and_grad(text, x, weight).items():
        torch.testing.assert_close(got, value(x), msg=lambda m, how=how: f"{how} value: {m}")
        torch.testing.assert_close(dv, grad(x, weight), msg=lambda m, how=how: f"{how} gradient: {m}")


def test_stop_gradient_passes_the_value_and_no_gradient() -> None:
    # y = sg(v) * v + sg(v * v): value 2v^2; d/dv = sg(v) = v (the detached factor is a constant)
    torch.manual_seed(0)
    check(spec("y = stop_gradient(v) * v + stop_gradient(v * v)"), torch.randn(3, 5),
          value=lambda x: 2 * x * x, grad=lambda x, w: w * x)


def test_a_fully_stopped_output_has_no_gradient_path() -> None:
    for how, module in modules(spec("y = stop_gradient(v * 2)")).items():
        v = torch.randn(2, 3, requires_grad=True)
        y = call(how, module, v=v)
        assert not y.requires_grad, how
        torch.testing.assert_close(y, 2 * v.detach())


def test_straight_through_rounding_has_the_identity_gradient() -> None:
    # the forward value is the rounded one, the backward pretends the rounding is the identity
    torch.manual_seed(0)
    check(spec("y = straight_through(v, round(v * 4) / 4) * 3"), torch.randn(4, 6) * 2,
          value=lambda x: (x + (torch.round(x * 4) / 4 - x).detach()) * 3, grad=lambda x, w: 3 * w)


def test_straight_through_value_is_the_forward_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 6) * 2
    for how, module in modules(spec("y = straight_through(v, round(v * 4) / 4)")).items():
        with torch.no_grad():
            torch.testing.assert_close(call(how, module, v=x), torch.round(x * 4) / 4, msg=how)


def test_surrogate_gradient_of_a_spike() -> None:
    """A spiking neuron's step: the value is the Heaviside step v > 0, the gradient sigmoid'(4v) * 4."""
    text = spec('y = straight_through(sigmoid(4 * v), cast(v > 0, "float32"))')
    torch.manual_seed(0)
    x = torch.randn(5, 7)

    def surrogate(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(4 * x)
        return w * 4 * s * (1 - s)
    check(text, x, value=lambda x: (x > 0).float(), grad=surrogate)


def test_straight_through_broadcasts_by_name_and_sums_the_gradient() -> None:
    # x[T] against y[B, T]: the result is [T, B] (x's axes first); x's gradient sums over B
    text = spec("y = straight_through(v, round(u))", "v: float32[T]\n  u: float32[B, T]", "float32[T, B]")
    torch.manual_seed(0)
    x, u = torch.randn(5), torch.randn(3, 5) * 3
    w = torch.randn(5, 3)
    for how, module in modules(text).items():
        v = x.clone().requires_grad_(True)
        y = call(how, module, v=v, u=u)
        (y * w).sum().backward()
        torch.testing.assert_close(y.detach(), torch.round(u).T, msg=how)
        torch.testing.assert_close(v.grad, w.sum(1), msg=how)


def test_quantisation_aware_training_step() -> None:
    """QAT of a weight: the product uses the weight rounded to eighths, the gradient reaches the float weight as if
    no rounding happened; written by hand in torch."""
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    w0 = torch.randn(4, 3)
    g = torch.randn(6, 3)
    wq = torch.round(w0 * 8) / 8
    for how, module in modules(QAT).items():
        module.load_state_dict({("root.w" if how == "interpreter" else "w"): w0.clone()})
        y = call(how, module, x=x)
        torch.testing.assert_close(y.detach(), x @ wq, msg=how)
        (y * g).sum().backward()
        w = dict(module.named_parameters())["root.w" if how == "interpreter" else "w"]
        torch.testing.assert_close(w.grad, x.T @ g, msg=how)


def test_kernels_compute_the_forward_value_under_no_grad() -> None:
    if not triton_available():
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    from nnspec.backends.triton import runtime
    text = spec("y = stop_gradient(v) * 2 + straight_through(v, round(v * 4) / 4)")
    module = nnspec.build(text, target="triton", opt=2).eval()
    x = torch.randn(4, 9)
    runtime.reset()
    with torch.no_grad():
        got = module(v=x)
    assert sum(runtime.LAUNCHES.values()) == 1 and not runtime.FALLBACKS
    torch.testing.assert_close(got, 2 * x + (x + (torch.round(x * 4) / 4 - x)))
    # while autograd records, the same module runs its torch code and the gradient flows through straight_through
    runtime.reset()
    v = x.clone().requires_grad_(True)
    module(v=v).sum().backward()
    assert runtime.FALLBACKS and not runtime.LAUNCHES
    torch.testing.assert_close(v.grad, torch.ones_like(x))


@pytest.mark.parametrize(("body", "inputs", "code", "where", "message"), [
    ("y = straight_through(i, v)", "v: float32[B, T]\n  i: int64[B, T]", "E013", (9, 7),
     "straight_through (the value gradients flow to) expects a floating-point tensor"),
    ("y = straight_through(v, i)", "v: float32[B, T]\n  i: int64[B, T]", "E013", (9, 7),
     "straight_through (the value passed forward) expects a floating-point tensor"),
    ("y = straight_through(v)", "v: float32[B, T]", "E019", (8, 7), "needs argument 'y'"),
    ("y = stop_gradient(2.0)", "v: float32[B, T]", "E026", (8, 7), "applies to a tensor"),
])
def test_mistakes_are_located(body: str, inputs: str, code: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(spec(body, inputs))
    assert err.value.code == code and message in err.value.message, err.value
    assert (err.value.span.line, err.value.span.col) == where


def test_flops_and_effect() -> None:
    from nnspec.compiler.ops import OPS
    assert OPS["stop_gradient"].has("pointwise") and not OPS["stop_gradient"].is_impure
    flops = nnspec.check(spec("y = straight_through(v, round(v))", "v: float32[B, T]")).flops
    assert flops.subs({s: 3 for s in flops.free_symbols}) == (2 + 1) * 9   # 2 for x + (y - x), 1 for round
