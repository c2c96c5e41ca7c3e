"""Scans whose step is a linear recurrence in its state (h = a * h + b, a and b not depending on h) run all steps
at once at -O2 (`affine_scan`: coefficients by `torch.func`, a chunked doubling scan); other steps keep the loop.
Expected values from plain-PyTorch step loops written here; the recognition is shown on planted steps and near
misses."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.backends.torch.runtime import linear_scan  # noqa: E402
from nnspec.compiler.affine_scan import affine_state  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

# the parallel scan is a backend option asked for by name (not one -O2 turns on)
PARALLEL = {"parallel_scan": True}


def loop(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    h, out = h0, []
    for t in range(a.shape[0]):
        h = a[t] * h + b[t]
        out.append(h)
    return torch.stack(out)


@pytest.mark.parametrize("sequential_from", [1 << 16, 0], ids=["doubling", "sequential"])
@pytest.mark.parametrize("n", [1, 5, 16, 37])
def test_linear_scan_equals_the_step_loop_with_gradients(n: int, sequential_from: int) -> None:
    g = torch.Generator().manual_seed(n)
    a = torch.rand(n, 3, 4, generator=g).requires_grad_()
    a_fast = (a * torch.tensor([1.0, 1e-3, 1e-30]).view(1, 3, 1)).detach().requires_grad_()  # fast decays too
    b = torch.randn(n, 3, 4, generator=g, requires_grad=True)
    h0 = torch.randn(3, 4, generator=g, requires_grad=True)
    for coef in (a, a_fast):
        got, want = linear_scan(coef, b, h0, chunk=4, sequential_from=sequential_from), loop(coef, b, h0)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            torch.testing.assert_close(linear_scan(coef, b, h0, 4, sequential_from), want, rtol=1e-5, atol=1e-6)
        seed = torch.randn_like(want)
        for x, y in zip(torch.autograd.grad((got * seed).sum(), [coef, b, h0]),
                        torch.autograd.grad((want * seed).sum(), [coef, b, h0]), strict=True):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def scan_spec(step: str, returns: str = "h, h * 2.0") -> str:
    return f"""\
nnspec: 1
name: rec
dims: {{d: 6}}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  step(h, x): |
    a = sigmoid(linear(x, d, name=gate))
    {step}
    return {returns}
body: |
  final, y = scan(step, zeros(B, d), x, over=T)
"""


AFFINE = {
    "a * h + b": "h = a * h + (1 - a) * x",
    "h * a + b": "h = h * a + (1 - a) * x",
    "b + a * h": "h = (1 - a) * x + a * h",
    "constant decay": "h = 0.9 * h + x",
}
NOT_AFFINE = {
    "squashed": "h = tanh(a * h + x)",
    "coefficient from the state": "h = sigmoid(h) * h + x",
    "state squared": "h = a * h * h + x",
    "minus": "h = a * h - x",
    "no product": "h = h + a * x",
    "random step": "h = dropout(a, 0.5) * h + x",
}


def step_graph(step: str, returns: str = "h, h * 2.0") -> Any:
    return nnspec.check(scan_spec(step, returns)).model.templates["step"]


@pytest.mark.parametrize("name", list(AFFINE))
def test_recognised_linear_recurrences(name: str) -> None:
    assert affine_state(step_graph(AFFINE[name]))


@pytest.mark.parametrize("name", list(NOT_AFFINE))
def test_near_misses_keep_the_loop(name: str) -> None:
    assert not affine_state(step_graph(NOT_AFFINE[name]))


def reference(model: Any, x: torch.Tensor, step: str) -> torch.Tensor:
    """The step loop in plain PyTorch, with the model's gate weights."""
    state = dict(model.named_parameters())
    w, bias = (next(v for k, v in state.items() if k.endswith("gate." + p)) for p in ("weight", "bias"))
    h, ys = torch.zeros(x.shape[0], x.shape[2]), []
    for t in range(x.shape[1]):
        xt = x[:, t]
        a = torch.sigmoid(xt @ w.T + bias)
        h = a * h + (1 - a) * xt if step == "a * h + b" else torch.tanh(a * h + xt)
        ys.append(h * 2.0)
    return torch.stack(ys, dim=1)


@pytest.mark.parametrize("step,parallel", [("a * h + b", True), ("squashed", False)])
def test_o2_runs_linear_recurrences_at_once_and_equals_the_loop(step: str, parallel: bool) -> None:
    text = scan_spec({**AFFINE, **NOT_AFFINE}[step])
    source = compile_spec(text, opt=2, backend_options=PARALLEL).source.split("class Rec(", 1)[1]
    assert ("affine_scan(" in source) is parallel and ("for i in range" in source) is not parallel
    torch.manual_seed(0)
    model = nnspec.build(text, opt=2, backend_options=PARALLEL)
    x = torch.randn(2, 21, 6, requires_grad=True)
    got, want = model(x), reference(model, x, step)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    params = list(model.parameters())
    seed = torch.randn_like(want)
    for g, w in zip(torch.autograd.grad((got * seed).sum(), [x, *params]),
                    torch.autograd.grad((want * seed).sum(), [x, *params]), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_retention_example_parallel_equals_its_loop() -> None:
    path = "examples/small/retention.yaml"
    torch.manual_seed(0)
    looped, parallel = nnspec.build(path, opt=0), nnspec.build(path, opt=2, backend_options=PARALLEL)
    parallel.load_state_dict(looped.state_dict())
    assert "affine_scan(" in compile_spec(path, opt=2, backend_options=PARALLEL).source
    assert "affine_scan(" not in compile_spec(path, opt=2).source   # not -O2's own choice: slower on CPU (Mamba)
    x = torch.randn(2, 19, 16)
    torch.testing.assert_close(parallel(x), looped(x), rtol=1e-5, atol=1e-5)


def direct_spec(a_axes: str) -> str:
    """A step whose coefficients are its own inputs: `a` scanned as float32[B, T, {a_axes}]."""
    return f"""\
nnspec: 1
name: direct
dims: {{d: 5}}
inputs:
  a: float32[B, T{a_axes}]
  b: float32[B, T, d]
  c: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  step(h, a, b, c): |
    h = a * h + b
    return h, h * c
body: |
  final, y = scan(step, zeros(B, d), a, b, c, over=T)
"""


def test_direct_coefficients_only_where_a_and_b_are_inputs_of_the_state_type() -> None:
    from nnspec.compiler.affine_scan import direct_coefficients

    assert direct_coefficients(nnspec.check(direct_spec(", d")).model.templates["step"]) == (1, 2)
    assert direct_coefficients(nnspec.check("examples/mamba.yaml").model.templates["ssm_step"]) == (1, 2)
    # near misses: `a` broadcast over d (not the state's type); `a` computed inside the step; not affine at all
    assert direct_coefficients(nnspec.check(direct_spec("")).model.templates["step"]) is None
    assert direct_coefficients(step_graph(AFFINE["a * h + b"])) is None
    assert direct_coefficients(step_graph(NOT_AFFINE["squashed"])) is None


@pytest.mark.parametrize("a_axes,direct", [(", d", True), ("", False)], ids=["direct", "broadcast a"])
def test_direct_coefficients_equal_the_loop_with_gradients(a_axes: str, direct: bool) -> None:
    """Read straight from the scanned tensors (no torch.func evaluation of the step) or found through the step:
    both equal a plain step loop, values and gradients."""
    text = direct_spec(a_axes)
    assert ("direct=(1, 2)" in compile_spec(text, opt=2, backend_options=PARALLEL).source) is direct
    model = nnspec.build(text, opt=2, backend_options=PARALLEL)
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 23, *([5] if direct else []), generator=g).requires_grad_()
    b, c = (torch.randn(2, 23, 5, generator=g).requires_grad_() for _ in range(2))
    h, ys = torch.zeros(2, 5), []
    for t in range(a.shape[1]):
        h = (a[:, t] if direct else a[:, t, None]) * h + b[:, t]
        ys.append(h * c[:, t])
    want = torch.stack(ys, dim=1)
    got = model(a=a, b=b, c=c)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    seed = torch.randn_like(want)
    for x, y in zip(torch.autograd.grad((got * seed).sum(), [a, b, c]),
                    torch.autograd.grad((want * seed).sum(), [a, b, c]), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    with torch.no_grad():   # the preallocated no-grad path
        torch.testing.assert_close(model(a=a, b=b, c=c), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sequential_from", [1 << 16, 0], ids=["doubling", "sequential"])
def test_linear_scan_with_the_initial_state_first(sequential_from: int) -> None:
    g = torch.Generator().manual_seed(7)
    a, b, h0 = torch.rand(9, 3, generator=g), torch.randn(9, 3, generator=g), torch.randn(3, generator=g)
    got = linear_scan(a, b, h0, chunk=4, sequential_from=sequential_from, initial=True)
    torch.testing.assert_close(got, torch.cat([h0[None], loop(a, b, h0)]), rtol=1e-5, atol=1e-6)
