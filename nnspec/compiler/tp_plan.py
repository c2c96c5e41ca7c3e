"""A tensor-parallel plan derived from the named axes of a checked model (torch-free).

Inside each repeated block (and the blocks it calls), every `linear` is classified by the axes it reads and writes:

- its input is replicated and its output axis is not the residual stream's (the axis the repeat carries): it widens
  into heads or a feed-forward width, so it is **colwise**: each rank computes a contiguous slice of the output
  features. The axis that slice runs over is the output axis's outermost named factor as the graph next views it
  (`q[B, T, (num_key_value_heads groups head_dim)]` shards `num_key_value_heads`); literal factors written before it
  (`(3 n_head head_dim)`, a fused q/k/v) make the slice *strided*: each of the 3 chunks is split separately.
- its input is sharded and it contracts over the sharded axis: **rowwise** (each rank holds the matching input rows of
  the weight; the partial sums are all-reduced), and its output is replicated again.

Between the two, the sharded axis must survive every op unchanged (pointwise ops, rotary, attention over heads, views
that split or merge it as the outermost named factor); an op that reduces over it, or mixes a sharded tensor with a
replicated one holding the same axis, refuses the plan at that op's place in the spec. Norms that read the residual
stream are listed as **sequence_parallel** candidates (applied only on request). A sharded axis whose size the mesh
size does not divide refuses the plan, naming the axis and the linear.

This is sound because a colwise linear followed by axis-preserving ops and a rowwise linear computes, on each rank,
the same function restricted to its slice of the sharded axis, and the rowwise all-reduce sums the slices back
(Megatron-LM's split of attention and MLP). `local_dims` lists the dims whose per-rank value the generated module
must see (the head counts its reshapes read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.ir import Graph, Model, Node
from nnspec.compiler.ops import OPS
from nnspec.spec.source import Span


class PlanError(Exception):
    """A model that cannot be split or sharded as asked: the reason, at the place in the spec it comes from."""

    def __init__(self, message: str, span: Span | None = None) -> None:
        self.message, self.span = message, span
        where = f"{span.source.name}:{span.line}:{span.col}: " if span is not None else ""
        super().__init__(f"{where}error: {message}")


@dataclass
class Rule:
    """One module's parallel style: `path` is a module path pattern (`layers.*.self_attn.q_proj`)."""

    path: str
    style: str             # colwise | rowwise | sequence_parallel
    axis: str = ""         # the sharded factor (`num_key_value_heads`, `intermediate_size`)
    stride: int = 1        # colwise over (k, axis, ...): each of k leading chunks is sharded separately
    why: str = ""
    span: Span | None = None

    @property
    def hf_style(self) -> str:
        """The Hugging Face `tp_plan` name: theirs has no strided colwise, so a fused q/k/v says so."""
        if self.style == "colwise" and self.stride > 1:
            return f"colwise_strided_{self.stride}"
        return self.style


@dataclass
class TPPlan:
    size: int
    rules: list[Rule] = field(default_factory=list)
    local_dims: dict[str, int] = field(default_factory=dict)   # dim -> its value per rank
    global_dims: dict[str, int] = field(default_factory=dict)

    def styles(self, *, sequence_parallel: bool = False) -> list[Rule]:
        return [r for r in self.rules if sequence_parallel or r.style != "sequence_parallel"]

    def hf(self, *, sequence_parallel: bool = False) -> dict[str, str]:
        """The plan as a Hugging Face `base_model_tp_plan` dict (module pattern -> style)."""
        return {r.path: r.hf_style for r in self.styles(sequence_parallel=sequence_parallel)}

    def explain(self) -> list[str]:
        lines = [f"tensor parallel over {self.size} ranks:"]
        width = max((len(r.path) for r in self.rules), default=0)
        for r in self.rules:
            lines.append(f"  {r.path:<{width}}  {r.hf_style:<17} {r.why}")
        for dim, local in self.local_dims.items():
            lines.append(f"  local {dim} = {self.global_dims[dim]} / {self.size} = {local} per rank")
        return lines


@dataclass
class _Shard:
    factor: str       # the sharded dim's name, as it appears in axis names
    rule: Rule | None  # the colwise rule that made it, still open to resolving its factor from the next view


def derive_tp_plan(model: Model, size: int) -> TPPlan:
    """The plan for a mesh of `size` ranks, or PlanError naming the axis or op that prevents it."""
    if size < 1:
        raise PlanError(f"a tensor-parallel size is at least 1, got {size}")
    plan = TPPlan(size)
    for node, prefix in _repeats(model, model.graph, ""):
        _Deriver(model, plan, node).block(model.templates[node.attrs["block"]], f"{prefix}{node.attrs['scope']}.*.")
    if not any(r.style == "colwise" for r in plan.rules):
        raise PlanError("no linear in a repeated block widens the residual stream into heads or a feed-forward "
                        "width: nothing to shard column-wise")
    for rule in plan.rules:
        if rule.style == "colwise" and rule.axis not in plan.global_dims:
            _divides(model, plan, rule)
    return plan


def _repeats(model: Model, graph: Graph, prefix: str) -> list[tuple[Node, str]]:
    """The outermost repeats, found through block calls (BERT's `encoder` block holds its `layer` repeat)."""
    out = []
    for node in graph:
        if node.op == "repeat":
            out.append((node, prefix))
        elif node.op == "call":
            out += _repeats(model, model.templates[node.attrs["block"]], f"{prefix}{node.attrs['scope']}.")
    return out


def _divides(model: Model, plan: TPPlan, rule: Rule) -> None:
    sizes = model.dims
    symbol = sizes.lookup(rule.axis)
    value = sizes.value(symbol) if symbol is not None else _literal_axis(model, rule.axis)
    if value is None:
        raise PlanError(f"{rule.path} shards axis {rule.axis}, whose size depends on the input; tensor parallelism "
                        "needs a declared size", rule.span)
    if value % plan.size:
        raise PlanError(f"{rule.path} shards axis {rule.axis} = {value} over {plan.size} ranks, which does not divide "
                        f"it; use a tensor-parallel size dividing {value}", rule.span)
    plan.global_dims[rule.axis] = value
    if symbol is not None and rule.axis in sizes.declared:
        plan.local_dims[rule.axis] = value // plan.size


def _literal_axis(model: Model, name: str) -> int | None:
    """The size of a merged axis written with literals (`4*n_embd`)."""
    total = 1
    for factor in name.split("*"):
        if factor.isdigit():
            total *= int(factor)
            continue
        symbol = model.dims.lookup(factor)
        value = model.dims.value(symbol) if symbol is not None else None
        if value is None:
            return None
        total *= value
    return total


class _Deriver:
    def __init__(self, model: Model, plan: TPPlan, repeat: Node) -> None:
        self.model, self.plan = model, plan
        carried = repeat.attrs["params"][0]
        self.residual = carried.names[-1]     # the residual stream's axis, which stays replicated

    def block(self, graph: Graph, prefix: str) -> None:
        shards: dict[str, _Shard] = {}
        for node in graph:
            if node.op == "linear":
                self.linear(graph, node, prefix, shards)
            elif node.op == "call":
                if any(i in shards for i in node.inputs):
                    raise PlanError(f"block {node.attrs['block']} is called with a sharded input; shard inside one "
                                    "block at a time", node.span)
                self.block(self.model.templates[node.attrs["block"]], f"{prefix}{node.attrs['scope']}.")
            elif OPS[node.op].has("norm") and not any(i in shards for i in node.inputs[:1]) \
                    and node.type.names[-1:] == (self.residual,):   # type: ignore[union-attr]
                self.plan.rules.append(Rule(prefix + _module_path(graph, node), "sequence_parallel",
                                            why="norm over the residual stream: its rows can be split by position",
                                            span=node.span))
            else:
                self.propagate(graph, node, shards)
        for out in graph.outputs:
            if out in shards:
                raise PlanError(f"block {graph.name} returns a tensor sharded on {shards[out].factor}: the linear that "
                                "contracts over it is in another block; a tensor-parallel split must close (row-wise) "
                                "inside the block that opens it", graph[out].span)

    def linear(self, graph: Graph, node: Node, prefix: str, shards: dict[str, _Shard]) -> None:
        path = prefix + _module_path(graph, node)
        src = shards.get(node.inputs[0])
        out_axis = node.tensor_type.names[-1]
        if src is not None:
            names = graph[node.inputs[0]].tensor_type.names
            _resolve(src, names, names)
            contracted = node.attrs["axis"]
            if contracted != src.factor and (_outer_named(contracted) != src.factor or _leading(contracted) != 1):
                raise PlanError(f"{path} reads an input sharded on {src.factor} but contracts over {contracted}; a "
                                "row-wise split needs the sharded axis to be the one contracted", node.span)
            self.plan.rules.append(Rule(path, "rowwise", src.factor,
                                        why=f"contracts over {contracted}, sharded on {src.factor}: partial sums "
                                            "all-reduced", span=node.span))
            return
        if out_axis == self.residual and not any(u.op == "rearrange" and u.tensor_type.rank > node.tensor_type.rank
                                                 for u in graph.users(node.name)):
            return     # reads and writes the residual stream, and no view splits it into heads: stays replicated
        rule = Rule(path, "colwise", out_axis, why="", span=node.span)
        self.plan.rules.append(rule)
        shards[node.name] = _Shard(out_axis, rule)
        _explain_colwise(rule)

    def propagate(self, graph: Graph, node: Node, shards: dict[str, _Shard]) -> None:
        sharded = [shards[i] for i in node.inputs if i in shards]
        if not sharded:
            return
        src = sharded[0]
        if node.op == "rearrange" and src.rule is not None:
            _resolve(src, node.tensor_type.names, graph[node.inputs[0]].tensor_type.names)
        factor = src.factor
        if any(other.factor != factor for other in sharded[1:]):
            raise PlanError(f"{node.op} combines tensors sharded on different axes "
                            f"({', '.join(sorted({o.factor for o in sharded}))})", node.span)
        for name in node.inputs:    # a replicated operand holding the sharded axis would be wrongly combined
            t = graph[name].type
            if name not in shards and hasattr(t, "names") and any(_has(a, factor) for a in t.names):
                raise PlanError(f"{node.op} combines a tensor sharded on {factor} with a replicated one holding the "
                                f"same axis ({graph[name].name})", node.span)
        out_names = node.type.names if hasattr(node.type, "names") else ()
        if not any(_has(a, factor) for a in out_names):
            raise PlanError(f"{node.op} reduces or drops the sharded axis {factor}; a tensor-parallel split needs it "
                            "kept up to a linear that contracts over it", node.span)
        shards[node.name] = src


def _module_path(graph: Graph, node: Node) -> str:
    """The module a linear or norm lives in: its weight's path without `.weight`."""
    for name in node.inputs[1:]:
        src = graph[name]
        if src.op == "param":
            return str(src.attrs["path"]).rsplit(".", 1)[0]
    return node.name


def _has(axis: str, factor: str) -> bool:
    return axis == factor or factor in axis.split("*")


def _leading(axis: str) -> int:
    """The product of the literal factors written before the first named one (`3*n_head*head_dim` -> 3)."""
    stride = 1
    for f in axis.split("*"):
        if not f.isdigit():
            break
        stride *= int(f)
    return stride


def _outer_named(axis: str) -> str:
    """The outermost named factor of a (merged) axis: the one a contiguous split of it runs over."""
    named = [f for f in axis.split("*") if not f.isdigit()]
    return named[0] if named else axis


def _resolve(shard: _Shard, names: tuple[str, ...], before: tuple[str, ...]) -> None:
    """A colwise output's sharded factor, once the graph views it: the first named factor of the split axis."""
    rule = shard.rule
    if rule is None:
        return
    shard.rule = None
    if rule.axis in names:     # viewed unsplit (a feed-forward width): the axis itself
        return
    # the view splits the linear's output axis, in place, into these axes (memory order, outermost first)
    if rule.axis not in before or len(names) < len(before):
        return
    at = before.index(rule.axis)
    new = names[at:at + len(names) - len(before) + 1]
    stride = 1
    for n in new:
        if n.isdigit():
            stride *= int(n)
            continue
        rule.axis, rule.stride = n, stride
        shard.factor = n
        _explain_colwise(rule)
        return


def _explain_colwise(rule: Rule) -> None:
    strided = f" (strided: each of {rule.stride} chunks split)" if rule.stride > 1 else ""
    rule.why = f"output axis shards {rule.axis}{strided}"
