"""Wires of a laid-out circuit diagram: one path per wire segment, swept left to right.

A segment starts at an input, at a box's right edge, at a dot or at a copy's fork, and ends at a box's
left edge, in a cup, at a dot, at a fork or at an output; a wire that an op does not act on passes its
column as the same segment. Paths are horizontal runs joined by cubic curves with horizontal tangents;
every curve lies in a transition zone or inside a contraction, never in a gap, so labels sit on straight
wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.diagrams.layout import BOX_HALF, PITCH, Column, Gap, Lane, Layout
from nnspec.compiler.diagrams.roles import axes
from nnspec.compiler.diagrams.svg import num

FORK = 5.0           # a fork's dot sits this far right of its column's op zone
DROP = 8.0           # an unused output stops this far right of it


@dataclass
class Segment:
    axis: str
    value: str
    points: list[tuple[float, float]]
    start: str                     # input | box | dot | fork | source
    end: str = "output"            # box | cup | dot | fork | output | drop
    node: str = ""                 # the op at whose column it ends, if any

    def to(self, x: float, y: float) -> None:
        if (x, y) != self.points[-1]:
            self.points.append((x, y))

    def d(self) -> str:
        (x, y), *rest = self.points
        parts = [f"M{num(x)} {num(y)}"]
        for nx, ny in rest:
            if abs(ny - y) < 1e-9:
                parts.append(f"H{num(nx)}")
            else:
                mx = (x + nx) / 2
                parts.append(f"C{num(mx)} {num(y)} {num(mx)} {num(ny)} {num(nx)} {num(ny)}")
            x, y = nx, ny
        return " ".join(parts)


@dataclass
class Cup:
    node: str
    axis: str
    ends: list[tuple[float, float]]
    d: str


@dataclass
class Dot:
    role: str                      # join | copy
    node: str                      # the op (join) or value (copy)
    axis: str
    x: float
    y: float


@dataclass
class Routes:
    segments: list[Segment] = field(default_factory=list)
    cups: list[Cup] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)


def op_span(lane: Lane, col: Column) -> tuple[float, float]:
    """The x extent of an op inside its column's zone (centred)."""
    a = col.z0 + (col.zone - lane.width) / 2
    return a, a + lane.width


def box_span(lane: Lane, col: Column) -> tuple[float, float]:
    a, b = op_span(lane, col)
    if lane.drawing is not None and lane.drawing.kind == "split":   # the bar only: the names are right of it
        return a, a + 8.0
    inset = 12.0 if lane.drawing is not None and lane.drawing.count else 0.0
    return a + inset, b - inset


def box_half(lane: Lane) -> float:
    d = lane.drawing
    return BOX_HALF + 2.0 if d is not None and (d.sup or d.bias or d.stride) else BOX_HALF


def route(lay: Layout) -> Routes:
    r = Routes()
    live: dict[tuple[str, int], Segment] = {}
    first = lay.columns[0]
    for lane in first.lanes:
        assert lane.value is not None
        outs = {(0, j): Segment(n, lane.value, [(lay.x_start, lane.y(j))], "input")
                for j, n in enumerate(axes(lay.flat.values[lane.value].type))}
        _fan_out(lay, r, first, lay.gaps[0], lane, [lane.value], outs, live)
    _run_gap(lay.gaps[0], live)
    for n in range(1, len(lay.columns)):
        col, prev, gap = lay.columns[n], lay.gaps[n - 1], lay.gaps[n]
        for lane in col.lanes:
            if lane.kind == "pass":
                cp = lane.copy
                assert cp is not None
                for j in range(len(cp.names)):
                    seg = live.pop((cp.id, j))
                    seg.to(col.z0, lane.y(j))
                    seg.to(col.x1, gap.y(cp, j))
                    live[(cp.id, j)] = seg
            else:
                _op(lay, r, col, prev, gap, lane, live)
        _run_gap(gap, live)
    for seg in live.values():
        _close(r, seg, "output", "")
    r.segments.sort(key=lambda s: (s.points[0][0], s.points[0][1], s.points[-1][0], s.points[-1][1]))
    return r


def _run_gap(gap: Gap, live: dict[tuple[str, int], Segment]) -> None:
    for cp in gap.copies:
        for j in range(len(cp.names)):
            live[(cp.id, j)].to(gap.x1, gap.y(cp, j))


def _close(r: Routes, seg: Segment, end: str, node: str) -> None:
    seg.end, seg.node = end, node
    r.segments.append(seg)


def _op(lay: Layout, r: Routes, col: Column, prev: Gap, gap: Gap, lane: Lane,
        live: dict[tuple[str, int], Segment]) -> None:
    op, d = lane.op, lane.drawing
    assert op is not None and d is not None
    a = op_span(lane, col)[0]
    ba, bb = box_span(lane, col)
    ins: dict[tuple[int, int], Segment] = {}
    for i in range(len(op.inputs)):
        cp = lay.copy_of[(lane.index, i)]
        for j in range(len(cp.names)):
            seg = live.pop((cp.id, j))
            seg.to(col.z0, lane.y(lane.in_slot((i, j))))
            ins[(i, j)] = seg
    outs: dict[tuple[int, int], Segment] = {}
    out_of = {o.src: (k, j) for k, row in enumerate(d.outs) for j, o in enumerate(row) if o.how == "pass"}
    xc, xd = a + 8.0, a + lane.width * 0.72
    for (i, j), seg in ins.items():
        y = lane.y(lane.in_slot((i, j)))
        fate = d.fates[i][j]
        if fate == "pass":
            seg.to(col.z1, y)
            outs[out_of[(i, j)]] = seg
        elif fate == "end":
            seg.to(ba, y)
            _close(r, seg, "box", op.id)
        elif fate == "cup":
            seg.to(xc, y)
            _close(r, seg, "cup", op.id)
    for group in d.cups:
        ys = [lane.y(lane.in_slot(w)) for w in group]
        r.cups.append(Cup(op.id, ins[group[0]].axis, [(xc, y) for y in ys], _cup(xc, ys)))
    free = [lane.y(lane.in_slot((i, j))) for (i, j) in ins if d.fates[i][j] == "pass"]
    taken: list[float] = []
    for group in d.joins:
        ya = _dot_y([lane.y(lane.in_slot(w)) for w in group], free + taken)
        taken.append(ya)
        for w in group:
            seg = ins[w]
            seg.to(xd, ya)
            _close(r, seg, "dot", op.id)
        r.dots.append(Dot("join", op.id, ins[group[0]].axis, xd, ya))
    values = [lay.flat.values[v] for v in op.outputs]
    for k, row in enumerate(d.outs):
        for j, o in enumerate(row):
            y = lane.y(lane.out_slot((k, j)))
            name = axes(values[k].type)[j]
            if o.how == "new":
                start = "source" if not op.inputs else "box"
                outs[(k, j)] = Segment(name, values[k].id, [(bb, y)], start)
                outs[(k, j)].to(col.z1, y)
            elif o.how == "join":
                dot = next(p for p in r.dots if p.node == op.id and p.axis == name)
                outs[(k, j)] = Segment(name, values[k].id, [(xd, dot.y)], "dot")
                outs[(k, j)].to(col.z1, dot.y)
    _fan_out(lay, r, col, gap, lane, op.outputs, outs, live)


def _dot_y(ys: list[float], busy: list[float]) -> float:
    """Shared wires meet halfway between their operands, unless another wire passes there; then on the first."""
    mid = round(sum(ys) / len(ys) / (PITCH / 2)) * (PITCH / 2)
    return ys[0] if any(abs(mid - b) < PITCH / 2 for b in busy) else mid


def _cup(x: float, ys: list[float]) -> str:
    top, bottom = min(ys), max(ys)
    if len(ys) == 1:            # a sum over one operand's axis: a small cap closing the wire
        top, bottom = top - 5.0, bottom + 5.0
        depth = 7.0
        return (f"M{num(x)} {num(top)} C{num(x + depth)} {num(top)} {num(x + depth)} {num(bottom)} "
                f"{num(x)} {num(bottom)}")
    depth = min(22.0, 5.0 + (bottom - top) / PITCH * 4.0)
    if len(ys) == 2:
        return (f"M{num(x)} {num(top)} C{num(x + depth * 1.33)} {num(top)} {num(x + depth * 1.33)} "
                f"{num(bottom)} {num(x)} {num(bottom)}")
    return f"M{num(x)} {num(top)} H{num(x + depth)} V{num(bottom)} H{num(x)}"


def _fan_out(lay: Layout, r: Routes, col: Column, gap: Gap, lane: Lane, values: list[str],
             outs: dict[tuple[int, int], Segment], live: dict[tuple[str, int], Segment]) -> None:
    for k, vid in enumerate(values):
        copies = lay.copies[vid]
        for j, name in enumerate(axes(lay.flat.values[vid].type)):
            seg = outs[(k, j)]
            y = seg.points[-1][1]
            if len(copies) == 1:
                seg.to(col.x1, gap.y(copies[0], j))
                live[(copies[0].id, j)] = seg
            elif not copies:
                seg.to(col.z1 + DROP, y)
                _close(r, seg, "drop", "")
            else:
                fx = col.z1 + FORK
                seg.to(fx, y)
                _close(r, seg, "fork", "")
                r.dots.append(Dot("copy", vid, name, fx, y))
                for cp in copies:
                    branch = Segment(name, vid, [(fx, y)], "fork")
                    branch.to(col.x1, gap.y(cp, j))
                    live[(cp.id, j)] = branch
