"""The deterministic column/track layout of a circuit diagram.

Columns: an op sits one column right of its latest input (index sources as late as their first use).
Between columns lie gaps, where every live tensor is a bundle of straight, labelled wires, one per axis, in
axis order; a tensor used n times is n copies (the bundle forks at dots after its column). In a column
each op is a lane of slots (one per input wire; output wires take the slot of the wire they continue or
replace, or a fresh slot), and each copy passing through is a lane of its own. Lanes are ordered by the
barycentre of their input wires in the gap before and packed top-down, each as close as allowed to where
its inputs already are, so wires stay straight where nothing happens; y changes happen in transition zones
on each side of a column. Everything is ordered by graph order and position, never by hashing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.compiler.diagrams import experts
from nnspec.compiler.diagrams.metrics import text_width
from nnspec.compiler.diagrams.roles import Drawing, Wire, axes, drawing
from nnspec.compiler.diagrams.view import Flat, Op

PITCH = 18.0          # wire to wire inside a bundle
BUNDLE_GAP = 30.0     # wire to wire between bundles in a gap (a dashed separator halfway)
BOX_HALF = 9.0        # a box reaches this far above and below the wires it touches
LANE_SEP = 12.0       # between the extents of two lanes of one column
LABEL_SIZE = 10.0     # axis labels
GLYPH_SIZE = 11.0     # op glyphs
SMALL_SIZE = 10.0     # superscripts, contraction notes: the smallest text (wrap.py sizes rows by it)
NAME_SIZE = 11.0      # input and output names
TOP = 44.0            # below the title
HEADROOM = 24.0       # above a lane's first wire, room for a lifted glyph: the first wires sit at TOP + this
TAPER = 5.0           # a convolution's trapezoid is this much shorter at each end of its right edge
MARGIN = 12.0


@dataclass(frozen=True)
class Use:
    op: int              # index in flat.ops; -1 for a graph output
    operand: int         # operand index, or output index
    col: int


@dataclass(frozen=True)
class Copy:
    """One use of a value: a bundle living in the gaps from its producer's column to its user's."""

    id: str
    value: str
    names: tuple[str, ...]
    start: int
    use: Use


@dataclass
class Lane:
    kind: str                                # op | pass | input
    slots: list[tuple[Wire | None, tuple[int, int] | None]]   # (input wire, (output, axis)) per slot
    op: Op | None = None
    index: int = -1                          # the op's index in flat.ops
    drawing: Drawing | None = None
    copy: Copy | None = None                 # a pass lane's copy
    value: str | None = None                 # an input lane's value
    top_ext: float = BOX_HALF
    bot_ext: float = BOX_HALF
    width: float = 0.0
    y0: float = 0.0
    in_names: list[list[str]] = field(default_factory=list)   # per operand: its axis names

    def y(self, slot: int) -> float:
        return self.y0 + slot * PITCH

    @property
    def bottom(self) -> float:
        return self.y(len(self.slots) - 1)

    def in_slot(self, wire: Wire) -> int:
        return next(s for s, (w, _) in enumerate(self.slots) if w == wire)

    def out_slot(self, out: tuple[int, int]) -> int:
        return next(s for s, (_, o) in enumerate(self.slots) if o == out)

    def boxed(self) -> list[bool]:
        """Per slot: does the op's box cover it (a wire ends there or a new one starts)?"""
        d = self.drawing
        if d is None or d.kind not in ("box", "bar", "split"):
            return [False] * len(self.slots)
        marks = []
        for w, o in self.slots:
            ends = w is not None and d.fates[w[0]][w[1]] == "end"
            starts = o is not None and d.outs[o[0]][o[1]].how == "new"
            marks.append(ends or starts)
        return marks


@dataclass
class Column:
    index: int
    lanes: list[Lane]
    tl: float = 0.0       # widths: left transition, op zone, right transition
    zone: float = 0.0
    tr: float = 0.0
    x0: float = 0.0       # where the left transition starts

    @property
    def z0(self) -> float:
        return self.x0 + self.tl

    @property
    def z1(self) -> float:
        return self.z0 + self.zone

    @property
    def x1(self) -> float:
        return self.z1 + self.tr


@dataclass
class Gap:
    index: int            # the column it follows (-1: the inputs)
    copies: list[Copy]
    ys: dict[str, float] = field(default_factory=dict)   # copy id -> y of its first wire
    x0: float = 0.0
    width: float = 0.0
    pad_left: float = 0.0
    pad_right: float = 0.0

    @property
    def x1(self) -> float:
        return self.x0 + self.width

    @property
    def label_x(self) -> float:
        return self.x0 + self.pad_left + (self.width - self.pad_left - self.pad_right) / 2

    def y(self, copy: Copy, axis: int) -> float:
        return self.ys[copy.id] + axis * PITCH


@dataclass
class Layout:
    flat: Flat
    columns: list[Column]     # columns[0] is the inputs' column (index -1)
    gaps: list[Gap]           # gaps[0] follows the inputs
    col_of: dict[str, int]
    copies: dict[str, list[Copy]]
    copy_of: dict[tuple[int, int], Copy]
    x_start: float = 0.0
    x_end: float = 0.0

    def gap_after(self, col: int) -> Gap:
        return self.gaps[col + 1]

    def column(self, col: int) -> Column:
        return self.columns[col + 1]


def assign_columns(flat: Flat) -> dict[str, int]:
    col_of: dict[str, int] = {}
    produced = {vid: -1 for _, vid in flat.inputs}
    for op in flat.ops:
        col_of[op.id] = 1 + max((produced[v] for v in op.inputs), default=-1)
        for v in op.outputs:
            produced[v] = col_of[op.id]
    users: dict[str, list[str]] = {}
    for op in flat.ops:
        for v in op.inputs:
            users.setdefault(v, []).append(op.id)
    for op in reversed(flat.ops):       # index sources as late as their first use
        if not op.inputs:
            later = [col_of[u] for v in op.outputs for u in users.get(v, [])]
            if later:
                col_of[op.id] = max(col_of[op.id], min(later) - 1)
    return col_of


def layout(flat: Flat) -> Layout:
    col_of = assign_columns(flat)
    ncols = max(col_of.values(), default=-1) + 1
    uses: dict[str, list[Use]] = {v: [] for v in flat.values}
    for idx, op in enumerate(flat.ops):
        for i, v in enumerate(op.inputs):
            uses[v].append(Use(idx, i, col_of[op.id]))
    for k, (_, v) in enumerate(flat.outputs):
        uses[v].append(Use(-1, k, ncols))
    start = {vid: -1 for _, vid in flat.inputs} | {v: col_of[op.id] for op in flat.ops for v in op.outputs}
    copies: dict[str, list[Copy]] = {}
    copy_of: dict[tuple[int, int], Copy] = {}
    for vid, us in uses.items():
        names = tuple(axes(flat.values[vid].type))
        copies[vid] = [Copy(f"{vid}@{n}", vid, names, start[vid], u)
                       for n, u in enumerate(sorted(us, key=lambda u: u.col))]
        for c in copies[vid]:
            copy_of[(c.use.op, c.use.operand)] = c
    lay = Layout(flat, [], [], col_of, copies, copy_of)
    lanes = [Lane("input", [(None, (0, j)) for j in range(len(axes(flat.values[v].type)))], value=v,
                  top_ext=HEADROOM) for _, v in flat.inputs]
    _pack(lanes, [None] * len(lanes))
    lay.columns.append(Column(-1, lanes))
    lay.gaps.append(_gap(-1, lanes, lay))
    for c in range(ncols):
        lay.columns.append(_column(c, lay))
        lay.gaps.append(_gap(c, lay.columns[-1].lanes, lay))
    _place_x(lay)
    return lay


def _op_lane(idx: int, op: Op, d: Drawing, flat: Flat) -> Lane:
    ins = [flat.values[v].type for v in op.inputs]
    slots: list[list] = [[(i, j), None] for i in d.order for j in range(len(axes(ins[i])))]
    where = {tuple(s[0]): n for n, s in enumerate(slots)}
    fresh = []
    for k, row in enumerate(d.outs):
        for j, o in enumerate(row):
            if o.src is None:
                fresh.append((k, j))
            else:
                slots[where[o.src]][1] = (k, j)
    acted = [n for n, (w, o) in enumerate(slots)
             if (w is not None and d.fates[w[0]][w[1]] == "end") or (o is not None and d.outs[o[0]][o[1]].how == "new")]
    at = max(acted) + 1 if acted else len(slots)
    for n, kj in enumerate(fresh):
        slots.insert(at + n, [None, kj])
    lane = Lane("op", [(s[0], s[1]) for s in slots], op=op, index=idx, drawing=d)
    lane.width = op_width(d)
    if d.moe[1]:                     # the router, top-k, the experts' stack and their Σ, under the wire
        lane.width = experts.width(*d.moe)
        lane.bot_ext = BOX_HALF + experts.extra_below() + 2.0
    if d.stacked:                    # the maps stacked behind the box, up and right
        lane.width += 2 * experts.STACK + (20.0 if d.weighs else 0.0)
    lane.in_names = [axes(t) for t in ins]
    if d.sup or d.bias or d.stride:
        lane.top_ext = lane.bot_ext = BOX_HALF + 2.0
    if d.kind == "lift":
        lane.top_ext = HEADROOM
    if d.kind == "contract":
        lane.bot_ext = BOX_HALF + 14.0
    if d.kind == "split":            # room for the first member's name over its wire
        lane.top_ext = BOX_HALF + 6.0
    if d.mask:                       # room for the related axes under the box
        lane.bot_ext = BOX_HALF + 13.0
    if d.count:
        lane.top_ext, lane.bot_ext = BOX_HALF + 5.0, BOX_HALF + 17.0
    if d.stacked:
        lane.top_ext = max(lane.top_ext, BOX_HALF + 2.0 + 2 * experts.STACK)
    return lane


def op_width(d: Drawing) -> float:
    if d.kind == "box":
        w = text_width(d.label, GLYPH_SIZE, d.bold) + 14
        if d.sup or d.bias or d.stride:
            w += max(text_width(d.sup, SMALL_SIZE), subscript_width(d.bias, d.stride)) + 1
        w = max(w, 24.0) + (TAPER if d.shape == "trapezoid" else 0.0)
        return w + (24.0 if d.count else 0.0)
    if d.kind == "bar":
        return 8.0
    if d.kind == "split":     # the bar, then each member's name over its first wire
        return 8.0 + max(text_width(m, LABEL_SIZE) for m in d.members) * 1.1 + 6.0
    if d.mask:                # the mask's shape (or glyph) over the axes it relates
        return max(text_width(d.label, GLYPH_SIZE) + 14, text_width(" ".join(d.mask), SMALL_SIZE) + 10, 28.0)
    if d.kind == "lift":
        return max(text_width(d.label, LABEL_SIZE) + 8, 20.0)
    if d.kind == "softmax":
        return 18.0
    if d.kind == "contract":
        return max(64.0, text_width(d.note, SMALL_SIZE) + 8)
    return 10.0


def subscript_width(bias: bool, stride: str) -> float:
    """The subscript after a box's glyph: `+` for a bias, then a convolution's stride (`÷2`)."""
    parts = (["+"] if bias else []) + ([stride] if stride else [])
    return text_width(" ".join(parts), SMALL_SIZE)


def _column(c: int, lay: Layout) -> Column:
    flat, prev = lay.flat, lay.gaps[-1]
    order = {cp.id: n for n, cp in enumerate(prev.copies)}
    lanes: list[tuple[tuple[float, float, int], Lane]] = []
    sources: list[Lane] = []
    for idx, op in enumerate(flat.ops):
        if lay.col_of[op.id] != c:
            continue
        lane = _op_lane(idx, op, drawing(op, flat), flat)
        ins = [lay.copy_of[(idx, i)] for i in range(len(op.inputs))]
        if not ins:
            sources.append(lane)
            continue
        key = sum(prev.ys[cp.id] for cp in ins) / len(ins)
        lanes.append(((key, min(order[cp.id] for cp in ins), idx), lane))
    for cp in prev.copies:
        if cp.use.col > c:
            lane = Lane("pass", [((0, j), (0, j)) for j in range(len(cp.names))], copy=cp)
            lanes.append(((prev.ys[cp.id], order[cp.id], -1), lane))
    keys = {lane.index: key for key, lane in lanes if lane.kind == "op"}
    for lane in sources:               # beside the other inputs of the op it feeds
        assert lane.op is not None
        near = []
        for v in lane.op.outputs:
            for cp in lay.copies[v]:
                if cp.use.op < 0:
                    continue
                for i, other in enumerate(flat.ops[cp.use.op].inputs):
                    sib = lay.copy_of.get((cp.use.op, i))
                    if sib is None or sib.value == v:
                        continue
                    if sib.id in prev.ys:
                        near.append((prev.ys[sib.id], order[sib.id]))
                    prod = next((n for n, o in enumerate(flat.ops) if other in o.outputs), None)
                    if prod in keys:
                        near.append(keys[prod][:2])
        key = min(near) if near else (float("inf"), len(order))
        lanes.append(((key[0] + 0.5, key[1] + 0.5, lane.index), lane))
    lanes.sort(key=lambda kl: kl[0])
    ordered = [lane for _, lane in lanes]
    desired: list[float | None] = []
    for lane in ordered:
        if lane.kind == "pass":
            assert lane.copy is not None
            desired.append(prev.ys[lane.copy.id])
        elif lane.op is not None and lane.op.inputs:
            assert lane.drawing is not None
            first = lane.drawing.order[0]
            cp = lay.copy_of[(lane.index, first)]
            desired.append(prev.ys[cp.id] - lane.in_slot((first, 0)) * PITCH)
        else:
            desired.append(None)
    _pack(ordered, desired)
    return Column(c, ordered)


def _pack(lanes: list[Lane], desired: list[float | None]) -> None:
    floor = TOP
    for lane, want in zip(lanes, desired, strict=True):
        lane.y0 = max(floor + lane.top_ext, want if want is not None else float("-inf"))
        floor = lane.bottom + lane.bot_ext + LANE_SEP


def _gap(c: int, lanes: list[Lane], lay: Layout) -> Gap:
    entries: list[tuple[Copy, float | None]] = []
    for lane in lanes:
        if lane.kind == "pass":
            assert lane.copy is not None
            entries.append((lane.copy, lane.y0))
            continue
        values = [lane.value] if lane.kind == "input" else lane.op.outputs  # type: ignore[union-attr]
        for k, v in enumerate(values):
            assert v is not None
            for n, cp in enumerate(lay.copies[v]):
                entries.append((cp, lane.y(lane.out_slot((k, 0))) if n == 0 else None))
    gap = Gap(c, [cp for cp, _ in entries])
    floor = TOP + HEADROOM
    for cp, want in entries:
        y = max(floor, want if want is not None else float("-inf"))
        gap.ys[cp.id] = y
        floor = y + (len(cp.names) - 1) * PITCH + BUNDLE_GAP
    return gap


def _transition(dys: list[float], forks: bool) -> float:
    big = max((abs(d) for d in dys), default=0.0)
    if big < 0.01 and not forks:
        return 0.0
    return min(72.0, max(22.0, 14.0 + 0.25 * big))


def _place_x(lay: Layout) -> None:
    flat = lay.flat
    names_w = max((text_width(n, NAME_SIZE) for n, _ in flat.inputs), default=0.0)
    x = MARGIN + names_w + 8
    lay.x_start = x
    bracket_cols = {lay.col_of[r.ops[0]] for r in flat.regions if r.ops}
    bracket_ends = {max(lay.col_of[o] for o in r.ops) for r in flat.regions if r.ops}
    for n, col in enumerate(lay.columns):
        prev = lay.gaps[n - 1] if n > 0 else None
        gap = lay.gaps[n]
        tl: list[float] = []
        tr: list[float] = []
        forks = False
        for lane in col.lanes:
            if lane.kind == "pass" and prev is not None:
                assert lane.copy is not None
                tl += [prev.y(lane.copy, j) - lane.y(j) for j in range(len(lane.slots))]
                tr += [gap.y(lane.copy, j) - lane.y(j) for j in range(len(lane.slots))]
                continue
            if lane.kind == "op" and prev is not None:
                assert lane.op is not None
                for i in range(len(lane.op.inputs)):
                    cp = lay.copy_of[(lane.index, i)]
                    tl += [prev.y(cp, j) - lane.y(lane.in_slot((i, j))) for j in range(len(cp.names))]
            values = [lane.value] if lane.kind == "input" else lane.op.outputs  # type: ignore[union-attr]
            for k, v in enumerate(values):
                assert v is not None
                forks = forks or len(lay.copies[v]) != 1
                for cp in lay.copies[v]:
                    tr += [gap.y(cp, j) - lane.y(lane.out_slot((k, j))) for j in range(len(cp.names))]
        col.tl = _transition(tl, False) if prev is not None else 0.0
        col.zone = max((lane.width for lane in col.lanes), default=0.0) if col.index >= 0 else 0.0
        col.tr = _transition(tr, forks)
        col.x0 = x
        x = col.x1
        gap.x0 = x
        labels = max((text_width(name, LABEL_SIZE) for cp in gap.copies for name in cp.names), default=0.0)
        gap.pad_left = 14.0 if col.index in bracket_ends else 0.0
        gap.pad_right = 14.0 if col.index + 1 in bracket_cols else 0.0
        gap.width = max(labels + 12, 26.0) + gap.pad_left + gap.pad_right
        x = gap.x1
    lay.x_end = x
