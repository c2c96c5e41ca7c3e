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
    so only for CPU inference in eager mode; `torch.backends.mkldnn.flags(enabled=False)` turns it off. Only on
    CPUs with AVX-512 (AMX included): on AVX2-only CPUs its fp32 GEMM measured 12-22% slower than the BLAS behind
    F.linear at GPT-2's shapes (benchmarks/RESULTS.md), more than the fused activation saves, and it has no bf16
    kernels there."""
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
        and torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str = "none"
) -> torch.Tensor:
    """`activation(F.linear(x, weight, bias))`. On CPU inference, one oneDNN call that applies the activation to
    each output tile before writing it; its matrix product also beats the BLAS behind F.linear on some CPUs."""
    post_op, algorithm, torch_fn = LINEAR_ACTIVATIONS[activation]
    if runs_onednn(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)
    if widens(x, weight, bias):
        y = linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    else:
        y = aligned_linear(x, weight, bias) if aligns_rows(x, weight, bias) else F.linear(x, weight, bias)
    return y if torch_fn is None else torch_fn(y)


def widens(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `linear` computes a bf16 call in float32: operands widened (exact), the product rounded to bf16
    once, as torch's bf16 product does after accumulating in float32 (the same numbers up to summation order). On
    CPUs without bf16 matrix kernels (AVX2: oneDNN reports no bf16 support) torch's bf16 product costs about one
    GEMV per row (1.5 ms a row at 2048 x 5632, 2 threads), float32's blocked GEMM with the weight widened per call
    less from ~32 rows on (2.6x at 128 rows, 5.8x at 1024; benchmarks/RESULTS.md); fewer rows, a decoding step's,
    stay in bf16."""
    return (
        eager_cpu_inference(x, weight, bias)
        and x.dtype == torch.bfloat16
        and weight.dim() == 2
        and x.numel() >= 32 * x.shape[-1]
        and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def eager_cpu_inference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a linear's call is CPU inference in eager mode on rows of one dtype, where `linear` may take a route
    of its own (`aligns_rows`, `widens`): autograd records nothing, and no compiler, tracer or autocast sees it."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.device.type == "cpu"
        and x.dim() >= 2
        and x.numel() > 0
        and all(t.dtype == x.dtype for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.is_autocast_enabled("cpu")
    )


def aligns_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether `aligned_linear` computes this call: CPU inference in eager mode (`out=` under autograd or a tracer
    is not worth its complications), a wide output (1024 features or more: a vocabulary head) whose rows would not
    start on 64-byte boundaries. MKL's sgemm ran 1.3-1.5x slower writing such rows (GPT-2's 50257-token head,
    32001, 4099 wide; 1 thread, benchmarks/RESULTS.md); at 1000 features (rows 32-byte aligned) no difference."""
    n = weight.shape[0]
    return eager_cpu_inference(x, weight, bias) and weight.dim() == 2 and n >= 1024 and n * x.element_size() % 64 != 0


def aligned_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` written into rows that start 64 bytes apart: the result is a view of a buffer
    whose rows are padded to a multiple of 64 bytes (strides (..., padded width, 1), at most 60 bytes unused per
    row), the same values; `reshape`, row slicing and splitting the last axis stay views, `.view` merging the
    last axis with another does not apply (call `.contiguous()` first)."""
    n, k = weight.shape
    rows = x.reshape(-1, k)
    per_line = 64 // x.element_size()
    out = rows.new_empty((rows.shape[0], -(-n // per_line) * per_line))[:, :n]
    if bias is None:
        torch.mm(rows, weight.t(), out=out)
    else:
        torch.addmm(bias, rows, weight.t(), out=out)
    return out.view(*x.shape[:-1], n)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state dict) computed by `linear`, with an optional activation."""

    def forward(self, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)


def plain_linears(layers: list[nn.Module]) -> bool:
    """Whether calling these layers runs exactly `Linear.forward` on their own parameters: each a plain
    nn.Linear or `Linear`, not replaced or wrapped (a PEFT LoRA layer, a quantised linear) and without hooks."""
    hooked = nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
    return not hooked and all(
        type(m) in (nn.Linear, Linear) and not (m._forward_hooks or m._forward_pre_hooks) for m in layers
    )


def linear_act(layer: nn.Module, x: torch.Tensor, activation: str) -> torch.Tensor:
    """`activation(layer(x))` for an nn.Linear `layer`: one oneDNN call (`Linear`) where it is a plain one; a
    layer replaced or wrapped (PEFT's LoRA adds its update to the linear's output) is called, then activated."""
    if plain_linears([layer]):
        return linear(x, layer.weight, layer.bias, activation)
    y = layer(x)
    torch_fn = LINEAR_ACTIVATIONS[activation][2]
    return y if torch_fn is None else torch_fn(y)


def weight_stamp(t: torch.Tensor) -> tuple[object, ...]:
    """What a copy made from parameter `t` depends on: its memory (data pointer), its in-place writes since
    (`_version`: `load_state_dict`, an optimizer step), dtype, device and shape. A kept copy (`cat_weights`, a
    decoding step's transposed weight) is valid while the stamp is unchanged; the copy holds `t` too, so that its
    memory is not reused by another tensor while the stamp names it."""
    return (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))


def kept_weight(
    owner: nn.Module, key: str, parts: list[torch.Tensor], dim: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`torch.cat(parts, dim)` of parameters (one part: itself), cast to `dtype` if given, made once and kept on
    `owner` under `key` until one of them is replaced or modified in place (`weight_stamp`); made afresh when
    autograd records or torch traces the call. What `cat_weights` and `cast_weight` keep."""

    def made() -> torch.Tensor:
        whole = parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
        return whole if dtype is None else whole.to(dtype)

    if torch.compiler.is_compiling() or (torch.is_grad_enabled() and any(p.requires_grad for p in parts)):
        return made()
    stamp = [weight_stamp(p) for p in parts]
    cache = owner.__dict__.setdefault("_fused_weights", {})
    kept = cache.get(key)
    if kept is not None and kept[0] == stamp:
        return kept[2]
    with torch.inference_mode(False), torch.no_grad():
        # holding the parts keeps their memory from being reused by other tensors while the stamp names it
        cache[key] = (stamp, [p.detach() for p in parts], made())
    return cache[key][2]


def cat_weights(owner: nn.Module, key: str, parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """`torch.cat(parts, dim)` of parameters (a fused linear's weights), kept across calls (`kept_weight`)."""
    return kept_weight(owner, key, parts, dim)


def cast_weight(owner: nn.Module, key: str, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`weight.to(dtype)` of a parameter (a bf16 model's LM head read in float32), kept across calls
    (`kept_weight`): casting it on every call costs a pass over the weight, which a decoding step otherwise
    spends most of its time on (a ~1B model's head, 262 MB written per token)."""
    return kept_weight(owner, key, [weight], dtype=dtype)


def linear_group(
    owner: nn.Module, key: str, layers: list[nn.Module], x: torch.Tensor, activation: str = "none"
) -> torch.Tensor:
    """The outputs of the `nn.Linear` modules `layers` on `x`, concatenated along the last dim: one `linear` over
    their weights concatenated (kept by `cat_weights`) while each is a plain `nn.Linear`; else each layer is
    called (a PEFT LoRA layer, a quantised linear, a hook: what replaced or wraps a layer runs) and the outputs
    concatenated, the same numbers by another route."""
    if plain_linears(layers):
        weight = cat_weights(owner, key + ".weight", [m.weight for m in layers], 0)
        bias = None if layers[0].bias is None else cat_weights(owner, key + ".bias", [m.bias for m in layers], 0)
        return linear(x, weight, bias, activation)
    y = torch.cat([m(x) for m in layers], dim=-1)
    torch_fn = LINEAR_ACTIVATIONS[activation][2]
    return y if torch_fn is None else torch_fn(y)


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
    """cos and sin of shape [n, d] in the half layout (GPT-NeoX, Llama): each frequency twice; [..., n, d] for
    positions with more axes (one row of positions per sequence of a left-padded batch)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    pos = torch.arange(n, device=device).float() if positions is None else positions.float()
    freqs = pos[..., None] * inv_freq
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


def moe_route(
    x: torch.Tensor, router: torch.Tensor, k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Mixtral's routing of the rows of x [N, H] (router [E, H]): softmax over the experts in fp32, the k largest
    kept, renormalised to sum to 1 when `norm_topk_prob`. The N·k (token, choice) pairs are sorted by expert (a
    stable sort, so each expert's rows keep token order). Returns, in that order, each pair's token and routing
    weight (in x's dtype), and each expert's number of pairs (one host sync: the run lengths)."""
    probs = F.softmax(F.linear(x, router).float(), dim=-1)
    top, index = probs.topk(k, dim=-1)
    if norm_topk_prob:
        top = top / top.sum(dim=-1, keepdim=True)
    flat = index.reshape(-1)
    order = flat.argsort(stable=True)
    token = order // k  # pair p = token·k + choice
    counts = torch.bincount(flat, minlength=router.shape[0]).tolist()
    return token, top.reshape(-1)[order].to(x.dtype), counts


def moe_swiglu(
    x: torch.Tensor,
    router: torch.Tensor,
    gate_proj: torch.Tensor,
    up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    k: int,
    norm_topk_prob: bool,
) -> torch.Tensor:
    """A top-k mixture of SwiGLU experts over the last dim of x, dispatched sparsely: each expert runs only on the
    tokens routed to it (`moe_route`). router is [E, H], gate_proj and up_proj [E, I, H], down_proj [E, H, I].

    The tokens are gathered once in expert order, and each expert's contiguous run goes through its three
    projections as plain matrix products on views of the stacked weights (no weight is copied); the outputs,
    scaled by their routing weights, are added back to their tokens with one index_add_. The same sum as the
    dense form, whose unchosen terms are exactly zero, in k/E of its FLOPs.

    Without autograd (and outside a tracer) the same products write into buffers made once per call: the
    experts' outputs straight into their rows of one [N·k, H] tensor (no concatenation), the gate and up products
    into two [largest run, I] buffers reused by every expert, silu and the product in place. The allocations it
    saves are large and fresh (page faults): 8-27% of a Qwen2-MoE-like layer's CPU time (16 experts of width 256),
    nothing measurable on a Mixtral-like one (1 thread, loaded machine, benchmarks/RESULTS.md). The products and
    their order are the same, so are the values."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    token, weight, counts = moe_route(x, router, k, norm_topk_prob)
    routed = x.index_select(0, token)
    tensors = (x, router, gate_proj, up_proj, down_proj)
    if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or torch.compiler.is_compiling():
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n:
                h = routed[start:start + n]
                outs.append(F.linear(F.silu(F.linear(h, gate_proj[e])) * F.linear(h, up_proj[e]), down_proj[e]))
                start += n
        out = torch.zeros_like(x)
        if outs:
            out = out.index_add(0, token, torch.cat(outs) * weight.unsqueeze(-1))
        return out.reshape(shape)
    ys = routed.new_empty((routed.shape[0], down_proj.shape[1]))
    gate = routed.new_empty((max(counts, default=0), gate_proj.shape[1]))
    up = torch.empty_like(gate)
    start = 0
    for e, n in enumerate(counts):
        if n:
            h = routed[start:start + n]
            a = F.silu(torch.mm(h, gate_proj[e].t(), out=gate[:n]), inplace=True)
            a.mul_(torch.mm(h, up_proj[e].t(), out=up[:n]))
            torch.mm(a, down_proj[e].t(), out=ys[start:start + n])
            start += n
    return torch.zeros_like(x).index_add_(0, token, ys.mul_(weight.unsqueeze(-1))).reshape(shape)


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, chunk: int = 16, sequential_from: int = 1 << 16,
    initial: bool = False,
) -> torch.Tensor:
    """Every h_t = a_t * h_(t-1) + b_t along dim 0 (h_(-1) = h0); with `initial`, h0 first (n + 1 states: the
    state before each step is then a view, not a copy). A step of `sequential_from` elements or more is
    memory-bound: one fused multiply-add per step reads each input once, which no parallel form beats on a CPU.
    Smaller steps are dominated by per-op overhead: within chunks of `chunk` steps the (a, b) pairs are composed
    by doubling (log2(chunk) elementwise passes over all chunks at once), then one step per chunk carries the
    state across chunks. Only products and sums: no division or logarithm, so a_t near 0 is as exact as in the
    step loop."""
    n = a.shape[0]
    a, b = torch.broadcast_tensors(a, b)
    first = 1 if initial else 0
    if a[0].numel() >= sequential_from or n <= 2:
        if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or h0.requires_grad):
            h, steps = h0, [h0] if initial else []
            for t in range(n):
                h = torch.addcmul(b[t], a[t], h)
                steps.append(h)
            return torch.stack(steps)
        out = torch.empty((n + first, *b.shape[1:]), dtype=torch.result_type(b, h0), device=b.device)
        if initial:
            out[0] = h0
        h = h0
        for t in range(n):   # into the preallocated output: no per-step allocation, no final stack
            h = torch.addcmul(b[t], a[t], h, out=out[t + first])
        return out
    size = min(chunk, n)
    count = -(-n // size)
    if count * size != n:  # pad with the identity step (a = 1, b = 0)
        a = torch.cat([a, a.new_ones((count * size - n, *a.shape[1:]))])
        b = torch.cat([b, b.new_zeros((count * size - n, *b.shape[1:]))])
    a, b = a.reshape(count, size, *a.shape[1:]), b.reshape(count, size, *b.shape[1:])
    step = 1
    while step < size:  # Hillis-Steele: position t takes in the pair `step` before it
        b = torch.cat([b[:, :step], a[:, step:] * b[:, :-step] + b[:, step:]], dim=1)
        a = torch.cat([a[:, :step], a[:, step:] * a[:, :-step]], dim=1)
        step *= 2
    h, outs = h0, [h0[None]] if initial else []
    for c in range(count):
        hc = a[c] * h + b[c]
        outs.append(hc)
        h = hc[-1]
    return torch.cat(outs)[:n + first]


def affine_scan(
    step: nn.Module, h0: torch.Tensor, xs: tuple[torch.Tensor, ...], dims: tuple[int, ...], position: int, pair: bool,
    direct: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`for t: h, y_t = step(h, *[x.select(d, t)])` for a step whose new state is a_t * h + b_t with a_t, b_t not
    depending on h (the compiler checked the step's graph). Where a and b are inputs of the step themselves
    (`direct`: their positions among the step's inputs, the state being 0; the compiler checked they have the
    state's type), every a_t and b_t is read from the scanned tensors. Otherwise b_t is the new state from h = 0
    and a_t its derivative in h (exact: d(a h + b)/dh = a), both for every t at once (`torch.func.vmap`). The
    states come from `linear_scan`, and the outputs y_t from one more batched call on the states before each
    step (views of the states: h0, then each step's)."""

    def new_state(h: torch.Tensor, *x: torch.Tensor) -> torch.Tensor:
        out = step(h, *x)
        return out[0] if pair else out

    def coefficients(*x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.func.jvp(lambda h: new_state(h, *x), (torch.zeros_like(h0),), (torch.ones_like(h0),))

    if xs[0].shape[dims[0]] == 1:
        # one position (a decoding step): the step itself, nothing to compose; and torch.compile (2.13) cannot
        # trace `vmap` over an axis of size 1 (a fake tensor on the meta device meets a real one)
        out = step(h0, *(x.select(d, 0) for x, d in zip(xs, dims, strict=True)))
        h, y = out if pair else (out, out)
        return h, y.unsqueeze(position)
    if direct is not None:   # the scan axis first: [T, *state]
        a, b = (xs[i - 1].movedim(dims[i - 1], 0) for i in direct)
    else:
        b, a = torch.func.vmap(coefficients, in_dims=dims)(*xs)
    states = linear_scan(a, b, h0, initial=True)
    if not pair:
        return states[-1], states[1:].movedim(0, position)
    ys = torch.func.vmap(lambda h, *x: step(h, *x)[1], in_dims=(0, *dims), out_dims=position)(states[:-1], *xs)
    return states[-1], ys
