"""Shared helpers for the pass tests (no tests here): run a spec before and after passes and compare."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.backends.torch.dtypes import TORCH_DTYPES  # noqa: E402
from nnspec.backends.torch.interpreter import Interpreter  # noqa: E402
from nnspec.compiler.ir import Model, TensorType  # noqa: E402
from nnspec.compiler.passes import optimize, pipeline, run  # noqa: E402


def inputs_for(model: Model, seed: int = 0, **free: int) -> dict[str, Any]:
    """Random inputs; free dims from `free` (default 2). Bool inputs are true at position 0 of every axis
    after the first, so no attention row is fully masked."""
    gen = torch.Generator().manual_seed(seed)
    sizes = {**{s: free.get(n, 2) for n, s in model.dims.free.items()}, **model.dims.values}
    out = {}
    for name, node_name in model.inputs.items():
        t = model.graph[node_name].type
        assert isinstance(t, TensorType)
        shape = [int(a.size.xreplace(sizes)) for a in t.axes]
        dtype = TORCH_DTYPES[t.dtype]
        if t.dtype.is_float:
            x = torch.randn(shape, generator=gen).to(dtype)
        elif t.dtype.is_int:
            x = torch.randint(0, 2, shape, generator=gen, dtype=dtype)
        else:
            x = torch.rand(shape, generator=gen) < 0.6
            if x.dim() > 1:
                x[:, 0] = True
        out[name] = x
    return out


def outputs(model: Model, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run in eval mode on one thread (these models are tiny; on a shared 2-CPU machine extra threads only
    wait for each other), restoring the thread count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        interp = Interpreter(model, seed=0).eval()
        with torch.no_grad():
            return interp(**inputs)
    finally:
        torch.set_num_threads(threads)


def state(model: Model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in Interpreter(model, device="meta").state_dict().items()]


def optimized(text: str, *, level: int = 2, passes: str | None = None, **dims: Any) -> tuple[Model, Model, list[str]]:
    """(checked model, optimised model, explanation), verified after every pass."""
    model = nnspec.check(text, **dims).model
    lines: list[str] = []
    return model, optimize(model, level, passes, explain=lines, verify=True), lines


def assert_same_outputs(before: Model, after: Model, exact: bool = False, **free: int) -> None:
    ins = inputs_for(before, **free)
    a, b = outputs(before, ins), outputs(after, ins)
    assert list(a) == list(b)
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]) or torch.allclose(a[k], b[k], rtol=0, atol=0, equal_nan=True), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, equal_nan=True)


def assert_idempotent(model: Model, level: int = 2, passes: str | None = None) -> None:
    """Running the pipeline again on its own result changes nothing."""
    _, log = run(model, pipeline(level, passes), verify=True)
    changed = [f"{p} on {g}" for p, g, c in log if c]
    assert not changed, f"second run changed: {changed}"


def count(model: Model, op: str) -> int:
    return sum(1 for g in model.graphs() for n in g if n.op == op)


def fire_rate(strategy: Any, fired: Any, what: str) -> float:
    """Share of the cases drawn from `strategy` on which `fired(case)` is true (printed for the closing notes)."""
    from hypothesis import HealthCheck, given, settings

    results: list[bool] = []

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(strategy)
    def draw(case: Any) -> None:
        results.append(bool(fired(case)))

    draw()
    rate = sum(results) / len(results)
    print(f"{what} fire rate on planted cases: {rate:.0%} of {len(results)}")
    return rate
