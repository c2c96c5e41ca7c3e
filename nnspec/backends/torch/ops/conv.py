"""The conv ops' torch rules: each op's reference lowering beside its code emitter."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import input_types, permute
from nnspec.backends.torch.lazy import F, torch
from nnspec.backends.torch.members import module_for
from nnspec.backends.torch.pysrc import Expr, Lit, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.compiler.ir import Node, TensorType


def _channels_first(x: torch.Tensor, t: TensorType, channel: str, spatial: tuple[str, ...]
                    ) -> tuple[torch.Tensor, list[str], list[int]]:
    """Permute to [batch..., channel, spatial...] and flatten batch axes into one."""
    batch = [n for n in t.names if n != channel and n not in spatial]
    order = batch + [channel, *spatial]
    y = x.permute([t.index(n) for n in order])
    batch_shape = list(y.shape[:len(batch)])
    return y.reshape(-1, *y.shape[len(batch):]), batch, batch_shape


def _restore(y: torch.Tensor, batch: list[str], batch_shape: list[int], channel: str, spatial: list[str],
             out: TensorType) -> torch.Tensor:
    y = y.reshape(*batch_shape, *y.shape[1:])
    names = batch + [channel, *spatial]
    return y.permute([names.index(n) for n in out.names])


def _to_channels_first(fn: FunctionGen, x: Expr, t: TensorType, lead: list[str], rest: list[str]
                       ) -> tuple[Expr, list[str]]:
    """Permute to [batch..., *rest] and flatten the batch axes (every axis not in `rest`) into one."""
    batch = [n for n in t.names if n not in rest]
    y = permute(x, [t.index(n) for n in (*batch, *rest)])
    if len(batch) != 1:
        y = method(y, "reshape", -1, *lead, *[fn.size(t.axes[t.index(n)].size) for n in rest])
    return y, batch


def _from_channels_first(fn: FunctionGen, y: Expr, t: TensorType, batch: list[str], names: list[str],
                         out: TensorType, drop_lead: int = 0) -> Expr:
    if len(batch) != 1 or drop_lead:
        sizes = [fn.size(t.axes[t.index(n)].size) for n in batch] + [fn.size(out.axes[out.index(n)].size)
                                                                     for n in names]
        y = method(y, "reshape", *sizes)
    return permute(y, [[*batch, *names].index(n) for n in out.names])


def _lower_convolution(frame: Frame, node: Node, ins: list[Any], functions: dict[int, Any], out_channel: str,
                       **extra: Any) -> Any:
    """conv and conv_transpose on named axes: channels and spatial axes moved to torch's [N, C, *spatial]."""
    t = input_types(frame, node)[0]
    a = node.attrs
    x, batch, batch_shape = _channels_first(ins[0], t, a["channel"], a["spatial"])
    y = functions[len(a["spatial"])](x, ins[1], ins[2] if len(ins) > 2 else None, stride=a["stride"],
                                     padding=a["padding"], **extra)
    return _restore(y, batch, batch_shape, out_channel, [o.name for o in a["out_axes"]], node.tensor_type)


def _emit_convolution(fn: FunctionGen, node: Node, ins: list[Expr], out_channel: str, **extra: Expr | int) -> Expr:
    """The planned nn.ConvNd / nn.ConvTransposeNd module, else `F.<op>Nd(...)` with `extra` keywords after padding."""
    a = node.attrs
    t, out = fn.in_type(node, 0), node.tensor_type
    y, batch = _to_channels_first(fn, ins[0], t, [], [a["channel"], *a["spatial"]])
    mod = module_for(fn.plan, node.op, node.inputs[1:])
    if mod is not None:
        y = call(fn.member(mod), y)
    else:
        y = call(f"F.{node.op}{len(a['spatial'])}d", y, ins[1], ins[2] if len(ins) > 2 else Lit(None),
                 stride=P.TupleExpr(P.ints(a["stride"])), padding=P.TupleExpr(P.ints(a["padding"])), **extra)
    return _from_channels_first(fn, y, t, batch, [out_channel, *(o.name for o in a["out_axes"])], out)


def _conv_out_channel(node: Node, t: TensorType) -> str:
    return node.tensor_type.axes[t.index(node.attrs["channel"])].name


@lowers("conv")
def _lower_conv(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return _lower_convolution(frame, node, ins, {1: F.conv1d, 2: F.conv2d, 3: F.conv3d},
                              _conv_out_channel(node, input_types(frame, node)[0]),
                              groups=node.attrs.get("groups", 1))


@emits("conv")
def _emit_conv(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    # a plain conv's call is written without `groups=`, as it always was
    groups = {"groups": node.attrs["groups"]} if node.attrs.get("groups", 1) != 1 else {}
    return _emit_convolution(fn, node, ins, _conv_out_channel(node, fn.in_type(node, 0)), **groups)


@lowers("conv_transpose")
def _lower_conv_transpose(frame: Frame, node: Node, ins: list[Any]) -> Any:
    a = node.attrs
    return _lower_convolution(frame, node, ins, {1: F.conv_transpose1d, 2: F.conv_transpose2d,
                                                 3: F.conv_transpose3d},
                              a["out_channel"], output_padding=a["output_padding"], groups=a["groups"])


@emits("conv_transpose")
def _emit_conv_transpose(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    return _emit_convolution(fn, node, ins, a["out_channel"],
                             output_padding=P.TupleExpr(P.ints(a["output_padding"])), groups=a["groups"])


def _interpolate_kwargs(a: dict[str, Any]) -> dict[str, Any]:
    """F.interpolate's keywords besides the size: the mode, and align_corners only where torch takes it."""
    kw: dict[str, Any] = {"mode": a["mode"]}
    if a["mode"] != "nearest":
        kw["align_corners"] = a["align_corners"]
    return kw


def _on_spatial(frame: Frame, node: Node, x: Any, f: Any) -> Any:
    """`f` applied to x viewed as [batch, 1, *spatial] (every axis but the op's spatial ones is batch), its result
    given the op's axes: how pooling and resizing run on named axes."""
    t, a = input_types(frame, node)[0], node.attrs
    spatial = list(a["spatial"])
    batch = [n for n in t.names if n not in spatial]
    y = x.permute([t.index(n) for n in batch + spatial])
    batch_shape = list(y.shape[:len(batch)])
    y = f(y.reshape(-1, 1, *y.shape[len(batch):]))
    y = y.reshape(*batch_shape, *y.shape[2:])
    names = batch + [o.name for o in a["out_axes"]]
    return y.permute([names.index(n) for n in node.tensor_type.names])


@lowers("interpolate")
def _lower_interpolate(frame: Frame, node: Node, ins: list[Any]) -> Any:
    a = node.attrs
    if a["scale"]:
        size: dict[str, Any] = {"scale_factor": a["scale"]}
    else:
        size = {"size": [frame.size(o.size) for o in a["out_axes"]]}
    return _on_spatial(frame, node, ins[0], lambda y: F.interpolate(y, **size, **_interpolate_kwargs(a)))


def _emit_spatial_view(fn: FunctionGen, node: Node, x: Expr) -> tuple[Expr, TensorType, list[str]]:
    """x viewed as [batch, 1, *spatial] (every axis but the op's spatial ones is batch), with x's type and its
    batch axes: the emitted twin of `_on_spatial`, for pooling and resizing."""
    t = fn.in_type(node, 0)
    spatial = list(node.attrs["spatial"])
    batch = [n for n in t.names if n not in spatial]
    y = permute(x, [t.index(n) for n in (*batch, *spatial)])
    return method(y, "reshape", -1, 1, *[fn.size(t.axes[t.index(n)].size) for n in spatial]), t, batch


@emits("interpolate")
def _emit_interpolate(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    y, t, batch = _emit_spatial_view(fn, node, ins[0])
    if a["scale"]:
        size: dict[str, Expr] = {"scale_factor": P.TupleExpr(tuple(P.lit(s) for s in a["scale"]))}
    else:
        size = {"size": P.TupleExpr(tuple(fn.size(o.size) for o in a["out_axes"]))}
    y = call("F.interpolate", y, **size, **{k: P.lit(v) for k, v in _interpolate_kwargs(a).items()})
    return _from_channels_first(fn, y, t, batch, [o.name for o in a["out_axes"]], node.tensor_type, drop_lead=1)


@lowers("pool")
def _lower_pool(frame: Frame, node: Node, ins: list[Any]) -> Any:
    a = node.attrs
    pool = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d,
            ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d, ("avg", 3): F.avg_pool3d}[(a["kind"],
                                                                                        len(a["spatial"]))]
    return _on_spatial(frame, node, ins[0], lambda y: pool(y, a["kernel"], a["stride"], a["padding"]))


@emits("pool")
def _emit_pool(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    a = node.attrs
    y, t, batch = _emit_spatial_view(fn, node, ins[0])
    y = call(f"F.{a['kind']}_pool{len(a['spatial'])}d", y, P.TupleExpr(P.ints(a["kernel"])),
             P.TupleExpr(P.ints(a["stride"])), P.TupleExpr(P.ints(a["padding"])))
    return _from_channels_first(fn, y, t, batch, [o.name for o in a["out_axes"]], node.tensor_type, drop_lead=1)
