"""How a circuit diagram draws each op: which of its input wires pass over, end at a box, meet in a cup or
join at a dot, and where each output wire comes from. Decided from the op's family and types alone, so an
op added to the registry later still draws: as a box acting on the axes that change.

Conventions (Abbott, "Neural Circuit Diagrams", TMLR 2024): a box touches only the axes it acts on and the
other axes pass over it; elementwise functions are lifted glyphs above the bundle; softmax is a triangle on
the normalised axis; a contraction is wiring (contracted axes end in a cup, shared axes join at a dot);
learned maps are bold, with `+` when they add a bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.diagrams.view import Const, Flat, Op, drawn_in_place
from nnspec.compiler.ir import TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.ops.contract import einsum_string

SCALAR = "·"     # the one wire drawn for a tensor without axes

Wire = tuple[int, int]   # (operand index, axis index)


@dataclass(frozen=True)
class Out:
    """Where output wire comes from: `pass` continues input wire `src`; `join` starts at the dot where the
    wires of its group meet (`src` is the first of them); `new` starts at the box, in the slot of input wire
    `src` when given (the wire it replaces), else in a fresh slot."""

    how: str
    src: Wire | None = None


@dataclass
class Drawing:
    kind: str                      # box | bar | split | lift | softmax | contract | permute
    label: str
    order: list[int]               # operands, top to bottom
    fates: list[list[str]]         # per operand, per axis: pass | end | cup | join
    outs: list[list[Out]]          # per output value, per axis
    sup: str = ""
    bold: bool = False
    bias: bool = False
    cups: list[list[Wire]] = field(default_factory=list)
    joins: list[list[Wire]] = field(default_factory=list)
    mark: Wire | None = None       # the wire a softmax triangle sits on
    note: str = ""                 # a contraction's summed axes by name (`Σ head_dim`), written under the column
    einsum: str = ""               # and its einsum string, kept as a data attribute for tools
    count: int = 0                 # a collapsed repeat's xN
    shape: str = "rect"            # rect | trapezoid (a convolution, narrowing as x -> x/s)
    stride: str = ""               # a convolution's stride, written as a subscript: `÷2`
    members: list[str] = field(default_factory=list)   # a split fan's member names, one per output
    mask: list[str] = field(default_factory=list)      # a mask box's related axes (written under it)
    mask_shape: str = ""           # the mask's source op, whose shape is drawn in the box (a triangle)
    moe: tuple[str, str, int] = ("", "", 0)   # a mixture of experts: (router's name, experts axis, k) drawn inside
    stacked: str = ""              # a learned map indexed by this axis of its weight (experts): drawn as a stack
    causal: tuple[str, ...] = ()   # a fused attention's causal mask: (query axis, key axis), drawn in its box
    weighs: str = ""               # and, when it also reads the gates over that axis, their weighted sum


def axes(t: TensorType) -> list[str]:
    return list(t.names) or [SCALAR]


def drawing(op: Op, flat: Flat) -> Drawing:
    ins = [flat.values[v].type for v in op.inputs]
    outs = [flat.values[v].type for v in op.outputs]
    opdef = OPS.get(op.op)
    glyph = (opdef.glyph if opdef and opdef.glyph else op.op)
    if op.members:                 # a split fan: the bundle ends at one bar, each member leaves it, named
        d = _acting(ins, outs, [set(axes(ins[0]))], "split", "", [0])
        d.members = list(op.members)
        return d
    if op.mask:                    # a mask box on the score axes it relates; a mask wire enters it whole
        scores = len(ins) - 1
        acted = [set(axes(t)) for t in ins[:scores]] + [set(op.mask)]
        d = _acting(ins, outs, acted, "box", glyph if not op.mask_shape else OPS[op.mask_shape].glyph or "mask",
                    [scores, *range(scores)])
        d.label = d.label if op.mask_shape else glyph + "".join(str(c) for c in op.consts)
        d.mask, d.mask_shape = list(op.mask), op.mask_shape
        return d
    if drawn_in_place(op.node):
        d = _acting(ins, outs, [set(axes(t)) for t in ins], "box", op.block, list(range(len(ins))))
        d.bold = op.learned
        d.count = op.node.attrs["count"] if op.op == "repeat" else 0
        return d
    if op.block:                   # scan and other ops applying a block: the step consumes each operand whole
        d = _acting(ins, outs, [set(axes(t)) for t in ins], "box", f"{glyph} {op.block}", list(range(len(ins))))
        d.bold = op.learned        # (its state goes in and a new one comes out: nothing passes over the box)
        return d
    if op.op == "pool":            # which pooling, as the spec calls it
        glyph = f"{op.node.attrs['kind']}pool"
    if op.op == "full":            # a constant tensor: its value
        glyph = str(Const(op.node.attrs["value"]))
    if op.learned:
        return _learned(op, ins, outs, glyph)
    family = op.family
    if family == "elementwise":
        return _elementwise(op, ins, outs, glyph)
    if op.op == "softmax":
        i = ins[0].index(op.node.attrs["axis"])
        return Drawing("softmax", "", [0], [["pass"] * len(axes(ins[0]))], [[Out("pass", (0, j)) for j in
                                                                                range(len(axes(ins[0])))]],
                       mark=(0, i))
    if family == "contract" and op.op == "einsum":
        return _contract(ins, outs[0])
    if family == "contract" and ins:  # a fused contraction (attention): the first operand's contracted axis
        out_names = {n for t in outs for n in axes(t)}   # enters the box; the other operands enter whole
        dim = op.node.attrs.get("dim")
        first = {n for n in axes(ins[0]) if n not in out_names or n == dim}
        d = _acting(ins, outs, [first] + [set(axes(t)) for t in ins[1:]], "box", glyph, list(range(len(ins))))
        if op.node.attrs.get("causal") and op.node.attrs.get("query") and op.node.attrs.get("key"):
            d.causal = (str(op.node.attrs["query"]), str(op.node.attrs["key"]))   # its causal mask, drawn inside
        return d
    if op.op == "rearrange":
        d = _acting(ins, outs, [set(axes(ins[0])) - set(axes(outs[0]))], "bar", "", [0])
        if not any(f == "end" for f in d.fates[0]):
            d.kind = "permute"
        return d
    if op.op == "select":
        return _acting(ins, outs, [{op.node.attrs["axis"]}], "box", f"[{op.node.attrs['index']}]", [0])
    if "axis" in op.node.attrs and ins and isinstance(op.node.attrs["axis"], str):
        return _acting(ins, outs, [{op.node.attrs["axis"]}] + [set(axes(t)) for t in ins[1:]], "box", glyph,
                       list(range(len(ins))))
    return _acting(ins, outs, _changed(ins, outs), "box", glyph, list(range(len(ins))))


def _changed(ins: list[TensorType], outs: list[TensorType]) -> list[set[str]]:
    """The generic rule: the first operand's axes that reach the output unchanged pass; every other wire ends."""
    kept = {a.name: a.size for t in outs for a in t.axes}
    acted = []
    for i, t in enumerate(ins):
        acted.append({a.name for a in t.axes if i > 0 or kept.get(a.name) != a.size} | ({SCALAR} if not t.axes
                                                                                         else set()))
    return acted


def _acting(ins: list[TensorType], outs: list[TensorType], acted: list[set[str]], kind: str, label: str,
            order: list[int]) -> Drawing:
    """A box on the `acted` axes of each operand; the rest pass; output axes not passed start at the box,
    each in the slot of an ended wire of the same name if there is one, else of the next ended wire."""
    fates = [["end" if n in acted[i] else "pass" for n in axes(t)] for i, t in enumerate(ins)]
    passing: dict[str, Wire] = {}
    for i in order:                 # a name passing in several operands passes once; the others merge in
        for j, n in enumerate(axes(ins[i])):
            if fates[i][j] == "pass" and n in passing:
                fates[i][j] = "end"
            elif fates[i][j] == "pass":
                passing[n] = (i, j)
    ended = [(i, j) for i in order for j, n in enumerate(axes(ins[i])) if fates[i][j] == "end"]
    result: list[list[Out]] = []
    used: set[Wire] = set()
    taken: set[str] = set()
    for t in outs:
        row: list[Out | None] = []
        for n in axes(t):
            if n in passing and n not in taken:
                row.append(Out("pass", passing[n]))
                taken.add(n)
            else:
                same = next((w for w in ended if w not in used and axes(ins[w[0]])[w[1]] == n), None)
                if same is not None:
                    used.add(same)
                row.append(Out("new", same))
        result.append(row)  # type: ignore[arg-type]
    continued = {o.src for row in result for o in row if o is not None and o.how == "pass"}
    for i, j in [w for w in passing.values() if w not in continued]:   # passes, but into no output
        fates[i][j] = "end"
        ended.append((i, j))
    rest = [w for w in ended if w not in used]
    for row in result:
        for j, o in enumerate(row):
            if o.how == "new" and o.src is None and rest:
                row[j] = Out("new", rest.pop(0))
    return Drawing(kind, label, order, fates, result)


def _learned(op: Op, ins: list[TensorType], outs: list[TensorType], glyph: str) -> Drawing:
    attrs = op.node.attrs
    if op.op == "embedding":
        acted: list[set[str]] = [set()]
    elif isinstance(attrs.get("axis"), str):
        acted = [{attrs["axis"]}]
    elif "spatial" in attrs and "channel" in attrs:
        # a convolution acts on its channels and spatial axes even where its output reuses their names
        acted = [{attrs["channel"], *attrs["spatial"]}]
    else:
        touched = {n for p in op.params for n in p.type.names}
        out_names = {n for t in outs for n in t.names}
        acted = [{n for n in axes(t) if n in touched or n not in out_names} for t in ins]
    acted += [set(axes(t)) for t in ins[len(acted):]]
    d = _acting(ins, outs, acted, "box", "L" if op.family == "contract" else glyph, list(range(len(ins))))
    d.bold, d.bias = True, op.bias
    d.sup = op.params[0].short if op.params else ""
    if op.op == "moe":             # the router picks k experts per token; their outputs are summed, gate-weighted
        experts = op.params[1].type.names[0] if len(op.params) > 1 and op.params[1].type.names else "E"
        d.moe, d.label, d.sup = (op.params[0].short.rpartition(".")[2], experts, int(attrs["k"])), "L", "e"
        return d
    stack = _stack_axis(op, ins, outs)
    if stack:                      # one map per index of the weight's leading axis (an expert each)
        d.stacked = stack
        if sum(stack in t.names for t in ins) >= 1 and stack not in {n for t in outs for n in t.names}:
            d.weighs = stack       # the gates come in over that axis and it is summed: the gated sum
    if op.op == "conv":            # Abbott's convolution: a trapezoid with a star, the stride as a subscript
        d.shape = "trapezoid"
        strides = attrs["stride"]
        if any(s != 1 for s in strides):
            d.stride = "÷" + (str(strides[0]) if len(set(strides)) == 1 else ",".join(map(str, strides)))
    return d


def _stack_axis(op: Op, ins: list[TensorType], outs: list[TensorType]) -> str:
    """The axis a learned map is indexed by: its weight's leading axis when the weight has three or more axes and
    that axis also names an axis of an input or the output (`w1[n_experts, d_ff, d]` making `[.., n_experts,
    d_ff]`): a stack of maps, one per index, not one map."""
    if len(op.params) != 1 or len(op.params[0].type.names) < 3:
        return ""
    lead = op.params[0].type.names[0]
    seen = {n for t in [*ins, *outs] for n in t.names}
    return lead if lead in seen else ""


def _elementwise(op: Op, ins: list[TensorType], outs: list[TensorType], glyph: str) -> Drawing:
    label = glyph + "".join(str(c) for c in op.consts)
    if len(ins) <= 1:
        n = len(axes(ins[0])) if ins else 0
        if not ins:
            return _acting(ins, outs, [], "box", label, [])
        return Drawing("lift", label, [0], [["pass"] * n], [[Out("pass", (0, j)) for j in range(n)]])
    # the operand whose axes lead the result is drawn on top; wires in several operands merge at the box
    out_names = axes(outs[0])
    primary = max(range(len(ins)), key=lambda i: (_prefix(axes(ins[i]), out_names), -i))
    order = [primary] + [i for i in range(len(ins)) if i != primary]
    counts: dict[str, int] = {}
    for t in ins:
        for n in axes(t):
            counts[n] = counts.get(n, 0) + 1
    merged = {n for n, c in counts.items() if c > 1}
    return _acting(ins, outs, [merged & set(axes(t)) for t in ins], "box", label, order)


def _prefix(a: list[str], b: list[str]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def contraction_note(ins: list[TensorType], out: TensorType) -> str:
    """A contraction named by its axes, as a reader says it: `Σ head_dim` (summed over), `Σ S`, or `outer` when
    nothing is summed; not `abcd,aecd->acbe`, whose letters the reader would have to map back."""
    summed = list(dict.fromkeys(n for t in ins for n in t.names if n not in out.names))
    return "Σ " + ", ".join(summed) if summed else "outer"


def _contract(ins: list[TensorType], out: TensorType) -> Drawing:
    fates = [["pass"] * len(axes(t)) for t in ins]
    where: dict[str, list[Wire]] = {}
    for i, t in enumerate(ins):
        for j, n in enumerate(axes(t)):
            where.setdefault(n, []).append((i, j))
    d = Drawing("contract", "", list(range(len(ins))), fates, [], note=contraction_note(ins, out),
                einsum=einsum_string(ins, out))
    for n, members in where.items():
        if n in out.names and len(members) > 1:
            d.joins.append(members)
        elif n not in out.names:
            d.cups.append(members)
        else:
            continue
        for i, j in members:
            fates[i][j] = "join" if n in out.names else "cup"
    d.outs = [[Out("join" if len(where[n]) > 1 else "pass", where[n][0]) for n in axes(out)]]
    return d
