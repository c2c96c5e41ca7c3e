"""Learned maps: linear, embedding, layer/RMS normalisation. Their weights are `param` nodes (inputs)."""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.ir import Axis, TensorType, Type
from nnspec.compiler.ops.registry import Effect, find_axis, need_float, need_same_dtype, need_same_size, op, tensor
from nnspec.compiler.sizes import Sizes
from nnspec.errors import SpecError


def unique_axes(axes: tuple[Axis, ...], what: str) -> tuple[Axis, ...]:
    names = [a.name for a in axes]
    for n in names:
        if names.count(n) > 1:
            raise SpecError("E017", f"{what} would give two axes named '{n}'; rename one with an "
                            f"annotation first")
    return axes


def _linear_flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
    x, w = tensor(ins[0], "x"), tensor(ins[1], "w")
    macs = x.numel() * w.axes[0].size
    bias = tensor(out, "out").numel() if len(ins) == 3 else 0
    return 2 * macs + bias


@op("linear", "nn", doc="`y = x W^T + b` over axis `axis` of x; W is `[out, in]`, b is `[out]`. The `in` axis "
    "is replaced, in place, by W's `out` axis.", attrs={"axis": str}, arity=(2, 3), glyph="L",
    flops=_linear_flops, flops_doc="2·numel(x)·out (+ numel(y) with bias)", traits=("matmul",))
def _linear(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x, w = tensor(ins[0], "linear"), tensor(ins[1], "linear weight")
    need_float(x, "linear")
    need_same_dtype([tensor(t, "linear") for t in ins], "linear (input, weight, bias)")
    i = find_axis(x, attrs["axis"], "linear")
    out_axis, in_axis = w.axes
    need_same_size(sizes, x.axes[i].size, in_axis.size,
                   f"linear expects axis {x.axes[i].name} of size {sizes.describe(in_axis.size)}, "
                   f"got {sizes.describe(x.axes[i].size)}")
    if len(ins) == 3:
        b = tensor(ins[2], "linear bias")
        if b.axes != (out_axis,):
            raise SpecError("E012", f"linear bias must be [{out_axis.name}], got {b}")
    axes = x.axes[:i] + (out_axis,) + x.axes[i + 1:]
    return TensorType(unique_axes(axes, "linear"), x.dtype)


@op("embedding", "nn", doc="Row lookup: `y[..., dim] = W[ids[...], dim]`; ids are integers. Row `padding_idx`, "
    "if given, receives no gradient (as torch's and Hugging Face's padding embeddings).",
    attrs={"padding_idx": int}, optional=("padding_idx",), arity=2, glyph="E", flops_doc="0")
def _embedding(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    ids, w = tensor(ins[0], "embedding"), tensor(ins[1], "embedding table")
    if not ids.dtype.is_int:
        raise SpecError("E013", f"embedding indices must be an integer tensor, got {ids}")
    if "padding_idx" in attrs:
        rows = sizes.value(w.axes[0].size)
        if attrs["padding_idx"] < 0 or (rows is not None and attrs["padding_idx"] >= rows):
            raise SpecError("E012", f"padding_idx {attrs['padding_idx']} is not a row of the table ({rows} rows)")
    return TensorType(unique_axes(ids.axes + (w.axes[1],), "embedding"), w.dtype)


def _norm_flops(cost: int) -> Any:
    def flops(ins: list[Type], out: Type, attrs: dict[str, Any]) -> sympy.Expr:
        return cost * tensor(out, "out").numel()
    return flops


def _norm_rule(name: str, n_params: int) -> Any:
    def rule(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
        x = tensor(ins[0], name)
        need_float(x, name)
        need_same_dtype([tensor(t, name) for t in ins[:1 + n_params]], f"{name} (input, weight)")
        i = find_axis(x, attrs["axis"], name)
        for p in ins[1:1 + n_params]:
            p = tensor(p, f"{name} parameter")
            need_same_size(sizes, p.axes[0].size, x.axes[i].size,
                           f"{name} parameter has size {sizes.describe(p.axes[0].size)}, axis {x.axes[i].name} "
                           f"has {sizes.describe(x.axes[i].size)}")
        if not attrs["eps"] > 0:      # NaN too: it would make every output NaN
            raise SpecError("E015", f"{name} eps must be positive, got {attrs['eps']}")
        return x
    return rule


op("layernorm", "normalize", doc="`(x - mean) / sqrt(var + eps) * weight + bias` over axis `axis` (biased "
   "variance).", attrs={"axis": str, "eps": float}, arity=3, glyph="LN", flops=_norm_flops(8),
   flops_doc="8 per element", traits=("norm", "row_norm", "keeps_float32"))(_norm_rule("layernorm", 2))
op("rmsnorm", "normalize", doc="`x / sqrt(mean(x²) + eps) * weight` over axis `axis`.",
   attrs={"axis": str, "eps": float}, arity=2, glyph="RMS", flops=_norm_flops(5),
   flops_doc="5 per element", traits=("norm", "row_norm", "keeps_float32"))(_norm_rule("rmsnorm", 1))


@op("batchnorm", "normalize", doc="Batch normalisation over channel axis `axis`: statistics over every other axis "
    "while training (updating running_mean/running_var with `momentum`), running statistics in eval mode. "
    "Inputs: x, weight, bias, running_mean, running_var, num_batches_tracked.",
    attrs={"axis": str, "eps": float, "momentum": float}, arity=6, glyph="BN", flops=_norm_flops(4),
    flops_doc="4 per element", effect=Effect.STATEFUL, traits=("norm", "keeps_float32"))
def _batchnorm(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "batchnorm")
    need_float(x, "batchnorm")
    need_same_dtype([tensor(t, "batchnorm") for t in ins[:3]], "batchnorm (input, weight, bias)")
    i = find_axis(x, attrs["axis"], "batchnorm")
    for p in ins[1:5]:
        need_same_size(sizes, tensor(p, "batchnorm state").axes[0].size, x.axes[i].size,
                       f"batchnorm state does not match axis {x.axes[i].name}")
    if not 0.0 <= attrs["momentum"] <= 1.0 or attrs["eps"] <= 0:
        raise SpecError("E015", "batchnorm needs 0 <= momentum <= 1 and eps > 0")
    return x


@op("groupnorm", "normalize", doc="Group normalisation (Wu & He 2018): channel axis `axis` is split into `groups` "
    "equal groups; each group is normalised by the mean and biased variance over its channels and every axis not "
    "in `batch` (statistics per index of the `batch` axes), then scaled and shifted per channel by weight and bias. "
    "Inputs: x, weight, bias.", attrs={"axis": str, "groups": int, "batch": tuple, "eps": float}, arity=3,
    glyph="GN", flops=_norm_flops(8), flops_doc="8 per element", traits=("norm", "keeps_float32"))
def _groupnorm(ins: list[Type], attrs: dict[str, Any], sizes: Sizes) -> Type:
    x = tensor(ins[0], "groupnorm")
    need_float(x, "groupnorm")
    need_same_dtype([tensor(t, "groupnorm") for t in ins], "groupnorm (input, weight, bias)")
    i = find_axis(x, attrs["axis"], "groupnorm")
    channels = x.axes[i]
    for name in attrs["batch"]:
        find_axis(x, name, "groupnorm batch")
        if name == channels.name:
            raise SpecError("E017", f"groupnorm: the channel axis '{name}' cannot also be a batch axis")
    groups = attrs["groups"]
    if groups < 1:
        raise SpecError("E015", f"groupnorm needs at least one group, got {groups}")
    n = sizes.value(channels.size)
    if n is not None and n % groups:
        raise SpecError("E014", f"groupnorm: {n} channels on axis {channels.name} do not split into {groups} "
                        f"groups ({n}/{groups} = {n / groups:.4g})")
    if n is None:
        sizes.assume(sympy.Eq(sympy.Mod(channels.size, groups), 0), f"{channels.size} % {groups} == 0")
    for p in ins[1:]:
        need_same_size(sizes, tensor(p, "groupnorm parameter").axes[0].size, channels.size,
                       f"groupnorm parameter does not match axis {channels.name} "
                       f"({sizes.describe(channels.size)} channels)")
    if not attrs["eps"] > 0:      # NaN too: it would make every output NaN
        raise SpecError("E015", f"groupnorm eps must be positive, got {attrs['eps']}")
    return x
