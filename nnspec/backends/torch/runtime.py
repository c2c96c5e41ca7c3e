"""The runtime library of generated files: the functions and classes a generated module defines beside its own
classes (the fused CPU `linear`, `RMSNorm`, the rotary and sinusoidal tables...), and that the reference
interpreter calls for the same ops.

The code generator copies each one it needs into the generated file, verbatim from this module's source
(`helpers.source`), so generated files still import only torch; keep every definition here self-contained:
it may use `torch`, `nn`, `F` and the helpers `helpers.HELPERS` lists as its dependencies, nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# activation -> (oneDNN post-op, its algorithm, the same in torch): what `linear` applies to its output
LINEAR_ACTIVATIONS = {
    "none": ("none", "", None),
    "gelu": ("gelu", "none", F.gelu),
    "gelu_tanh": ("gelu", "tanh", lambda y: F.gelu(y, approximate="tanh")),
    "silu": ("swish", "", F.silu),
    "sigmoid": ("sigmoid", "", torch.sigmoid),
    "tanh": ("tanh", "", torch.tanh),
}


def runs_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Can oneDNN's fused linear compute this call? It has no autograd formula and tracers cannot see into it,
    so only for CPU inference in eager mode; `torch.backends.mkldnn.flags(enabled=False)` turns it off. bf16 only
    where oneDNN has bf16 kernels (AVX-512 or AMX): elsewhere it refuses to build the primitive."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() > 0
        and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
        and all(t.dtype == x.dtype for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """`activation(F.linear(x, weight, bias))`. On CPU inference, one oneDNN call that applies the activation to
    each output tile before writing it; its matrix product also beats the BLAS behind F.linear on some CPUs."""
    post_op, algorithm, torch_fn = LINEAR_ACTIVATIONS[activation]
    if runs_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)
    y = F.linear(x, weight, bias)
    return y if torch_fn is None else torch_fn(y)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`, with an optional activation."""

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)


def cat_weights(owner: nn.Module, key: str, parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """`torch.cat(parts, dim)` of parameters (a fused linear's weights), made once and kept on `owner` until one
    of them is replaced or modified in place; made afresh when autograd records or torch traces the call."""
    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in parts)):
        return torch.cat(parts, dim=dim)
    stamp = [(p.data_ptr(), p._version, p.dtype, p.device, p.shape) for p in parts]
    cache = owner.__dict__.setdefault("_fused_weights", {})
    kept = cache.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[2]
    with torch.inference_mode(False), torch.no_grad():
        # holding the parts keeps their memory from being reused by other tensors while the stamp names it
        cache[key] = (stamp, [p.detach() for p in parts], torch.cat(parts, dim=dim))
    return cache[key][2]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x / sqrt(mean(x^2) + eps) * weight` over the last dim, with statistics in fp32."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dim with a learned scale."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rotary_tables(
    n: int, d: int, base: float, positions: torch.Tensor | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape [n, d] in the half layout (GPT-NeoX, Llama): each frequency twice."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    pos = torch.arange(n, device=device).float() if positions is None else positions.float()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotate the two halves of `dim` as pairs (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=dim)
    return x * cos + torch.cat((-x2, x1), dim=dim) * sin


def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, dim: int) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1), (x2, x3), ... of `dim` (GPT-J layout).

    The tables broadcast against `x` from the right and may have fewer axes (the generated code leaves leading
    size-1 axes out), so they are indexed from the end: `dim` counted from the left names another axis of them.
    """
    d = x.shape[dim]
    table_dim = dim - x.dim() if dim >= 0 else dim
    cos = cos.narrow(table_dim, 0, d // 2).repeat_interleave(2, dim=table_dim)
    sin = sin.narrow(table_dim, 0, d // 2).repeat_interleave(2, dim=table_dim)
    pairs = x.unflatten(dim, (d // 2, 2))
    rotated = torch.stack((-pairs.select(dim + 1, 1), pairs.select(dim + 1, 0)), dim=dim + 1).flatten(dim, dim + 1)
    return x * cos + rotated * sin


def sinusoidal_table(n: int, d: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """[n, d]: sin(pos / base^(2i/d)) at even features, cos at odd ones (Vaswani et al. 2017)."""
    pos = torch.arange(n, device=device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-torch.log(torch.tensor(base)) / d))
    table = torch.zeros(n, d, device=device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


def drop_path(x: torch.Tensor, p: float, dim: int, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016), as timm's `drop_path`: while training, each index along `dim` (each
    sample) keeps its whole slice with probability 1 - p, scaled by 1 / (1 - p), or is zeroed; eval: x itself."""
    if not training or p == 0.0:
        return x
    keep = x.new_empty([n if i == dim else 1 for i, n in enumerate(x.shape)]).bernoulli_(1.0 - p)
    return x * keep.div_(1.0 - p)


def moe_swiglu(
    x: torch.Tensor,
    router: torch.Tensor,
    gate_proj: torch.Tensor,
    up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    k: int,
    norm_topk_prob: bool,
) -> torch.Tensor:
    """A top-k mixture of SwiGLU experts over the last dim of x, computed densely: every expert on every token,
    weighted by its routing weight, which is zero where the router did not pick the expert. Routing as Mixtral's:
    softmax over the experts in fp32, the k largest kept, renormalised to sum to 1 when `norm_topk_prob`.
    router is [E, H], gate_proj and up_proj [E, I, H], down_proj [E, H, I]."""
    probs = F.softmax(F.linear(x, router).float(), dim=-1)
    top, index = probs.topk(k, dim=-1)
    if norm_topk_prob:
        top = top / top.sum(dim=-1, keepdim=True)
    weights = torch.zeros_like(probs).scatter(-1, index, top).to(x.dtype)
    h = F.silu(torch.einsum("...h,eih->...ei", x, gate_proj)) * torch.einsum("...h,eih->...ei", x, up_proj)
    return torch.einsum("...ei,ehi->...h", h * weights.unsqueeze(-1), down_proj)
