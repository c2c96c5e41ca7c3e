"""benchmarks/cpu_gemm.py times routes for one product: each must compute that product, else its timing means
nothing. Checked against float64 products written here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_gemm_under_test", ROOT / "benchmarks" / "cpu_gemm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_every_linear_route_is_the_product(bench) -> None:
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(8, 16, generator=g), torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    want = (x.double() @ w.double().t() + b.double()).float()
    with torch.inference_mode():
        fns = bench.routes(x, w, b)
        assert {"F.linear", "x @ Wt", "mkl packed", "onednn packed"} <= set(fns)
        for name, f in fns.items():
            torch.testing.assert_close(f(), want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_every_moe_route_is_each_experts_product(bench) -> None:
    x, w, sizes = bench.moe_operands(10, 4, 2, 8, 3)
    assert sum(sizes) == 20 and len(sizes) == 4 and w.shape == (4, 6, 8)
    rows, start = [], 0
    for e, n in enumerate(sizes):           # expert e's rows times its weight, in float64
        rows.append(x[start:start + n].double() @ w[e].double().t())
        start += n
    want = torch.cat(rows).float()
    with torch.inference_mode():
        fns = bench.moe_routes(x, w, sizes)
        assert {"loop F.linear", "padded bmm"} <= set(fns)
        for name, f in fns.items():
            torch.testing.assert_close(f(), want, rtol=1e-4, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
