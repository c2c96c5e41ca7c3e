"""-O2's `linear` helper writes a wide output whose rows would not start on 64-byte boundaries (GPT-2's 50257-token
head) into a buffer with padded rows and returns a view of it (`runtime.aligned_linear`): the same values as
F.linear, rows 64 bytes apart. Where it does not apply (narrow or already aligned outputs, autograd recording, a
tracer) the result is F.linear's own. Expected values: F.linear itself, and the -O0 module (plain nn.Linear and
the tied head as written) holding the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _small_models import GPT2

import nnspec
from nnspec.backends.torch import runtime

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.fixture(autouse=True)
def blas(monkeypatch: pytest.MonkeyPatch) -> None:
    """The BLAS route (this rule is F.linear's; an AVX-512 CPU would run oneDNN's linear first)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")


def operands(n: int, lead: tuple[int, ...], k: int = 24, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*lead, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(7,), (2, 5)])
@pytest.mark.parametrize("n", [1031, 4099])
def test_wide_unaligned_outputs_equal_f_linear_in_aligned_rows(n: int, lead: tuple[int, ...], bias: bool) -> None:
    x, w, b = operands(n, lead)
    b = b if bias else None
    with torch.no_grad():
        got = runtime.linear(x, w, b)
    assert got.shape == (*lead, n) and not got.is_contiguous()
    assert got.stride(-1) == 1 and got.stride(-2) % 16 == 0 and got.stride(-2) - n < 16   # 64-byte rows, fp32
    torch.testing.assert_close(got, F.linear(x, w, b))
    torch.testing.assert_close(got.reshape(-1, n), F.linear(x, w, b).reshape(-1, n))
    torch.testing.assert_close(runtime.linear(x, w, b, "gelu_tanh"), F.gelu(F.linear(x, w, b), approximate="tanh"))


@pytest.mark.parametrize("n", [1024, 1000, 97])
def test_aligned_or_narrow_outputs_are_f_linears_own(n: int) -> None:
    x, w, b = operands(n, (3, 4))
    with torch.no_grad():
        got = runtime.linear(x, w, b)
    assert got.is_contiguous()
    torch.testing.assert_close(got, F.linear(x, w, b))


def test_under_autograd_the_plain_route_runs_with_the_same_gradients() -> None:
    x, w, b = operands(1031, (6,))
    w.requires_grad_()
    assert not runtime.aligns_rows(x, w, b)
    got = runtime.linear(x, w, b)
    assert got.is_contiguous()
    (gw,) = torch.autograd.grad(got.square().sum(), [w])
    want = w.detach().clone().requires_grad_()
    (ww,) = torch.autograd.grad(F.linear(x, want, b).square().sum(), [want])
    torch.testing.assert_close(gw, ww)


def test_gpt2_with_an_odd_vocabulary_has_aligned_logits_equal_to_o0() -> None:
    dims = dict(GPT2, vocab_size=1031)
    plain = nnspec.build(EXAMPLES / "gpt2.yaml", opt=0, **dims).eval()
    fast = nnspec.build(EXAMPLES / "gpt2.yaml", opt=2, **dims).eval()
    fast.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 1031, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want, got = plain(ids), fast(ids)
    assert want.is_contiguous() and got.stride() == (9 * 1040, 1040, 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
