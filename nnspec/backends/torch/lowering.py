"""One torch lowering per graph op: the reference semantics of every op in `compiler/ops/`.

Tensors are laid out in their IR type's axis order; ops that align by axis *name* first permute and
unsqueeze operands into the result's order (`align`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from nnspec.compiler.ir import DType, Node, TensorType, repeat_plan
from nnspec.compiler.ops.contract import einsum_string
from nnspec.compiler.ops.index import concat_reference

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
    return F.embedding(ins[0], ins[1], padding_idx=node.attrs.get("padding_idx"))


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
    for block, sub in repeat_plan(node.attrs):  # the iteration's block and weight set (see ir.repeat_plan)
        x = frame.run_block(block, scope.get_submodule(sub) if sub else scope, [x, *rest])[0]
    return x


@lowers("getitem")
def _getitem(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return ins[0][node.attrs["index"]]


# ---- attention and positions ----
@lowers("attention")
def _attention(frame: Frame, node: Node, ins: list[Any]) -> Any:
    from nnspec.compiler.ops.attention import attention_types

    types = _types(frame, node)
    q_t, k_t, v_t = types[:3]
    scores_t, out_t = attention_types(types, node.attrs, frame.interp.model.dims)
    q, k, v = ins[:3]
    s = torch.einsum(einsum_string([q_t, k_t], scores_t), q, k) * node.attrs["scale"]
    extra = list(zip(ins[3:], types[3:], strict=True))
    if node.attrs["has_mask"]:
        m, m_t = extra.pop(0)
        s = s.masked_fill(~align(m, m_t, scores_t.names), float("-inf"))
    if node.attrs["has_bias"]:
        bias, b_t = extra.pop(0)
        s = s + align(bias, b_t, scores_t.names)
    if node.attrs["causal"]:
        qn, kn = node.attrs["query"], node.attrs["key"]
        tq, tk = s.shape[scores_t.index(qn)], s.shape[scores_t.index(kn)]
        allowed = torch.ones(tq, tk, dtype=torch.bool, device=s.device).tril()
        s = s.masked_fill(~align(allowed, TensorType((scores_t.axis(qn), scores_t.axis(kn)), DType.bool),  # type: ignore[arg-type]
                                 scores_t.names), float("-inf"))
    p = torch.softmax(s, dim=scores_t.index(node.attrs["key"]))
    if node.attrs.get("dropout", 0.0) > 0:   # on the probabilities, in training mode only
        p = F.dropout(p, node.attrs["dropout"], training=frame.module.training)
    return torch.einsum(einsum_string([scores_t, v_t], out_t), p, v)


def rotary_tables(n: int, d: int, base: float, positions: torch.Tensor | None, device: Any,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [n, d] in the `half` layout (GPT-NeoX/Llama): frequencies repeated twice."""
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64, device=device).float() / d))
    pos = torch.arange(n, device=device).float() if positions is None else positions.float()
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@lowers("rotary")
def _rotary(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x = ins[0]
    t = _types(frame, node)[0]
    pos, dim = node.attrs["pos"], node.attrs["dim"]
    n, d = x.shape[t.index(pos)], x.shape[t.index(dim)]
    cos, sin = rotary_tables(n, d, node.attrs["base"], ins[1] if len(ins) > 1 else None, x.device, x.dtype)
    table_t = TensorType((t.axis(pos), t.axis(dim)), t.dtype)  # type: ignore[arg-type]
    cos, sin = align(cos, table_t, t.names), align(sin, table_t, t.names)
    i = t.index(dim)
    if node.attrs["style"] == "half":
        x1, x2 = x.chunk(2, dim=i)
        rotated = torch.cat((-x2, x1), dim=i)
        return x * cos + rotated * sin
    # interleaved pairs (x0, x1), (x2, x3), ...: the table holds each frequency twice in a row
    half_cos, half_sin = cos.narrow(i, 0, d // 2), sin.narrow(i, 0, d // 2)
    cos, sin = half_cos.repeat_interleave(2, dim=i), half_sin.repeat_interleave(2, dim=i)
    pairs = x.unflatten(i, (d // 2, 2))
    rotated = torch.stack((-pairs.select(i + 1, 1), pairs.select(i + 1, 0)), dim=i + 1).flatten(i, i + 1)
    return x * cos + rotated * sin


@lowers("sinusoidal")
def _sinusoidal(frame: Frame, node: Node, ins: list[Any]) -> Any:
    n, d = frame.size(node.attrs["pos"].size), frame.size(node.attrs["dim"].size)
    pos = torch.arange(n, device=frame.device, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, device=frame.device, dtype=torch.float32)
                    * (-torch.log(torch.tensor(node.attrs["base"])) / d))
    table = torch.zeros(n, d, device=frame.device)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


# ---- spatial ----
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


@lowers("conv")
def _conv(frame: Frame, node: Node, ins: list[Any]) -> Any:
    t = _types(frame, node)[0]
    a = node.attrs
    x, batch, batch_shape = _channels_first(ins[0], t, a["channel"], a["spatial"])
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(a["spatial"])]
    y = conv(x, ins[1], ins[2] if len(ins) > 2 else None, stride=a["stride"], padding=a["padding"])
    out_channel = node.tensor_type.axes[t.index(a["channel"])].name
    return _restore(y, batch, batch_shape, out_channel, [o.name for o in a["out_axes"]], node.tensor_type)


@lowers("pool")
def _pool(frame: Frame, node: Node, ins: list[Any]) -> Any:
    t = _types(frame, node)[0]
    a = node.attrs
    spatial = a["spatial"]
    batch = [n for n in t.names if n not in spatial]
    y = ins[0].permute([t.index(n) for n in batch + list(spatial)])
    batch_shape = list(y.shape[:len(batch)])
    y = y.reshape(-1, 1, *y.shape[len(batch):])
    fn = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d,
          ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d, ("avg", 3): F.avg_pool3d}[(a["kind"], len(spatial))]
    y = fn(y, a["kernel"], a["stride"], a["padding"])
    y = y.reshape(*batch_shape, *y.shape[2:])
    names = batch + [o.name for o in a["out_axes"]]
    return y.permute([names.index(n) for n in node.tensor_type.names])


@lowers("batchnorm")
def _batchnorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x, w, b, mean, var, tracked = ins
    t = _types(frame, node)[0]
    i = t.index(node.attrs["axis"])
    training = frame.module.training
    if training:
        tracked.add_(1)
    y = F.batch_norm(x.movedim(i, 1) if x.dim() > 1 else x, mean, var, w, b, training, node.attrs["momentum"],
                     node.attrs["eps"])
    return y.movedim(1, i) if x.dim() > 1 else y


@lowers("buffer")
def _buffer(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return frame.module.get_buffer(node.attrs["path"])


@lowers("clamp")
def _clamp(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.clamp(ins[0], node.attrs["min"], node.attrs["max"])


# ---- indexing ----
def _dim(frame: Frame, node: Node) -> int:
    return _types(frame, node)[0].index(node.attrs["axis"])


@lowers("topk")
def _topk(frame: Frame, node: Node, ins: list[Any]) -> Any:
    values, indices = torch.topk(ins[0], node.attrs["k"], dim=_dim(frame, node))
    return (values, indices)


@lowers("sort")
def _sort(frame: Frame, node: Node, ins: list[Any]) -> Any:
    values, indices = torch.sort(ins[0], dim=_dim(frame, node), descending=node.attrs["descending"], stable=True)
    return (values, indices)


@lowers("gather")
def _gather(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.gather(ins[0], _dim(frame, node), ins[1])


@lowers("scatter")
def _scatter(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x, idx, src = ins
    dtype = TORCH_DTYPES[node.tensor_type.dtype]
    x, src = x.to(dtype), src.to(dtype)
    if node.attrs["reduce"] == "add":
        return x.scatter_add(_dim(frame, node), idx, src)
    return x.scatter(_dim(frame, node), idx, src)


@lowers("cumsum")
def _cumsum(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return torch.cumsum(ins[0], dim=_dim(frame, node))


@lowers("concat")
def _concat(frame: Frame, node: Node, ins: list[Any]) -> Any:
    axis = node.attrs["axis"]
    types = _types(frame, node)
    ref = concat_reference(types, axis)  # the same operand the shape rule aligned to
    assert ref is not None
    dim = ref.index(axis)
    shape = [frame.size(a.size) for a in ref.axes]
    parts = []
    for x, t in zip(ins, types, strict=True):
        y = align(x, t, ref.names)
        target = list(shape)
        target[dim] = y.shape[dim]
        parts.append(y.expand(target))
    return torch.cat(parts, dim=dim)


@lowers("slice")
def _slice(frame: Frame, node: Node, ins: list[Any]) -> Any:
    a = node.attrs
    x = ins[0]
    i = _dim(frame, node)
    index = [slice(None)] * x.dim()
    index[i] = slice(a["start"], a["stop"], a["step"])
    return x[tuple(index)]


@lowers("scan")
def _scan(frame: Frame, node: Node, ins: list[Any]) -> Any:
    state, xs = ins[0], ins[1:]
    axis = node.attrs["axis"].name
    dims = [t.index(axis) for t in _types(frame, node)[1:]]
    module = frame.module.get_submodule(node.attrs["scope"])
    outs = []
    for i in range(xs[0].shape[dims[0]]):
        result = frame.run_block(node.attrs["block"], module, [state, *[x.select(d, i) for x, d in
                                                                         zip(xs, dims, strict=True)]])
        state, y = (result[0], result[1]) if len(result) == 2 else (result[0], result[0])
        outs.append(y)
    return (state, torch.stack(outs, dim=node.attrs["position"]))


@lowers("full")
def _full(frame: Frame, node: Node, ins: list[Any]) -> Any:
    shape = [frame.size(a.size) for a in node.attrs["axes"]]
    return torch.full(shape, node.attrs["value"], dtype=TORCH_DTYPES[node.attrs["dtype"]], device=frame.device)
