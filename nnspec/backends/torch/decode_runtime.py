"""What a generated file's decoding step needs besides the model's own code: the static cache of one causal
attention call (`KVCache`), the carried state of one scan over the sequence (`ScanState`) and the mask over the
whole cache (`decode_mask`).

Real code, imported by the node-by-node reference step (`decode.DecodeStep`) and copied verbatim into a generated
file that has a `decode_step` (`decode_codegen`), so the file still imports nothing but torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnspec.backends.torch.runtime import LINEAR_ACTIVATIONS, linear, linear_act, plain_linears, weight_stamp


class KVCache(nn.Module):
    """The keys and values one causal attention call has seen, preallocated for the whole sequence: the step writes
    the new tokens' keys and values at their positions (`index_copy_`, in place, so `torch.export` keeps the
    buffers as mutated state and `torch.compile` one graph for every step) and attends over all of it."""

    def __init__(
        self, k_shape: tuple[int, ...], v_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None
    ) -> None:
        super().__init__()
        self.register_buffer("keys", torch.zeros(k_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("values", torch.zeros(v_shape, dtype=dtype, device=device), persistent=False)


class ScanState(nn.Module):
    """The state one recurrence over the sequence (a `scan`: retention, an SSM) carries from one step to the next,
    preallocated: a step starts from it (from the spec's initial state at position 0) and copies its final state
    back in place, so, as with `KVCache`, `torch.export` keeps it as a mutated buffer."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None) -> None:
        super().__init__()
        self.register_buffer("state", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


def decode_mask(key_mask: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
    """[B, t, length] bool: cache slot j is visible to the new token at position p when j <= p and slot j holds a
    token (`key_mask` [B, length]: 1 = token, 0 = padding or not written yet). A padding query still sees its own
    slot, so no row is empty (as the spec's padding mask does in the full forward)."""
    slots = torch.arange(key_mask.shape[-1], device=key_mask.device)
    causal = slots <= cache_position[:, None]
    own = slots == cache_position[:, None]
    return causal & ((key_mask[:, None, :] != 0) | own)


def step_gemv(
    owner: nn.Module,
    key: str,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str = "none",
) -> torch.Tensor:
    """`linear(x, weight, bias, activation)` in a decoding step: a few rows (at most 8) against the layout of
    `weight` that `choose_layouts` keeps on `owner` under `key` where it measured faster (`_layout_gemv`), re-made
    if the parameter was replaced or changed in place since. Else, and under autograd, tracing or a prefill's many
    rows, `linear` itself."""
    kept = owner.__dict__.get("_step_layouts", {}).get(key)
    if (
        kept is None
        or kept[2] is None
        or x.numel() > 8 * x.shape[-1]
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or (torch.is_grad_enabled() and weight.requires_grad)
    ):
        return linear(x, weight, bias, activation)
    if kept[0] != weight_stamp(weight):
        kept = owner.__dict__["_step_layouts"][key] = (*_layout(weight, kept[3], kept[4]), kept[5])
    rows = x.reshape(-1, x.shape[-1])
    y = _layout_gemv(rows, kept[2], kept[3], bias, weight.shape[0])
    y = y.view(*x.shape[:-1], y.shape[-1])
    torch_fn = LINEAR_ACTIVATIONS[activation][2]
    return y if torch_fn is None else torch_fn(y)


def _layout_gemv(
    rows: torch.Tensor, copy: torch.Tensor, kind: str, bias: torch.Tensor | None, out: int
) -> torch.Tensor:
    """`rows @ weight.T + bias` ([r, out]) from the weight as `_layout` keeps it. A split layout is one batched
    product of `parts` independent matrix-vector products, which torch runs on that many threads: MKL's GEMV
    for a few rows runs on one (measured: the same GB/s at 1 and 2 threads), so a split reads the weight up to
    `parts` times as fast where one core cannot draw the memory bandwidth alone."""
    if kind == "transposed":  # [in, out]
        return torch.mm(rows, copy) if bias is None else torch.addmm(bias, rows, copy)
    w = copy if kind == "split" else copy.transpose(1, 2)  # [parts, in, q]
    parts, q = w.shape[0], w.shape[2]
    x = rows.expand(parts, *rows.shape)
    fused = bias is not None and parts * q == out  # the bias added by the product itself
    y = torch.baddbmm(bias.view(parts, 1, q), x, w) if fused else torch.bmm(x, w)
    # [parts, r, q] -> [r, out (+ padding)]: a view for one row
    y = y.view(1, parts * q) if rows.shape[0] == 1 else y.transpose(0, 1).reshape(rows.shape[0], parts * q)
    if parts * q != out:
        y = y[:, :out] if bias is None else y[:, :out] + bias
    return y


def step_linear(layer: nn.Module, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """`activation(layer(x))` for an nn.Linear `layer` in a decoding step: `step_gemv` on its weight where it is
    a plain one; a layer replaced or wrapped (PEFT's LoRA) is called, then activated."""
    if plain_linears([layer]):
        return step_gemv(layer, "weight", x, layer.weight, layer.bias, activation)
    return linear_act(layer, x, activation)


# the layouts a decoding step may read a weight [out, in] in (`_layout`), and what each costs in memory
LAYOUT_KINDS = {
    "given": "F.linear on the parameter itself (no copy)",
    "split-given": "the parameter viewed as [parts, out/parts, in]: one batched product over the parts (no copy)",
    "transposed": "an [in, out] copy: the BLAS reads it as rows of the output",
    "split": "an [parts, in, out/parts] copy (out padded to a multiple of parts): one batched product",
}


def choose_layouts(model: nn.Module, rows: int, mode: str = "auto") -> int:
    """The layout a decoding step of `rows` rows (the batch) reads each weight in: every weight a class lists in
    `STEP_WEIGHTS` ((submodule, parameter) pairs its `decode_step` multiplies by) gets the kind `mode` names
    (`LAYOUT_KINDS`; "split-given" falls back to "given" where `out` is not a multiple of the parts) or, with
    "auto" on CPU, the fastest kind a one-time measurement at its shape finds (`_fastest_kind`), kept on its
    submodule for `step_gemv`; "given" keeps nothing (and drops what was kept before). Split kinds use one part
    per thread (at least 2 when forced). A choice is kept with its layout, so later decoders for the same model
    at the same thread count measure nothing. Returns the bytes of the copies kept: the memory this costs besides
    the model (a view of the parameter costs none)."""
    if mode != "auto" and mode not in LAYOUT_KINDS:
        raise ValueError(f"the weight layout must be auto, {', '.join(LAYOUT_KINDS)}, got {mode!r}")
    threads = torch.get_num_threads()
    listed = _step_weights(model)
    # a step that streams its weights from memory is timed so (the cache flushed before each call); a model
    # whose weights stay in the CPU's caches is timed warm, as its step runs
    streamed = sum(w.numel() * w.element_size() for _, _, w in listed if w is not None) > _FLUSH_BYTES
    total = 0
    measured: dict[tuple[object, ...], str] = {}
    for owner, key, weight in listed:
        kept = owner.__dict__.setdefault("_step_layouts", {})
        if mode == "given" or weight is None:
            kept.pop(key, None)
            continue
        entry = kept.get(key)
        if (
            entry is not None
            and entry[0] == weight_stamp(weight)
            and (entry[3] == mode or (mode == "auto" and entry[5] and entry[4] == threads))
        ):
            total += _copy_bytes(entry)
            continue
        if mode != "auto":
            kind = mode
        elif weight.device.type != "cpu":
            kind = "given"
        else:
            shape = (tuple(weight.shape), weight.dtype, weight.device)
            if shape not in measured:
                measured[shape] = _fastest_kind(weight, rows, threads, streamed)
            kind = measured[shape]
        parts = max(2, threads) if mode != "auto" else threads
        entry = kept[key] = (*_layout(weight, kind, parts), mode == "auto")
        total += _copy_bytes(entry)
    return total


_FLUSH_BYTES = 64 * 2**20  # more than the last-level caches of the CPUs measured (32 MB)


def _step_weights(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor | None]]:
    """(owner, key, 2-D parameter or None) of each weight a class lists in `STEP_WEIGHTS`."""
    found = []
    for module in model.modules():
        for sub, key in getattr(type(module), "STEP_WEIGHTS", ()):
            owner = module.get_submodule(sub) if sub else module
            try:
                weight: torch.Tensor | None = owner.get_parameter(key)
            except AttributeError:  # not a parameter (a layer replaced by a quantised one): no copy
                weight = None
            found.append((owner, key, weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None))
    return found


def _copy_bytes(entry: tuple[object, ...]) -> int:
    copy = entry[2]
    if not isinstance(copy, torch.Tensor) or entry[3] == "split-given":  # none, or a view of the parameter
        return 0
    return copy.numel() * copy.element_size()


def _layout(weight: torch.Tensor, kind: str, parts: int) -> tuple[object, ...]:
    """(the weight's stamp, the weight (held, so its memory is not reused while the stamp names it), its layout
    of `kind` (None for "given"), the kind, the parts of a split)."""
    out, n_in = weight.shape
    if kind == "split-given" and out % parts:
        kind = "given"  # a view cannot pad
    with torch.inference_mode(False), torch.no_grad():
        w = weight.detach()
        if kind == "transposed":
            copy: torch.Tensor | None = _huge_empty((n_in, out), w).copy_(w.t())
        elif kind == "split-given":
            copy = w.view(parts, out // parts, n_in)
        elif kind == "split":
            q = -(-out // parts)
            copy = _huge_empty((parts, n_in, q), w).copy_(
                F.pad(w, (0, 0, 0, parts * q - out)).view(parts, q, n_in).transpose(1, 2)
            )
        else:
            copy = None
        return weight_stamp(weight), w, copy, kind, parts


def _huge_empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An empty tensor of `like`'s dtype and device, in transparent huge pages (2 MB) where Linux offers them for
    the asking (`madvise`, the common default) and it spans at least one: a step reads each copy once per token,
    streamed from memory, and from huge pages it missed the TLB less, reading GPT-2's layer weights 5-12% faster
    (AMD EPYC, 2 threads, benchmarks/RESULTS.md). Else (other systems, devices, small copies) `torch.empty`."""
    import mmap  # here, not at the top: a generated file imports only torch at its top

    huge = 2 * 2**20
    numel = 1
    for n in shape:
        numel *= n
    nbytes = numel * like.element_size()
    if like.device.type != "cpu" or nbytes < huge or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    memory = mmap.mmap(-1, nbytes + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.madvise(mmap.MADV_HUGEPAGE)
    start = -torch.frombuffer(memory, dtype=torch.uint8, count=1).data_ptr() % huge  # to a 2 MB boundary
    # the tensor holds the mapping (torch.frombuffer keeps its buffer alive), unmapped when both are gone
    return torch.frombuffer(memory, dtype=like.dtype, count=numel, offset=start).view(shape)


def _fastest_kind(weight: torch.Tensor, rows: int, threads: int, streamed: bool, reps: int = 11) -> str:
    """The kind of layout (`LAYOUT_KINDS`) in which `rows` rows times `weight` runs fastest here: medians of `reps`
    interleaved calls of each (split kinds only with several threads, one part each), the weight flushed from
    the caches before each call where `streamed`. A kind that copies the weight must beat the best one that does
    not by 5%: the memory is not spent for noise."""
    import time  # here, not at the top: a generated file imports only torch at its top

    kinds = ["given", "transposed"] + (["split-given", "split"] if threads > 1 else [])
    with torch.inference_mode(False), torch.no_grad():
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        layouts = {k: _layout(weight, k, threads) for k in kinds}
        layouts = {k: v for k, v in layouts.items() if v[3] == k}  # "split-given" where out divides
        flush = torch.ones(_FLUSH_BYTES // 4) if streamed else None
        times: dict[str, list[float]] = {k: [] for k in layouts}
        for i in range(reps + 1):  # interleaved, the first round a warm-up
            for k, (_, w, copy, _, _) in layouts.items():
                if flush is not None:
                    flush.sum()
                start = time.perf_counter()
                if copy is None:
                    F.linear(x, w)
                else:
                    _layout_gemv(x, copy, k, None, w.shape[0])
                if i:
                    times[k].append(time.perf_counter() - start)
    median = {k: sorted(ts)[reps // 2] for k, ts in times.items()}
    free = min((k for k in median if k in ("given", "split-given")), key=median.__getitem__)
    copied = min((k for k in median if k in ("transposed", "split")), key=median.__getitem__)
    return copied if median[copied] < 0.95 * median[free] else free
