"""The `moe` op's sparse dispatch (runtime.moe_swiglu, what the interpreter and generated modules run): equal to
the dense gated sum written out in plain PyTorch (every expert on every token, weighted by a routing weight that is
zero for unchosen experts), in values and in gradients; its matrix products are only those of the k chosen experts
per token (counted by torch's FLOP counter against the hand count); experts no token chose, k = 1, k = E and an
empty batch; the generated module (torch and triton targets) runs the same dispatch; and the Triton target's
grouped-GEMM kernel (under TRITON_INTERPRET=1, set by conftest) gives the same values and gradients."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import nnspec
from nnspec.backends.torch.runtime import moe_swiglu

H, I, E = 12, 20, 5


def dense_moe(x: torch.Tensor, router: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
              k: int, renormalise: bool) -> torch.Tensor:
    """The op's meaning, term by term: y = Σₑ wₑ · downₑ(silu(gateₑ x) ⊙ upₑ x), wₑ the softmax probability of
    expert e if it is among the k largest (over their sum when renormalising), else 0."""
    probs = torch.softmax(x @ router.T, dim=-1)
    kth = probs.topk(k, dim=-1).values[..., -1:]
    w = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if renormalise:
        w = w / w.sum(dim=-1, keepdim=True)
    y = torch.zeros_like(x)
    for e in range(router.shape[0]):
        y = y + w[..., e:e + 1] * ((F.silu(x @ gate[e].T) * (x @ up[e].T)) @ down[e].T)
    return y


def weights(seed: int = 0, experts: int = E, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(experts, H), (experts, I, H), (experts, I, H), (experts, H, I)]
    return [(0.3 * torch.randn(s, generator=g)).to(dtype) for s in shapes]


@pytest.mark.parametrize("renormalise", [True, False])
@pytest.mark.parametrize("k", [1, 2, E])
@pytest.mark.parametrize("shape", [(3, 7), (1, 1), (2, 3, 4)])
def test_equals_the_dense_gated_sum(shape: tuple[int, ...], k: int, renormalise: bool) -> None:
    w = weights(k)
    x = torch.randn(*shape, H, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(moe_swiglu(x, *w, k, renormalise), dense_moe(x, *w, k, renormalise))


def test_experts_no_token_chose_and_an_empty_batch() -> None:
    router, gate, up, down = weights()
    router[2:] = -50.0 * router[:1].abs().sum()   # experts 2..4 never win: every token picks 0 and 1
    router[:2] = 0.0
    x = torch.randn(6, H).abs()
    torch.testing.assert_close(moe_swiglu(x, router, gate, up, down, 2, True), dense_moe(x, router, gate, up, down,
                                                                                         2, True))
    empty = moe_swiglu(torch.zeros(0, 3, H), router, gate, up, down, 2, True)
    assert empty.shape == (0, 3, H)


def test_gradients_equal_the_dense_gated_sum() -> None:
    """Through the gather, the per-expert products, the routing weights and index_add_: every input's gradient."""
    ws = [t.requires_grad_() for t in weights(3)]     # float32: the routing softmax runs in float32 anyway
    x = torch.randn(4, 5, H, generator=torch.Generator().manual_seed(4), requires_grad=True)
    probe = torch.randn(4, 5, H, generator=torch.Generator().manual_seed(5))
    got = torch.autograd.grad((moe_swiglu(x, *ws, 2, True) * probe).sum(), [x, *ws])
    want = torch.autograd.grad((dense_moe(x, *ws, 2, True) * probe).sum(), [x, *ws])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("k", [1, 3])
def test_runs_only_the_chosen_experts_matrix_products(k: int) -> None:
    """torch's FLOP counter sees the router's product and, per token, k experts' three products: 2·N·H·E +
    k·N·3·(2·H·I); the dense form would be E/k times the expert part."""
    n = 10
    x = torch.randn(n, H)
    with FlopCounterMode(display=False) as counter:
        moe_swiglu(x, *weights(), k, True)
    assert counter.get_total_flops() == 2 * n * H * E + k * n * 3 * 2 * H * I


@pytest.mark.parametrize("target", ["torch", "triton"])
def test_generated_module_runs_the_sparse_dispatch(target: str) -> None:
    spec = f"""\
nnspec: 1
name: moe_layer
dims: {{d: {H}, ff: {I}, n_experts: {E}}}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
body: |
  y = moe(x, n_experts, ff, 2, norm_topk_prob=false, name=moe)
"""
    from nnspec.backends.triton import runtime

    model = nnspec.build(spec, target=target, opt=2).eval()
    router, gate, up, down = weights(7)
    model.load_state_dict({"moe.router": router, "moe.gate_proj": gate, "moe.up_proj": up, "moe.down_proj": down})
    x = torch.randn(2, 6, H)
    runtime.reset()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x=x)
    torch.testing.assert_close(y, dense_moe(x, router, gate, up, down, 2, False))
    if target == "torch":   # torch's counter sees the router and the chosen experts' products, nothing more
        assert counter.get_total_flops() == 2 * 12 * H * E + 2 * 12 * 3 * 2 * H * I
    else:                   # the router in torch; the experts' three projections are grouped-GEMM launches
        assert counter.get_total_flops() == 2 * 12 * H * E
        assert runtime.LAUNCHES["moe_grouped_gemm"] == 3 and not runtime.FALLBACKS["moe"]


@pytest.mark.parametrize("k", [1, 3])
def test_triton_grouped_gemm_kernel_values_and_gradients(k: int) -> None:
    """The Triton template (run by the interpreter on CPU, 16-row tiles: experts with several tiles, with one
    partial tile and with none) against the dense gated sum, forward and backward."""
    from nnspec.backends.triton import runtime
    from nnspec.backends.triton.kernels.moe import moe

    ws = [t.requires_grad_() for t in weights(9)]
    x = torch.randn(5, 9, H, generator=torch.Generator().manual_seed(10), requires_grad=True)
    runtime.reset()
    got = moe(x, *ws, k, False)
    assert runtime.LAUNCHES["moe_grouped_gemm"] == 3
    want = dense_moe(x, *ws, k, False)
    torch.testing.assert_close(got, want)
    probe = torch.randn(got.shape, generator=torch.Generator().manual_seed(11))
    for g, w in zip(torch.autograd.grad((got * probe).sum(), [x, *ws]),
                    torch.autograd.grad((want * probe).sum(), [x, *ws]), strict=True):
        torch.testing.assert_close(g, w)


def test_bf16_stays_close_to_fp32() -> None:
    w = weights(8)
    x = torch.randn(3, 4, H)
    got = moe_swiglu(x.bfloat16(), *(t.bfloat16() for t in w), 2, True)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), dense_moe(x, *w, 2, True), atol=0.1, rtol=0.05)


class _OpCounts(TorchDispatchMode):
    """Counts the aten ops run under it, by name (`mm`, `cat`, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_inference_writes_into_buffers_and_equals_the_autograd_path() -> None:
    """Without autograd the experts' products write into buffers made once per call: the router's `mm` and three
    per expert some token chose, and no concatenation of per-expert outputs. With autograd (the weights requiring
    gradients) the out-of-place path runs; both give the same values, and the dense gated sum's."""
    w = weights(12)
    x = torch.randn(4, 6, H, generator=torch.Generator().manual_seed(13))
    chosen = torch.softmax(x @ w[0].T, dim=-1).topk(2, dim=-1).indices.unique().numel()
    with torch.no_grad(), _OpCounts() as ops:
        lean = moe_swiglu(x, *w, 2, True)
    assert ops.counts["mm"] == 1 + 3 * chosen and ops.counts["cat"] == 0
    with _OpCounts() as ops:
        taped = moe_swiglu(x, *(t.clone().requires_grad_() for t in w), 2, True)
    assert ops.counts["cat"] == 1 and taped.requires_grad
    torch.testing.assert_close(lean, taped.detach(), rtol=0, atol=0)
    torch.testing.assert_close(lean, dense_moe(x, *w, 2, True))
