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

from nnspec.backends.torch.runtime import LINEAR_ACTIVATIONS, linear, linear_act, plain_linears


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
    """`linear(x, weight, bias, activation)` in a decoding step: a few rows (at most 8) against the [in, out] copy
    of `weight` that `choose_layouts` keeps on `owner` under `key` where that layout measured faster (the BLAS
    reads it as rows of the output, not dot products over the input), re-made if the parameter was replaced or
    changed in place since. Else, and under autograd, tracing or a prefill's many rows, `linear` itself."""
    kept = owner.__dict__.get("_step_layouts", {}).get(key)
    if (
        kept is None
        or x.numel() > 8 * x.shape[-1]
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or (torch.is_grad_enabled() and weight.requires_grad)
    ):
        return linear(x, weight, bias, activation)
    if kept[0] != _stamp(weight):
        kept = owner.__dict__["_step_layouts"][key] = _transposed(weight)
    rows = x.reshape(-1, x.shape[-1])
    y = torch.mm(rows, kept[2]) if bias is None else torch.addmm(bias, rows, kept[2])
    y = y.view(*x.shape[:-1], y.shape[-1])
    torch_fn = LINEAR_ACTIVATIONS[activation][2]
    return y if torch_fn is None else torch_fn(y)


def step_linear(layer: nn.Module, x: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """`activation(layer(x))` for an nn.Linear `layer` in a decoding step: `step_gemv` on its weight where it is
    a plain one; a layer replaced or wrapped (PEFT's LoRA) is called, then activated."""
    if plain_linears([layer]):
        return step_gemv(layer, "weight", x, layer.weight, layer.bias, activation)
    return linear_act(layer, x, activation)


def choose_layouts(model: nn.Module, rows: int, mode: str = "auto") -> int:
    """Which weights a decoding step of `rows` rows (the batch) reads as [in, out] copies: every weight a class
    lists in `STEP_WEIGHTS` ((submodule, parameter) pairs its `decode_step` multiplies by) gets one kept on its
    submodule, for `step_gemv`, when `mode` is "transposed", or with "auto" on CPU when a one-time measurement of
    both layouts at this shape (interleaved, medians) finds it at least 5% faster; "given" keeps none (and drops
    those kept before). A choice is kept with the copy, so later decoders for the same model measure nothing.
    Returns the bytes of the copies kept: the memory this costs besides the model."""
    if mode not in ("auto", "given", "transposed"):
        raise ValueError(f"the weight layout must be auto, given or transposed, got {mode!r}")
    total = 0
    measured: dict[tuple[object, ...], bool] = {}
    for module in model.modules():
        for sub, key in getattr(type(module), "STEP_WEIGHTS", ()):
            owner = module.get_submodule(sub) if sub else module
            try:
                weight: torch.Tensor | None = owner.get_parameter(key)
            except AttributeError:  # not a parameter (a layer replaced by a quantised one): no copy
                weight = None
            kept = owner.__dict__.setdefault("_step_layouts", {})
            if mode == "given" or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                kept.pop(key, None)
                continue
            entry = kept.get(key)
            if entry is not None and entry[0] == _stamp(weight) and entry[2] is not None:
                total += entry[2].numel() * entry[2].element_size()
                continue
            if key in kept and entry is None and mode == "auto":
                continue  # measured before: the given layout was as fast
            shape = (tuple(weight.shape), weight.dtype, weight.device)
            if mode == "transposed":
                faster = True
            elif weight.device.type != "cpu":
                faster = False
            elif shape not in measured:
                faster = measured[shape] = _transposed_faster(weight, rows)
            else:
                faster = measured[shape]
            kept[key] = _transposed(weight) if faster else None
            total += weight.numel() * weight.element_size() if faster else 0
    return total


def _stamp(weight: torch.Tensor) -> tuple[object, ...]:
    return (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(weight.shape))


def _transposed(weight: torch.Tensor) -> tuple[tuple[object, ...], torch.Tensor, torch.Tensor]:
    """(the weight's stamp, the weight (held, so its memory is not reused while the stamp names it), its [in,
    out] copy)."""
    with torch.inference_mode(False), torch.no_grad():
        return _stamp(weight), weight.detach(), weight.detach().t().contiguous()


def _transposed_faster(weight: torch.Tensor, rows: int, reps: int = 7) -> bool:
    """Whether `rows` rows times the [in, out] copy runs at least 5% faster than `F.linear` on `weight` here."""
    import time  # here, not at the top: a generated file imports only torch at its top

    with torch.inference_mode(False), torch.no_grad():
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        w = weight.detach()
        wt = w.t().contiguous()
        given: list[float] = []
        transposed: list[float] = []
        for i in range(reps + 1):  # interleaved, the first of each a warm-up
            start = time.perf_counter()
            F.linear(x, w)
            middle = time.perf_counter()
            torch.mm(x, wt)
            end = time.perf_counter()
            if i:
                given.append(middle - start)
                transposed.append(end - middle)
    return sorted(transposed)[reps // 2] < 0.95 * sorted(given)[reps // 2]  # medians
