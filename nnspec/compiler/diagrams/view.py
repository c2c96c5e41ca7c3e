"""What a diagram draws: one graph of the checked model, with block calls inlined to a depth.

`flatten` turns a `Graph` into a list of drawable ops over tensor values: parameters and scalar constants
become facts of the op that uses them (parameters are not wires), tuple members become separate values,
and calls/repeats nested less than `expand` deep are inlined (a repeat's body once, remembered as a
`Region` so it can be bracketed `xN`). Everything is in graph order, which is topological.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from nnspec.compiler.analysis import Analysis, runs_block
from nnspec.compiler.elaborate import UsageError
from nnspec.compiler.ir import Graph, Model, Node, TensorType
from nnspec.compiler.ops import OPS


@dataclass(frozen=True)
class Param:
    path: str            # local to the block that declares it: `c_attn.weight`
    type: TensorType
    buffer: bool = False # non-learned state (running statistics): a fact of its op too, but not learned
    trainable: bool = True   # False: frozen by a transform (lora)

    @property
    def short(self) -> str:
        """`c_attn.weight` -> `c_attn`: the name a learned map is drawn with."""
        head, _, last = self.path.rpartition(".")
        return head if last in ("weight", "bias") and head else self.path

    @property
    def is_bias(self) -> bool:
        return self.path.rpartition(".")[2] == "bias"


@dataclass(frozen=True)
class Const:
    value: Any

    def __str__(self) -> str:
        v = self.value
        if isinstance(v, float) and math.isinf(v):
            return "−∞" if v < 0 else "∞"
        if isinstance(v, float):
            return f"{v:.4g}".replace("-", "−")
        return str(v).replace("-", "−")


@dataclass
class Value:
    id: str
    type: TensorType
    label: str           # the node name a reader knows it by


@dataclass
class Op:
    id: str              # unique path: `attn/c_attn`
    node: Node
    inputs: list[str]    # value ids of the tensor operands, in the node's input order
    outputs: list[str]   # value ids; several for a tuple-valued call
    params: list[Param] = field(default_factory=list)     # learned parameters, in input order
    buffers: list[Param] = field(default_factory=list)
    consts: list[Const] = field(default_factory=list)
    operands: list[TensorType | Param | Const] = field(default_factory=list)  # every input, in order
    param_count: int = 0
    block: str = ""      # for a call or repeat: the block's name
    members: tuple[str, ...] = ()  # a split fan (`fuse`): its members' names, one per output
    split: str = ""                # and the axis it splits
    mask: tuple[str, ...] = ()     # a mask box (`fuse`): the score axes it relates
    mask_shape: str = ""           # the source op drawn inside it (`causal_mask`), if fused

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def family(self) -> str:
        return OPS[self.node.op].family if self.node.op in OPS else "unknown"

    @property
    def learned(self) -> bool:
        return self.param_count > 0

    @property
    def bias(self) -> bool:
        return any(p.is_bias for p in self.params)


@dataclass
class Region:
    """An inlined repeat: its body's ops are drawn once inside brackets labelled `xcount`."""

    scope: str
    count: int
    shared: bool
    ops: list[str]
    transform: str = ""  # the repeat node's transform notes (shared groups, variant iterations), "; "-joined


@dataclass
class Flat:
    name: str
    ops: list[Op] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    inputs: list[tuple[str, str]] = field(default_factory=list)    # (name shown, value id)
    outputs: list[tuple[str, str]] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)


def transform_notes(meta: dict[str, Any]) -> list[str]:
    """The notes transforms left on a node or graph (`meta["transform"]`, "; "-joined), one per item."""
    return [n for n in str(meta.get("transform", "")).split("; ") if n]


def repeat_notes(model: Model, node: Node) -> list[str]:
    """A call's or repeat's transform notes, then for a repeat each variant of its block that some iterations run
    (`iterations 2, 3: layer_lora (lora r=4)`; made by --drop and --lora on some layers)."""
    notes = transform_notes(node.meta)
    runs: dict[str, list[int]] = {}
    for index, block in node.attrs.get("variants", ()):
        runs.setdefault(block, []).append(index)
    for block, indices in runs.items():
        variant = model.templates[block]
        # its graph's notes (drop), then its nodes' (adapters, calls into changed blocks), not the frozen weights
        found = [*transform_notes(variant.meta), *(n for v in variant for n in transform_notes(v.meta))]
        what = "; ".join(n for n in dict.fromkeys(found) if not n.startswith("frozen"))
        word = "iteration" if len(indices) == 1 else "iterations"
        notes.append(f"{word} {', '.join(map(str, indices))}: {block}" + (f" ({what})" if what else ""))
    return notes


def drawn_in_place(node: Node) -> bool:
    """A call or repeat: its block runs on the operands whole, so a diagram may draw the block's body in place of
    the node (a repeat's once, bracketed); a scan's step sees one position at a time and is drawn as one box."""
    return runs_block(node) and node.op != "scan"


_SSA = re.compile(r"_\d+$")    # the frontend's renaming of a second value bound to one name (`x_1`, `c_attn_1`)


def shown_name(node: Node, scope: str = "") -> str:
    """The name a reader knows an op's value by: the spec variable its statement bound (`qkv`), else a node name
    the spec wrote (`q` of `q, k, v = split(...)`, `logits`), else the layer's parameter scope, else the op
    itself; never an SSA name like `c_attn_1` or `einsum_1_1` that no spec contains."""
    if node.meta.get("var"):
        return str(node.meta["var"])
    if node.name != node.op and not _SSA.search(node.name):
        return node.name
    return scope or node.op


def named_shape(t: TensorType) -> str:
    """A shape as the spec names its axes (`B x T x K`, `B x T x n_head*head_dim`, `B x H x W x C`), not as sizes
    (`B x T x 2`, `B x T x head_dim*n_head`, `B x height/ph x ...`): what the reader wrote, in the order written."""
    return " x ".join(a.name for a in t.axes) or "scalar"


def param_of(node: Node) -> Param:
    """A `param` or `buffer` node as the diagrams show it: a fact of the op that reads it."""
    return Param(node.attrs["path"], node.attrs["type"], node.op == "buffer", node.attrs.get("trainable", True))


def select_graph(model: Model, block: str | None) -> Graph:
    """The model's body, or the template of block `block` (its first binding when checked several times)."""
    if block is None:
        return model.graph
    if block in model.templates:
        return model.templates[block]
    for g in model.templates.values():
        if g.meta.get("block") == block:
            return g
    known = ", ".join(sorted(dict.fromkeys(g.meta.get("block", g.name) for g in model.templates.values())))
    raise UsageError(f"no block named {block!r} in {model.name}" + (f" (blocks: {known})" if known else
                                                                     " (it has no blocks)"))


def flatten(model: Model, graph: Graph, expand: int) -> Flat:
    flat = Flat(graph.name)
    env: dict[str, Any] = {}
    for name in graph.inputs:
        node = graph[name]
        flat.values[name] = Value(name, node.tensor_type, node.attrs.get("name", name))
        env[name] = name
        flat.inputs.append((node.attrs.get("name", name), name))
    _inline(model, Analysis(model), graph, env, "", 0, expand, flat)
    if graph is model.graph:
        flat.outputs = [(shown, env[node_name]) for shown, node_name in model.outputs.items()]
    else:
        several = len(graph.outputs) > 1
        flat.outputs = [(f"out[{k}]" if several else "out", env[o]) for k, o in enumerate(graph.outputs)]
    return flat


def _inline(model: Model, an: Analysis, graph: Graph, env: dict[str, Any], prefix: str, depth: int,
            expand: int, flat: Flat) -> None:
    for node in graph:
        if node.op == "input":
            continue
        if OPS[node.op].has("state"):
            env[node.name] = param_of(node)
        elif node.op == "const":
            env[node.name] = Const(node.attrs["value"])
        elif node.op == "getitem":
            env[node.name] = env[node.inputs[0]][node.attrs["index"]]
        elif drawn_in_place(node) and depth < expand:
            template = model.templates[node.attrs["block"]]
            sub = {t: env[i] for t, i in zip(template.inputs, node.inputs, strict=True)}
            start = len(flat.ops)
            _inline(model, an, template, sub, f"{prefix}{node.attrs['scope']}/", depth + 1, expand, flat)
            results = [sub[o] for o in template.outputs]
            env[node.name] = results if isinstance(node.type, tuple) else results[0]
            if node.op == "repeat":
                flat.regions.append(Region(node.attrs["scope"], node.attrs["count"], node.attrs["shared"],
                                           [op.id for op in flat.ops[start:]], "; ".join(repeat_notes(model, node))))
        else:
            env[node.name] = _op(model, an, node, env, prefix, flat)


def _op(model: Model, an: Analysis, node: Node, env: dict[str, Any], prefix: str, flat: Flat) -> Any:
    op = Op(prefix + node.name, node, [], [])
    for name in node.inputs:
        item = env[name]
        if isinstance(item, Param):
            (op.buffers if item.buffer else op.params).append(item)
            op.operands.append(item)
        elif isinstance(item, Const):
            op.consts.append(item)
            op.operands.append(item)
        else:
            op.inputs.append(item)
            op.operands.append(flat.values[item].type)
    op.param_count = sum(int(model.dims.concrete(p.type.numel())) for p in op.params)
    if drawn_in_place(node):
        op.param_count += an.node_params(node)
    elif "block" in node.attrs and node.attrs["block"] in model.templates:     # scan and later block-taking ops
        op.param_count += an.graph_params(node.attrs["block"])
    if "block" in node.attrs and node.attrs["block"] in model.templates:
        op.block = str(model.templates[node.attrs["block"]].meta.get("block", node.attrs["block"]))
    types = node.type if isinstance(node.type, tuple) else (node.type,)
    for k, t in enumerate(types):
        vid = op.id if len(types) == 1 and not isinstance(node.type, tuple) else f"{op.id}#{k}"
        flat.values[vid] = Value(vid, t, node.name if len(types) == 1 else f"{node.name}[{k}]")
        op.outputs.append(vid)
    flat.ops.append(op)
    return op.outputs if isinstance(node.type, tuple) else op.outputs[0]
