"""The runtime helpers generated files define (`nnspec/backends/torch/runtime.py`) against plain torch written out
here, and the copies the code generator emits against the module's own source."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nnspec.backends.torch import helpers, runtime  # noqa: E402

GEN = torch.Generator().manual_seed(0)


def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN).to(dtype)


def test_rms_norm_is_x_over_its_root_mean_square_times_the_weight() -> None:
    x, w = randn(3, 5, 8), randn(8)
    want = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(runtime.rms_norm(x, w, 1e-6), want)
    module = runtime.RMSNorm(8, eps=1e-6)
    with torch.no_grad():
        module.weight.copy_(w)
    torch.testing.assert_close(module(x), want)


def test_rms_norm_keeps_the_input_dtype_and_computes_its_statistics_in_float32() -> None:
    x, w = randn(4, 16, dtype=torch.bfloat16), torch.ones(16, dtype=torch.bfloat16)
    got = runtime.rms_norm(x, w, 1e-5)
    assert got.dtype == torch.bfloat16
    h = x.float()
    torch.testing.assert_close(got, (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16())


def test_rotary_tables_hold_each_frequency_twice() -> None:
    n, d, base = 6, 8, 10000.0
    cos, sin = runtime.rotary_tables(n, d, base, None, torch.device("cpu"), torch.float32)
    for p in range(n):
        for i in range(d // 2):
            angle = p / base ** (2 * i / d)
            for j in (i, i + d // 2):
                assert cos[p, j].item() == pytest.approx(math.cos(angle), abs=1e-5)
                assert sin[p, j].item() == pytest.approx(math.sin(angle), abs=1e-5)
    positions = torch.tensor([3.0, 0.0])
    cos_at, _ = runtime.rotary_tables(2, d, base, positions, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(cos_at, cos[[3, 0]])


def _rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """The hand rotation: each feature pair (a, b) at position p turned by the angle of its frequency."""
    out = x.clone()
    for k, (a, b) in enumerate(pairs):
        c, s = cos[:, k], sin[:, k]
        out[..., a] = x[..., a] * c - x[..., b] * s
        out[..., b] = x[..., b] * c + x[..., a] * s
    return out


def test_apply_rotary_rotates_the_two_halves_as_pairs() -> None:
    n, d = 5, 8
    x = randn(2, n, d)
    cos, sin = runtime.rotary_tables(n, d, 10000.0, None, torch.device("cpu"), torch.float32)
    want = _rotate_pairs(x, cos, sin, [(i, i + d // 2) for i in range(d // 2)])
    torch.testing.assert_close(runtime.apply_rotary(x, cos, sin, -1), want)


def test_apply_rotary_interleaved_rotates_adjacent_pairs() -> None:
    n, d = 5, 8
    x = randn(2, n, d)
    cos, sin = runtime.rotary_tables(n, d, 10000.0, None, torch.device("cpu"), torch.float32)
    want = _rotate_pairs(x, cos, sin, [(2 * i, 2 * i + 1) for i in range(d // 2)])
    # the tables aligned to x (as the emitter aligns them): [1, n, d]
    torch.testing.assert_close(runtime.apply_rotary_interleaved(x, cos[None], sin[None], 2), want)


def test_sinusoidal_table_is_sin_at_even_and_cos_at_odd_features() -> None:
    n, d, base = 7, 6, 10000.0
    table = runtime.sinusoidal_table(n, d, base)
    for p in range(n):
        for i in range(0, d, 2):
            angle = p / base ** (i / d)
            assert table[p, i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert table[p, i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


@pytest.mark.parametrize("activation", sorted(runtime.LINEAR_ACTIVATIONS))
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_linear_is_the_activation_of_f_linear(activation: str, grad: bool) -> None:
    x, w, b = randn(3, 7, 16), randn(24, 16), randn(24)
    acts = {"none": lambda y: y, "gelu": F.gelu, "gelu_tanh": lambda y: F.gelu(y, approximate="tanh"),
            "silu": F.silu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}
    want = acts[activation](F.linear(x, w, b))
    with torch.set_grad_enabled(grad):
        got = runtime.linear(x.requires_grad_(grad), w, b, activation)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    module = runtime.Linear(16, 24)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
        torch.testing.assert_close(module(x, activation), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("capability", ["AVX512", "AVX2"])
def test_onednn_is_used_only_for_cpu_inference_with_avx512(capability: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    x, w = randn(2, 4, 8), randn(8, 8).requires_grad_()
    with torch.no_grad():
        assert runtime.runs_onednn(x, w, None) == (torch.backends.mkldnn.is_available()
                                                   and torch.backends.mkldnn.enabled and capability == "AVX512")
    assert not runtime.runs_onednn(x, w, None)      # autograd records: F.linear
    assert not runtime.runs_onednn(x.double(), w.detach().double(), None)


def test_cat_weights_is_made_once_and_again_when_a_part_changes() -> None:
    owner = torch.nn.Module()
    a, b = torch.nn.Parameter(randn(2, 3)), torch.nn.Parameter(randn(4, 3))
    with torch.no_grad():
        first = runtime.cat_weights(owner, "w", [a, b], 0)
        torch.testing.assert_close(first, torch.cat([a, b]))
        assert runtime.cat_weights(owner, "w", [a, b], 0) is first
        a.add_(1.0)
        again = runtime.cat_weights(owner, "w", [a, b], 0)
    assert again is not first
    torch.testing.assert_close(again, torch.cat([a, b]).detach())


def test_cast_weight_is_made_once_again_when_the_weight_changes_and_afresh_under_autograd() -> None:
    owner = torch.nn.Module()
    w = torch.nn.Parameter(randn(3, 5).bfloat16())
    with torch.no_grad():
        first = runtime.cast_weight(owner, "w_f32", w, torch.float32)
        assert first.dtype == torch.float32 and torch.equal(first, w.float())
        assert runtime.cast_weight(owner, "w_f32", w, torch.float32) is first
        w.mul_(2.0)
        again = runtime.cast_weight(owner, "w_f32", w, torch.float32)
    assert again is not first and torch.equal(again, w.detach().float())
    recorded = runtime.cast_weight(owner, "w_f32", w, torch.float32)   # autograd records: not the kept copy
    assert recorded is not again and recorded.requires_grad


def test_a_bf16_linear_of_32_rows_or_more_runs_in_float32_where_the_cpu_has_no_bf16_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(runtime, "runs_onednn", lambda *a: False)
    w, b = randn(48, 40).bfloat16(), randn(48).bfloat16()
    x = randn(4, 8, 40).bfloat16()
    with torch.no_grad():
        assert runtime.widens(x, w, b)
        y = runtime.linear(x, w, b, "gelu")
        assert y.dtype == torch.bfloat16
        # expected: the float32 product of the same (exactly widened) operands, rounded to bf16 once, then gelu
        want = F.gelu(F.linear(x.float(), w.float(), b.float()).bfloat16())
        torch.testing.assert_close(y, want, atol=0, rtol=0)
        torch.testing.assert_close(y, F.gelu(F.linear(x, w, b)))   # torch's own bf16 product, up to rounding
        assert not runtime.widens(x[:3], w, b)                      # 24 rows: a bf16 GEMV per row is cheaper
        assert not runtime.widens(x.float(), w.float(), b.float())
    assert not runtime.widens(x, w.requires_grad_(), b)             # autograd records
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    with torch.no_grad():
        assert not runtime.widens(x, w, b)                          # the CPU has bf16 kernels


@pytest.mark.parametrize("name", list(helpers.HELPERS))
def test_each_emitted_helper_is_its_runtime_definition_and_needs_only_its_dependencies(name: str) -> None:
    text = helpers.source(name)
    namespace: dict[str, object] = {"torch": torch, "F": F, "nn": torch.nn}
    for dep in helpers.HELPERS[name]:
        exec(helpers.source(dep), namespace)
    exec(text, namespace)
    assert name in namespace
    assert list(helpers.HELPERS).index(name) > max((list(helpers.HELPERS).index(d) for d in helpers.HELPERS[name]),
                                                    default=-1)
