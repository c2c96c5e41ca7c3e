"""slice: SliceGPT (Ashkboos et al. 2024) width reduction of the residual stream of a pre-norm transformer.

Computational invariance: if every residual norm is an RMSNorm without weight, rotating the residual stream by
an orthogonal Q (x -> x Q) changes nothing, provided every matrix writing into the stream is multiplied by Q
on its output side and every matrix reading from it by Q on its input side. Keeping the first WIDTH columns
of Q (the principal directions of the stream's activations) then deletes the least-used directions.

What this transform does, on the graph and (`nnspec.backends.torch.transform_params.slice_params`, from `plan`)
on the weights:
- LayerNorm models: the mean subtraction is folded into the writers (each embedding row and each output
  projection column is centred, so the stream has zero mean), which makes every LayerNorm an RMSNorm;
- each norm's scale (and LayerNorm's bias) is folded into the linears that read its output (`W diag(g)`,
  `b + W beta`; a reader without a bias gets one), and the norm keeps a weight of ones;
- writers (embeddings, linears whose output axis is the stream width) become `E Qk`, `Qk^T W`, `Qk^T b`;
  readers become `W Qk * sqrt(D / WIDTH)`; with eps scaled by D / WIDTH each sliced RMSNorm computes what
  the full-width norm computed on the kept directions;
- a head tied to the embedding (`h * wte.weight`) gets its own weight `lm_head.weight` (and bias);
- the stream axis keeps its name and gets a new dim `{name}_sliced` = WIDTH; nothing else changes shape.

One rotation serves the whole stream (the paper's per-layer rotations with a matrix on each skip connection
are not implemented). `nnspec.backends.torch.calibrate.compute_rotation(model, params, calibration_inputs)`
returns Q from the PCA of the stream where the norms read it (`stream_reads` says where).
With WIDTH = D and any orthogonal Q the outputs equal the original's.

Recognised: embeddings, norms, linears, residual adds, dropout and (tied) heads on the stream; models whose
every use of the stream is one of those, with LayerNorm or RMSNorm but not both (GPT-2, Llama and the like).
Anything else is refused with the node and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy

from nnspec.compiler.ir import Axis, Graph, Model, Node, TensorType, repeat_weight_sets
from nnspec.compiler.ops.registry import OPS, with_trait
from nnspec.compiler.sizes import symbol
from nnspec.compiler.transforms.rewrite import GraphBuilder, Rebuilder, TransformError

NORMS = with_trait("row_norm")   # rotation-invariant norms: the residual stream may be rotated through them
PASS_THROUGH = ("dropout",)

Role = tuple[Any, ...] | None      # None, ("stream",) or ("normed", weight path, bias path or None)


@dataclass
class Plan:
    """How slicing treats the model: the stream axis, LayerNorm or not, and per graph and node the action; its
    `instances` say which parameters `slice_params` rotates, folds or centres (plain paths, no tensors)."""

    axis: Axis
    layer_norm: bool
    actions: dict[tuple[str, str], str] = field(default_factory=dict)     # (graph, node) -> action
    # absolute parameter paths, per action instance: (action, node's paths, the norm it reads)
    instances: list[tuple[str, dict[str, str], tuple[str, str | None] | None]] = field(default_factory=list)


def _has(t: Any, axis: Axis) -> bool:
    return isinstance(t, TensorType) and axis in t.axes


def stream_axis(model: Model) -> tuple[Axis, bool]:
    """The residual width every norm normalises, and whether the norms are LayerNorms."""
    found: set[Axis] = set()
    kinds: set[str] = set()
    for g in model.graphs():
        for node in g:
            if node.op in NORMS:
                found.add(g[node.inputs[0]].tensor_type.axis(node.attrs["axis"]))  # type: ignore[arg-type]
                kinds.add(node.op)
    if not found:
        raise TransformError("--slice: the model has no layernorm or rmsnorm, so it is not a pre-norm residual "
                             "model SliceGPT applies to")
    if len(found) > 1:
        raise TransformError(f"--slice: norms act on several widths ({', '.join(sorted(a.name for a in found))}); "
                             "expected one residual stream")
    if len(kinds) > 1:
        raise TransformError("--slice: the model mixes layernorm and rmsnorm on its residual stream")
    return found.pop(), kinds == {"layernorm"}


class _Walker:
    """Follows the stream through every use of every graph, recording what slicing does at each node."""

    def __init__(self, model: Model) -> None:
        self.model = model
        axis, ln = stream_axis(model)
        self.plan = Plan(axis, ln)

    def refuse(self, where: str, node: Node, why: str) -> TransformError:
        return TransformError(f"--slice: {node.op} {where}{node.name}: {why}")

    def act(self, graph: Graph, node: Node, action: str, paths: dict[str, str],
            norm: tuple[str, str | None] | None = None) -> None:
        key = (graph.name, node.name)
        if self.plan.actions.setdefault(key, action) != action:
            raise TransformError(f"--slice: block {graph.name} is used both on and off the residual stream")
        self.plan.instances.append((action, paths, norm))

    def walk(self, graph: Graph, prefix: str, args: list[Role]) -> list[Role]:
        D, ln = self.plan.axis, self.plan.layer_norm
        roles: dict[str, Role] = {}
        for node in graph:
            ins = [roles[i] for i in node.inputs]
            t = node.type
            where = f"{prefix}" if prefix else ""

            def param(i: int, node: Node = node) -> Node | None:
                n = graph[node.inputs[i]] if i < len(node.inputs) else None
                return n if n is not None and n.op == "param" else None

            def path(n: Node | None) -> str:
                return prefix + n.attrs["path"] if n is not None else ""

            if node.op == "input":
                role = args[graph.inputs.index(node.name)] if graph is not self.model.graph else None
                if role is None and _has(t, D) and graph is self.model.graph:
                    raise self.refuse(where, node, "a model input carries the residual width; slicing needs the "
                                      "stream to start at an embedding")
                roles[node.name] = role
                continue
            if OPS[node.op].has("state") or node.op == "const":
                roles[node.name] = None
                continue
            on_stream = [r for r in ins if r is not None]
            if node.op == "embedding" and _has(t, D):
                table = param(1)
                if table is None or table.tensor_type.axes[1] != D:
                    raise self.refuse(where, node, "the embedding table is not a [rows, width] parameter here")
                self.act(graph, node, "embed", {"table": path(table)})
                roles[node.name] = ("stream",)
            elif node.op in NORMS and node.attrs["axis"] == D.name:
                if ins[0] != ("stream",):
                    raise self.refuse(where, node, "a norm over the residual width that does not read the stream")
                w, b = param(1), param(2)
                if w is None or (node.op == "layernorm" and b is None):
                    raise self.refuse(where, node, "the norm's scale (and bias) must be parameters of this block")
                self.act(graph, node, "norm", {"weight": path(w), "bias": path(b)})
                roles[node.name] = ("normed", path(w), path(b) or None)
            elif node.op == "linear" and (node.attrs["axis"] == D.name or _has(t, D)):
                reads = node.attrs["axis"] == D.name
                w, b = param(1), param(2)
                if w is None or (len(node.inputs) > 2 and b is None):
                    raise self.refuse(where, node, "the linear's weight (and bias) must be parameters of this block")
                if any(r is not None for r in ins[1:]):
                    raise self.refuse(where, node, "a weight computed from the stream")
                writes = w.tensor_type.axes[0] == D
                if reads and (ins[0] is None or (ins[0] == ("stream",) and ln)):
                    raise self.refuse(where, node, "reads the residual stream without a norm before it" if ln else
                                      "reads the residual width from something other than the stream")
                if not reads and ins[0] is not None:
                    raise self.refuse(where, node, "a linear over another axis of the stream")
                norm = (ins[0][1], ins[0][2]) if reads and ins[0][0] == "normed" else None  # type: ignore[index]
                action = "read_write" if reads and writes else "read" if reads else "write"
                self.act(graph, node, action, {"weight": path(w), "bias": path(b)}, norm)
                roles[node.name] = ("stream",) if writes else None
            elif node.op == "einsum" and on_stream:
                table = next((graph[i] for i in node.inputs if graph[i].op == "param"), None)
                if len(node.inputs) != 2 or ins[0] is None or ins[0][0] != "normed" or table is None or \
                        table.tensor_type.axes[-1] != D or D.name in node.attrs["out"]:
                    raise self.refuse(where, node, "a contraction with the stream other than a head reading a norm's "
                                      "output against a [rows, width] parameter")
                self.act(graph, node, "head", {"table": path(table), "head": prefix + head_base(graph)},
                         (ins[0][1], ins[0][2]))
                roles[node.name] = None
            elif node.op == "add" and _has(t, D) and on_stream:
                if any(r != ("stream",) for r, i in zip(ins, node.inputs, strict=True) if _has(graph[i].type, D)):
                    raise self.refuse(where, node, "adds a norm's output or another value to the stream (a post-norm "
                                      "block?); only embeddings and sub-layer outputs may be added")
                roles[node.name] = ("stream",)
            elif node.op in PASS_THROUGH and on_stream:
                if ins[0] != ("stream",):
                    raise self.refuse(where, node, "a norm's output continues as the residual stream (a post-norm "
                                      "block?); SliceGPT needs pre-norm blocks")
                roles[node.name] = ins[0]
            elif node.op == "call":
                out = self.walk(self.model.templates[node.attrs["block"]], f"{prefix}{node.attrs['scope']}.", ins)
                roles[node.name] = out[0] if len(out) == 1 else None
                if len(out) > 1 and any(out):
                    raise self.refuse(where, node, "a block returning several values, one of them the stream")
            elif node.op == "repeat" and isinstance(node.type, tuple):   # a carried tuple: (h, e) through layers
                if any(ins):
                    raise self.refuse(where, node, "a repeat carrying several values that reads the stream")
                roles[node.name] = None
            elif node.op == "repeat":
                scope = f"{prefix}{node.attrs['scope']}."
                for sub, block in repeat_weight_sets(node.attrs):
                    out = self.walk(self.model.templates[block], scope + (f"{sub}." if sub else ""), ins)
                    if out[0] != ins[0]:
                        raise self.refuse(where, node, "the repeated block does not return the stream it takes")
                roles[node.name] = ins[0]
            elif on_stream or _has(t, D):
                raise self.refuse(where, node, "acts on the residual stream; only embeddings, norms, linears, residual "
                                  "adds, dropout and a head may (each must commute with a rotation of the stream)")
            else:
                roles[node.name] = None
        outs = [roles[o] for o in graph.outputs]
        if graph is self.model.graph and any(outs):
            raise TransformError("--slice: a model output is the residual stream or a norm's output, which slicing "
                                 "rotates; only outputs computed from it (logits) are preserved")
        return outs


def plan(model: Model) -> Plan:
    """What slicing does to this model (raises TransformError for a model it does not recognise)."""
    w = _Walker(model)
    w.walk(model.graph, "", [])
    return w.plan


class _Slicer(Rebuilder):
    def __init__(self, model: Model, p: Plan, width: int) -> None:
        super().__init__(model)
        self.plan, self.width = p, width
        D = p.axis
        name = f"{D.name}_sliced"
        sym = symbol(name)
        self.model.dims.declared[name] = sym
        self.model.dims.values[sym] = sympy.Integer(width)
        self.new_axis = Axis(D.name, sym)
        self.full = int(model.dims.concrete(D.size))
        self.dropped: set[tuple[str, str]] = set()
        for (g, n), action in p.actions.items():
            if action == "norm" and p.layer_norm:
                norm = model.templates.get(g, model.graph)
                self.dropped.add((g, norm[n].inputs[2]))

    def sub(self, value: Any) -> Any:
        """`value` with the stream axis replaced by its sliced version (inside types, tuples and axes)."""
        if isinstance(value, Axis):
            return self.new_axis if value == self.plan.axis else value
        if isinstance(value, TensorType):
            return TensorType(tuple(self.sub(a) for a in value.axes), value.dtype)
        if isinstance(value, tuple):
            return tuple(self.sub(v) for v in value)
        return value

    def param(self, b: GraphBuilder, path: str, t: TensorType, init: tuple[Any, ...], like: Node) -> str:
        return b.add("param", [], {"path": path, "type": t, "init": init}, hint=path.replace(".", "_"), like=like,
                     meta={"transform": f"slice {self.full}->{self.width}: folded"})

    def visit(self, b: GraphBuilder, node: Node, ins: list[str]) -> str:
        g = self.old_graph
        action = self.plan.actions.get((g.name, node.name))
        if (g.name, node.name) in self.dropped:
            return ""     # a LayerNorm bias, folded into the readers
        note = f"slice {self.full}->{self.width}"
        if action == "norm":
            attrs = {"axis": node.attrs["axis"], "eps": node.attrs["eps"] * self.full / self.width}
            return b.add("rmsnorm", ins[:2], attrs, hint=node.name, like=node,
                         meta={"transform": f"{note}: rmsnorm, scale folded into readers"})
        if action in ("read", "read_write") and self.plan.layer_norm and len(ins) == 2:
            w = b.graph[ins[1]]
            path = w.attrs["path"].rpartition(".")[0] + ".bias"
            bias_t = TensorType((w.tensor_type.axes[0],), w.tensor_type.dtype)
            ins = [*ins, self.param(b, path, bias_t, ("zeros",), g[node.inputs[1]])]
        if action == "head":
            table = next(i for i in node.inputs if g[i].op == "param")
            t = g[table].tensor_type
            base = head_base(g)
            head = self.param(b, f"{base}.weight", self.sub(t), g[table].attrs["init"], g[table])
            ins = [head if i == table else new for i, new in zip(node.inputs, ins, strict=True)]
            out = self.copy(b, node, ins)
            b.graph[out].meta["transform"] = f"{note}: untied head"
            if not self.plan.layer_norm:
                return out
            bias = self.param(b, f"{base}.bias", TensorType((t.axes[0],), t.dtype), ("zeros",), g[table])
            return b.add("add", [out, bias], {}, hint=f"{node.name}_bias", meta={"transform": f"{note}: head bias"})
        out = self.copy(b, node, ins)
        if action:
            b.graph[out].meta["transform"] = f"{note}: {action}"
        return out

    def copy(self, b: GraphBuilder, node: Node, ins: list[str], **changes: Any) -> str:
        changes = {**{k: self.sub(v) for k, v in node.attrs.items() if k not in ("params", "result")}, **changes}
        return super().copy(b, node, ins, **changes)


def slice_model(model: Model, width: int) -> Model:
    """`model` with its residual stream sliced to `width` (shapes only; `slice_params` converts weights)."""
    p = plan(model)
    full = int(model.dims.concrete(p.axis.size))
    if not 1 <= width <= full:
        raise TransformError(f"--slice {width}: the width must be between 1 and the stream's {full}")
    out = _Slicer(model, p, width).run()
    out.transforms.append(f"slice {p.axis.name} {full}->{width}")
    out.weight_maps = {}   # sliced weights are no longer a checkpoint's
    return out


def head_base(graph: Graph) -> str:
    """The scope of the untied head's parameters: `lm_head`, or a name the graph does not use yet."""
    taken = {n.attrs["path"].rpartition(".")[0] for n in graph if n.op == "param"}
    base = "lm_head"
    while base in taken:
        base += "_sliced"
    return base


# ---- what calibration measures ----
@dataclass(frozen=True)
class StreamReads:
    """Where the rotation's statistics come from (see `nnspec.backends.torch.calibrate.compute_rotation`): the
    residual stream's activations as each norm reads them (input 0 of these (graph, node) pairs, along the norm's
    `axis`), `width` features wide; centred first in a LayerNorm model (its mean is folded away)."""

    norms: frozenset[tuple[str, str]]
    width: int
    layer_norm: bool


def stream_reads(model: Model) -> StreamReads:
    """The norms whose inputs a calibration run records, for the rotation `slice_params` applies."""
    p = plan(model)
    return StreamReads(frozenset(key for key, action in p.actions.items() if action == "norm"),
                       int(model.dims.concrete(p.axis.size)), p.layer_norm)
