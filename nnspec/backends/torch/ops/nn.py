"""The learned maps' torch rules (linear, embedding, the norms): each op's reference lowering beside its code
emitter. Where the class plan made a torch module of an op's parameters (`members.py`), the emitter calls it."""

from __future__ import annotations

from typing import Any

from nnspec.backends.torch import helpers
from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.frame import Frame
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import input_types, on_last, on_last_tensor, permute
from nnspec.backends.torch.lazy import F, runtime
from nnspec.backends.torch.members import linear_group, module_for
from nnspec.backends.torch.pysrc import Expr, call, method
from nnspec.backends.torch.rules import emits, lowers
from nnspec.backends.torch.source import Stmt
from nnspec.compiler.ir import Node, TensorType


def linear_activation(fn: FunctionGen, lin: Node) -> Node | None:
    """The activation a fused `linear` (option `fused_linear`) applies itself: the next member of its epilogue
    group, when oneDNN has it and it is the linear's only use. Both the linear's and the activation's emitters
    ask, so they agree."""
    group_name = lin.meta.get("fusion_group")
    if not fn.mg.options.fused_linear or group_name is None:
        return None
    group = fn.graph.meta.get("fusion_groups", {}).get(group_name)
    if group is None or group.kind != "epilogue" or group.nodes[0] != lin.name or len(group.nodes) < 2:
        return None
    act = fn.graph[group.nodes[1]]
    users = fn.users(lin.name)
    if act.op not in helpers.LINEAR_ACTIVATIONS or act.inputs[0] != lin.name or len(users) != 1 or \
            lin.name in fn.graph.outputs or act.tensor_type.dtype != lin.tensor_type.dtype:
        return None
    return act


@lowers("linear")
def _lower_linear(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return on_last_tensor(frame, node, ins[0], lambda x: F.linear(x, ins[1], ins[2] if len(ins) > 2 else None))


@emits("linear")
def _emit_linear(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    """`F.linear` / the planned `nn.Linear`; with `fused_linear` the `linear` helper (and `Linear` module), which
    runs oneDNN's linear with the epilogue's activation when autograd records nothing."""
    mod = module_for(fn.plan, "linear", node.inputs[1:])
    t, axis = fn.in_type(node, 0), node.attrs["axis"]
    act = linear_activation(fn, node)   # always None without fused_linear
    kw = {"activation": act.op} if act is not None else {}
    if act is not None:
        fn.mg.note(f"torch: {fn.graph.name}.{node.name}: {act.op} applied by the linear (a oneDNN post-op on CPU "
                   "inference)")
    if mod is not None and act is not None:   # through a helper that still activates a layer PEFT wrapped
        return on_last(ins[0], t, axis, lambda x: call(fn.mg.helper("linear_act"), fn.member(mod), x, **kw))
    if mod is not None:
        return on_last(ins[0], t, axis, lambda x: call(fn.member(mod), x))
    layers = linear_group(fn.plan, fn.graph, node)
    if layers is not None:   # fuse-linear's group of nn.Linear modules, which stay modules (PEFT can wrap them)
        mods = P.ListExpr(tuple(fn.member(a) for a in layers))
        return on_last(ins[0], t, axis, lambda x: call(fn.mg.helper("linear_group"), P.Name("self"), node.name,
                                                       mods, x, **kw))
    func = fn.mg.helper("linear") if fn.mg.options.fused_linear else "F.linear"
    return on_last(ins[0], t, axis, lambda x: call(func, x, *ins[1:], **kw))


@lowers("embedding")
def _lower_embedding(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return F.embedding(ins[0], ins[1], padding_idx=node.attrs.get("padding_idx"))


@emits("embedding")
def _emit_embedding(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    mod = module_for(fn.plan, "embedding", node.inputs[1:])
    if mod is not None:
        return call(fn.member(mod), ins[0])
    if "padding_idx" in node.attrs:
        return call("F.embedding", ins[0], ins[1], padding_idx=node.attrs["padding_idx"])
    return call("F.embedding", ins[0], ins[1])


@lowers("layernorm")
def _lower_layernorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    return on_last_tensor(frame, node, ins[0],
                          lambda x: F.layer_norm(x, (x.shape[-1],), ins[1], ins[2], node.attrs["eps"]))


@emits("layernorm")
def _emit_layernorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    mod = module_for(fn.plan, "layernorm", node.inputs[1:])
    if mod is not None:
        return on_last(ins[0], t, node.attrs["axis"], lambda x: call(fn.member(mod), x))
    n = fn.size(t.axes[t.index(node.attrs["axis"])].size)
    return on_last(ins[0], t, node.attrs["axis"],
                   lambda x: call("F.layer_norm", x, P.TupleExpr((n,)), ins[1], ins[2], node.attrs["eps"]))


@lowers("rmsnorm")
def _lower_rmsnorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    # statistics in fp32, as the reference implementations do for low-precision inputs
    return on_last_tensor(frame, node, ins[0], lambda x: runtime.rms_norm(x, ins[1], node.attrs["eps"]))


@emits("rmsnorm")
def _emit_rmsnorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    mod = module_for(fn.plan, "rmsnorm", node.inputs[1:])
    if mod is not None:
        return on_last(ins[0], fn.in_type(node, 0), node.attrs["axis"], lambda x: call(fn.member(mod), x))
    helper = fn.mg.helper("rms_norm")
    return on_last(ins[0], fn.in_type(node, 0), node.attrs["axis"],
                   lambda x: P.Call(helper, (x, ins[1], P.lit(node.attrs["eps"]))))


@lowers("batchnorm")
def _lower_batchnorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x, w, b, mean, var, tracked = ins
    t = input_types(frame, node)[0]
    i = t.index(node.attrs["axis"])
    training = frame.module.training
    if training:
        tracked.add_(1)
    y = F.batch_norm(x.movedim(i, 1) if x.dim() > 1 else x, mean, var, w, b, training, node.attrs["momentum"],
                     node.attrs["eps"])
    return y.movedim(1, i) if x.dim() > 1 else y


@emits("batchnorm")
def _emit_batchnorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    t = fn.in_type(node, 0)
    i = t.index(node.attrs["axis"])
    x = method(ins[0], "movedim", i, 1) if t.rank > 1 and i != 1 else ins[0]
    mod = module_for(fn.plan, "batchnorm", node.inputs[1:])
    if mod is not None:
        y: Expr = call(fn.member(mod), x)
    else:
        _, w, b, mean, var, tracked = ins
        fn.add(Stmt([(0, ("if self.training:",)), (1, (method(tracked, "add_", 1),))],
                    evaluates=[node.name], inline_into=False))
        y = call("F.batch_norm", x, mean, var, w, b, P.dotted("self.training"), node.attrs["momentum"],
                 node.attrs["eps"])
    return method(y, "movedim", 1, i) if t.rank > 1 and i != 1 else y


def _samples_first(t: TensorType, attrs: dict[str, Any]) -> tuple[list[int], int]:
    """F.group_norm takes `[N, C, *]`: the permutation putting the batch axes first and the channels next (the rest
    keep their order), and how many batch axes there are (flattened into N; none becomes a sample of one)."""
    batch = [t.index(name) for name in attrs["batch"]]
    channel = t.index(attrs["axis"])
    rest = [i for i in range(t.rank) if i not in batch and i != channel]
    return [*batch, channel, *rest], len(batch)


def _inverse(perm: list[int]) -> list[int]:
    return sorted(range(len(perm)), key=perm.__getitem__)


@lowers("groupnorm")
def _lower_groupnorm(frame: Frame, node: Node, ins: list[Any]) -> Any:
    x, weight, bias = ins
    perm, k = _samples_first(input_types(frame, node)[0], node.attrs)
    y = x.permute(perm)
    samples = y.shape[:k]
    y = y.unsqueeze(0) if k == 0 else y.flatten(0, k - 1)
    y = F.group_norm(y, node.attrs["groups"], weight, bias, node.attrs["eps"])
    y = y.squeeze(0) if k == 0 else y.unflatten(0, samples)
    return y.permute(_inverse(perm))


@emits("groupnorm")
def _emit_groupnorm(fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
    x, weight, bias = ins
    t = fn.in_type(node, 0)
    perm, k = _samples_first(t, node.attrs)
    y = permute(x, perm)
    if k == 0:
        y = method(y, "unsqueeze", 0)
    elif k > 1:
        y = method(y, "flatten", 0, k - 1)
    y = call("F.group_norm", y, node.attrs["groups"], weight, bias, node.attrs["eps"])
    if k == 0:
        y = method(y, "squeeze", 0)
    elif k > 1:
        samples = tuple(fn.size(t.axes[t.index(name)].size) for name in node.attrs["batch"])
        y = method(y, "unflatten", 0, P.TupleExpr(samples))
    return permute(y, _inverse(perm))
