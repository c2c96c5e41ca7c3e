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
    # colwise | rowwise | sequence_parallel | embedding_rowwise (a vocab-sharded embedding) | colwise_gather_output
    # (a vocab-sharded head, logits gathered) | gather_input (a block called with sequence-sharded arguments, which
    # it needs whole: `args` of its `arity` arguments are gathered; sequence parallelism only)
    style: str
    axis: str = ""         # the sharded factor (`num_key_value_heads`, `intermediate_size`, `vocab_size`)
    stride: int = 1        # colwise over (k, axis, ...): each of k leading chunks is sharded separately
    why: str = ""
    span: Span | None = None
    top: bool = False      # outside the repeat (embedding, head, final norm): the model's plan, not the base model's
    seq_in: bool = False   # with sequence parallelism: its input arrives sharded on the sequence
    seq_out: bool = False  # with sequence parallelism: its output leaves sharded on the sequence
    args: tuple[int, ...] = ()
    arity: int = 0

    @property
    def hf_style(self) -> str:
        """The Hugging Face `tp_plan` name: theirs has no strided colwise, so a fused q/k/v says so."""
        if self.style == "colwise" and self.stride > 1:
            return f"colwise_strided_{self.stride}"
        return self.style


SEQUENCE_ONLY = ("sequence_parallel", "gather_input")   # styles that exist only with sequence parallelism


@dataclass
class TPPlan:
    size: int
    rules: list[Rule] = field(default_factory=list)
    local_dims: dict[str, int] = field(default_factory=dict)   # dim -> its value per rank
    global_dims: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)             # what stays replicated, and why
    sequence_parallel: bool = False   # derived for it: the residual stream sharded on the sequence between blocks
    sequence_dim: int = 1             # the residual stream's sequence (token) dim

    def styles(self, *, sequence_parallel: bool | None = None) -> list[Rule]:
        sp = self.sequence_parallel if sequence_parallel is None else sequence_parallel
        return [r for r in self.rules if sp or r.style not in SEQUENCE_ONLY]

    def hf(self, *, sequence_parallel: bool | None = None) -> dict[str, str]:
        """The repeated blocks' plan as a Hugging Face `base_model_tp_plan` dict (module pattern -> style), as a
        config class declares it (transformers adds the embedding itself when it builds the model)."""
        return {r.path: r.hf_style for r in self.styles(sequence_parallel=sequence_parallel)
                if not r.top and r.style != "gather_input"}

    def hf_model(self, *, sequence_parallel: bool | None = None) -> dict[str, str]:
        """The whole model's plan as a Hugging Face model's `_tp_plan` (embedding, blocks, head), spec paths."""
        rules = [r for r in self.styles(sequence_parallel=sequence_parallel) if r.style != "gather_input"]
        ordered = [r for r in rules if r.style == "embedding_rowwise"] + [r for r in rules if not r.top] + \
            [r for r in rules if r.top and r.style != "embedding_rowwise"]
        return {r.path: r.hf_style for r in ordered}

    def explain(self) -> list[str]:
        lines = [f"tensor parallel over {self.size} ranks" + " with sequence parallelism" * self.sequence_parallel
                 + ":"]
        rules = self.styles()
        width = max((len(r.path) for r in rules), default=0)
        for r in rules:
            lines.append(f"  {r.path:<{width}}  {r.hf_style:<21} {r.why}")
        candidates = [r.path for r in self.rules if r.style == "sequence_parallel" and r not in rules]
        if candidates:
            lines.append(f"  sequence parallelism (--sequence-parallel) would split the norms {', '.join(candidates)}")
        for dim, local in self.local_dims.items():
            lines.append(f"  local {dim} = {self.global_dims[dim]} / {self.size} = {local} per rank")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


@dataclass
class _Shard:
    factor: str       # the sharded dim's name, as it appears in axis names
    rule: Rule | None  # the colwise rule that made it, still open to resolving its factor from the next view


def derive_tp_plan(model: Model, size: int, *, sequence_parallel: bool = False) -> TPPlan:
    """The plan for a mesh of `size` ranks, or PlanError naming the axis or op that prevents it. With
    `sequence_parallel`, the residual stream stays sharded on the sequence between the blocks (Megatron-LM's sequence
    parallelism, torchtitan's Llama plan): the norms split by position, the blocks gather their input, the row-wise
    linears reduce-scatter onto the sequence, the embedding scatters and the head gathers."""
    if size < 1:
        raise PlanError(f"a tensor-parallel size is at least 1, got {size}")
    plan = TPPlan(size, sequence_parallel=sequence_parallel)
    repeats = _repeats(model, model.graph, "")
    for node, prefix in repeats:
        _Deriver(model, plan, node).block(model.templates[node.attrs["block"]], f"{prefix}{node.attrs['scope']}.*.")
    _ends(model, plan, repeats)
    if not any(r.style == "colwise" for r in plan.rules):
        raise PlanError("no linear in a repeated block widens the residual stream into heads or a feed-forward "
                        "width: nothing to shard column-wise")
    for rule in plan.rules:
        if rule.style == "colwise" and rule.axis not in plan.global_dims:
            _divides(model, plan, rule)
    return plan


def _ends(model: Model, plan: TPPlan, repeats: list[tuple[Node, str]]) -> None:
    """The token embedding and the LM head, sharded on the vocabulary axis (the model output's last axis) as
    transformers and torchtitan do: the embedding row-wise (each rank looks up its rows of the table, the partial
    lookups are all-reduced), the head column-wise with its logits gathered. A table tied to the head, or a vocabulary
    the mesh does not divide, stays replicated (noted). With sequence parallelism the final norm splits by position
    and the embedding hands the first block its sequence shard."""
    graph = model.graph
    outputs = list(model.outputs.values())
    out_type = graph[outputs[0]].type if outputs else None
    names = getattr(out_type, "names", ())
    if not names:
        return
    vocab = names[-1]
    size = _literal_axis(model, vocab)
    body = list(graph)
    top = [n for n, _ in repeats if n in body]
    at = body.index(top[0]) if len(top) == 1 else None
    found: dict[str, Rule] = {}
    for i, node in enumerate(body):
        table = next((graph[n] for n in node.inputs[1:] if graph[n].op == "param"), None)
        if table is None or (getattr(table.type, "names", ())[:1] != (vocab,) and node.op == "embedding"):
            continue
        if node.op == "embedding":
            kind, style = "embedding", "embedding_rowwise"
        elif node.op == "linear" and node.tensor_type.names[-1] == vocab and at is not None and i > at:
            kind, style = "head", "colwise_gather_output"
        else:
            continue
        path = str(table.attrs["path"]).rsplit(".", 1)[0]
        if len(graph.users(table.name)) > 1:
            plan.notes.append(f"{path} stays replicated: its weight {table.attrs['path']} is tied to another use")
        elif size is None or size % plan.size:
            plan.notes.append(f"{path} stays replicated: {vocab} = {size} is not divisible by {plan.size}")
        else:
            why = "rows (the vocabulary) split; partial lookups all-reduced" if kind == "embedding" else \
                "output axis shards the vocabulary; logits gathered"
            found[kind] = Rule(path, style, vocab, why=why, span=node.span, top=True,
                               seq_out=kind == "embedding", seq_in=kind == "head")
    for kind in ("embedding", "head"):
        if kind in found:
            plan.rules.append(found[kind])
    if plan.sequence_parallel:
        _sequence_ends(model, plan, found, top[0] if len(top) == 1 else None)


def _sequence_ends(model: Model, plan: TPPlan, found: dict[str, Rule], rep: Node | None) -> None:
    """Sequence parallelism needs the residual stream split from the token embedding to the final norm: the repeat
    reads the sharded embedding's output, and its output goes through one norm straight into the sharded head."""
    graph = model.graph
    if rep is None or len([n for n in graph if n.op == "repeat"]) != 1:
        raise PlanError("sequence parallelism needs the model body to run one repeat, between its embedding and head")
    first = graph[rep.inputs[0]]
    if first.op != "embedding" or "embedding" not in found:
        raise PlanError(f"sequence parallelism splits the residual stream by position from the token embedding on; "
                        f"the repeat {rep.attrs['scope']} reads {first.name} ({first.op}), computed after it",
                        first.span)
    users = graph.users(rep.name)
    norm = users[0] if len(users) == 1 else None
    head = graph.users(norm.name) if norm is not None and OPS[norm.op].has("norm") else []
    if len(head) != 1 or "head" not in found or found["head"].span is not head[0].span:
        raise PlanError(f"sequence parallelism needs the repeat {rep.attrs['scope']}'s output to go through one norm "
                        "into a vocabulary-sharded head", (norm or rep).span)
    at = plan.rules.index(found["head"])
    plan.rules.insert(at, Rule(_module_path(graph, norm), "sequence_parallel", top=True, span=norm.span,   # type: ignore[arg-type]
                               why="final norm over the residual stream: its rows can be split by position"))


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
        self.seq_fed: set[str] = set()        # linears reading a sequence-parallel norm's output
        if plan.sequence_parallel:
            if len(carried.names) < 3:
                raise PlanError(f"sequence parallelism splits the residual stream by position; repeat "
                                f"{repeat.attrs['scope']} carries {carried.names}, with no sequence axis before "
                                f"{self.residual}", repeat.span)
            plan.sequence_dim = len(carried.names) - 2

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
                self.sequence_consumers(graph, node, prefix)
            elif node.op == "moe":
                self.plan.notes.append(f"{prefix}{node.name} stays replicated: the experts are one fused {node.op} "
                                       "op, whose feed-forward width a column/row split cannot reach (the expert "
                                       "weights are stacked parameters, not linears)")
            else:
                self.propagate(graph, node, shards)
        for out in graph.outputs:
            if out in shards:
                raise PlanError(f"block {graph.name} returns a tensor sharded on {shards[out].factor}: the linear that "
                                "contracts over it is in another block; a tensor-parallel split must close (row-wise) "
                                "inside the block that opens it", graph[out].span)

    def sequence_consumers(self, graph: Graph, norm: Node, prefix: str) -> None:
        """With sequence parallelism the norm's output is sharded on the sequence: a block called with it gathers
        it (`gather_input`), a column-wise linear reading it gathers it first; anything else is refused."""
        for user in graph.users(norm.name):
            if user.op == "call":
                args = tuple(i for i, name in enumerate(user.inputs) if name == norm.name)
                self.plan.rules.append(Rule(f"{prefix}{user.attrs['scope']}", "gather_input", args=args,
                                            arity=len(user.inputs), why="called with the sequence-sharded norm "
                                            "output: gathers it whole", span=user.span))
            elif user.op == "linear":
                self.seq_fed.add(user.name)
            elif self.plan.sequence_parallel:
                raise PlanError(f"{user.op} reads the output of norm {norm.name}, which sequence parallelism shards "
                                "on the sequence; only a block call or a linear may read it", user.span)

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
            self.plan.rules.append(Rule(path, "rowwise", src.factor, seq_out=True,
                                        why=f"contracts over {contracted}, sharded on {src.factor}: partial sums "
                                            "all-reduced" + " (reduce-scattered on the sequence)"
                                            * self.plan.sequence_parallel, span=node.span))
            return
        if out_axis == self.residual and not any(u.op == "rearrange" and u.tensor_type.rank > node.tensor_type.rank
                                                 for u in graph.users(node.name)):
            return     # reads and writes the residual stream, and no view splits it into heads: stays replicated
        rule = Rule(path, "colwise", out_axis, why="", span=node.span, seq_in=node.name in self.seq_fed)
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
