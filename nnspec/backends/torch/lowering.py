"""One torch lowering per graph op: the reference semantics of every op in `compiler/ops/`.

Tensors are laid out in their IR type's axis order; ops that align by axis *name* first permute and
unsqueeze operands into the result's order (`align`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nnspec.compiler.ir import DType, Node, TensorType
from nnspec.compiler.ops.contract import einsum_string

if TYPE_CHECKING:
    from nnspec.backends.torch.interpreter import Frame

TORCH_DTYPES = {DType.float32: torch.float32, DType.float16: torch.float16, DType.bfloat16: torch.bfloat16,
                DType.int64: torch.int64, DType.int32: torch.int32, DType.bool: torch.bool}

Lowering = Callable[["Frame", Node, list[Any]], Any]
LOWERINGS: dict[str, Lowering] = {}


def lowers(*ops: str) -> Callable[[Lowering], Lowering]:
    def register(fn: Lowering) -> Lowering:
        for op in ops:
            LOWERINGS[op] = fn
        return fn
    return register


def align(x: torch.Tensor, t: TensorType, names: tuple[str, ...]) -> torch.Tensor:
    """View `x` (axes `t.names`) with axes ordered as in `names`, size-1 where it lacks one."""
    present = [n for n in names if n in t.names]
    if list(present) != list(t.names):
        x = x.permute([t.names.index(n) for n in present])
    shape = []
    it = iter(x.shape)
    for n in names:
        shape.append(next(it) if n in t.names else 1)
    return x.reshape(shape) if len(shape) != x.dim() else x


def _types(frame: Frame, node: Node) -> list[TensorType]:
    return [frame.graph[i].type for i in node.inputs]  # type: ignore[misc]


UNARY_TORCH: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg": torch.neg, "abs": torch.abs, "relu": F.relu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "sigmoid": torch.sigmoid,
    "tanh": torch.tanh, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "rsqrt": torch.rsqrt,
    "logical_not": torch.logical_not,
}

BINARY_TORCH: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div,
    "floordiv": lambda a, b: torch.div(a, b, rounding_mode="floor"), "mod": torch.remainder, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum, "eq": torch.eq, "ne": torch.ne, "lt": torch.lt,
    "le": torch.le, "gt": torch.gt, "ge": torch.ge, "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
}


@lowers(*UNARY_TORCH)
def _unary(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return UNARY_TORCH[node.op](ins[0])


@lowers(*BINARY_TORCH, "where")
def _broadcasting(frame: Frame, node: Node, ins: list[Any]) -> Any:
    names = node.tensor_type.names
    args = [align(x, t, names) for x, t in zip(ins, _types(frame, node), strict=True)]
    if node.op == "where":
        return torch.where(args[0], args[1], args[2]).to(TORCH_DTYPES[node.tensor_type.dtype])
    return BINARY_TORCH[node.op](args[0], args[1]).to(TORCH_DTYPES[node.tensor_type.dtype])


@lowers("cast")
def _cast(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0].to(TORCH_DTYPES[node.attrs["dtype"]])


@lowers("dropout")
def _dropout(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return F.dropout(ins[0], node.attrs["p"], training=frame.module.training)


def _last(frame: Frame, node: Node, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply `fn` with the op's axis moved last (torch's norms and linear act on the last axis)."""
    i = _types(frame, node)[0].index(node.attrs["axis"])
    last = i == x.dim() - 1
    y = fn(x if last else x.movedim(i, -1))
    return y if last else y.movedim(-1, i)


@lowers("linear")
def _linear(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return _last(frame, node, ins[0], lambda x: F.linear(x, ins[1], ins[2] if len(ins) > 2 else None))


@lowers("embedding")
def _embedding(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return F.embedding(ins[0], ins[1])


@lowers("layernorm")
def _layernorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return _last(frame, node, ins[0],
                 lambda x: F.layer_norm(x, (x.shape[-1],), ins[1], ins[2], node.attrs["eps"]))


@lowers("rmsnorm")
def _rmsnorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    def rms(x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32, as the reference implementations do for low-precision inputs
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + node.attrs["eps"])
        return ins[1] * h.to(x.dtype)
    return _last(frame, node, ins[0], rms)


@lowers("softmax")
def _softmax(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.softmax(ins[0], dim=_types(frame, node)[0].index(node.attrs["axis"]))


@lowers("sum", "mean", "amax", "amin")
def _reduce(frame: Frame, node: Node, ins: list[Any]) -> Any:
    fn = {"sum": torch.sum, "mean": torch.mean, "amax": torch.amax, "amin": torch.amin}[node.op]
    return fn(ins[0], dim=_types(frame, node)[0].index(node.attrs["axis"]))


@lowers("einsum")
def _einsum(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.einsum(einsum_string(_types(frame, node), node.tensor_type), *ins)


@lowers("rearrange")
def _rearrange(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    perm = node.attrs["perm"]
    if tuple(perm) != tuple(range(len(perm))):
        x = x.permute(perm)
    return x.reshape([frame.size(a.size) for a in node.attrs["axes"]])


@lowers("select")
def _select(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0].select(_types(frame, node)[0].index(node.attrs["axis"]), node.attrs["index"])


@lowers("arange")
def _arange(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.arange(frame.size(node.attrs["axis"].size), device=frame.device)


@lowers("causal_mask")
def _causal_mask(frame: Frame, node: Node, ins: list[Any]) -> Any:
    q, k = frame.size(node.attrs["q"].size), frame.size(node.attrs["k"].size)
    return torch.ones(q, k, dtype=torch.bool, device=frame.device).tril()


@lowers("input")
def _input(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return frame.args[frame.graph.inputs.index(node.name)]


@lowers("param")
def _param(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return frame.module.get_parameter(node.attrs["path"])


@lowers("const")
def _const(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.tensor(node.attrs["value"], dtype=TORCH_DTYPES[node.tensor_type.dtype], device=frame.device)


@lowers("call")
def _call(frame: Frame, node: Node, ins: list[Any]) -> Any:
    out = frame.run_block(node.attrs["block"], frame.module.get_submodule(node.attrs["scope"]), ins)
    return out[0] if len(out) == 1 else tuple(out)


@lowers("repeat")
def _repeat(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x, rest = ins[0], ins[1:]
    scope = frame.module.get_submodule(node.attrs["scope"])
    for i in range(node.attrs["count"]):
        layer = scope if node.attrs["shared"] else scope.get_submodule(str(i))
        x = frame.run_block(node.attrs["block"], layer, [x, *rest])[0]
    return x


@lowers("getitem")
def _getitem(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0][node.attrs["index"]]
