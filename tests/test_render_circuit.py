"""Neural circuit diagrams, checked by their geometry.

The SVG is parsed and its shapes measured: labels sit on wires, bundles in each gap spell the tensor types in
axis order, broadcast wires pass a box's column while the axes it acts on end at it, contracted wires end in
cups and shared ones meet at dots (and re-deriving the einsum from that wiring gives the graph's einsum),
bold glyphs are exactly the parameterised ops, no text overlaps, all of it inside the viewBox. `data-`
attributes only help find elements (which op a box belongs to); every claim is checked on coordinates.
Expected facts come from the checked graph (node types, attributes, parameter inputs), not from the
renderer's own decisions.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import nnspec
from nnspec.compiler.diagrams import circuit_svg
from nnspec.compiler.diagrams.fuse import fuse
from nnspec.compiler.diagrams.metrics import ASCENT, DESCENT, text_width
from nnspec.compiler.diagrams.view import flatten, select_graph
from nnspec.compiler.ir import Model, TensorType
from nnspec.compiler.ops.contract import einsum_string

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "golden" / "render" / "specs"
GOLDEN = Path(__file__).resolve().parent / "golden" / "render"
NS = "{http://www.w3.org/2000/svg}"
EPS = 0.6


# ---- the cases: GPT-2 and its blocks, small specs written for these tests, every example present ----
def _example_cases() -> list[tuple[str, str | None, int]]:
    out: list[tuple[str, str | None, int]] = []
    for path in sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("examples/small/*.yaml")]):
        rel = str(path.relative_to(ROOT))
        out += [(rel, None, 0), (rel, None, 1)]
        try:
            model = _model(rel)
        except nnspec.SpecError:
            continue
        for block in sorted({str(g.meta.get("block", g.name)) for g in model.templates.values()}):
            out.append((rel, block, 0))
    return out


OWN = [("tiny_attention.yaml", None, 0), ("residual_mlp.yaml", None, 0), ("halves.yaml", None, 0),
       ("halves.yaml", None, 1), ("broadcast.yaml", None, 0), ("conv.yaml", None, 0)]
GPT2 = [("examples/gpt2.yaml", None, 0), ("examples/gpt2.yaml", None, 1), ("examples/gpt2.yaml", None, 2),
        ("examples/gpt2.yaml", "attention", 0), ("examples/gpt2.yaml", "mlp", 0), ("examples/gpt2.yaml", "layer", 0)]


@functools.cache
def _model(spec: str) -> Model:
    path = SPECS / spec if (SPECS / spec).exists() else ROOT / spec
    return nnspec.check(path).model


def _cases() -> list[tuple[str, str | None, int]]:
    seen = dict.fromkeys([*GPT2, *OWN, *_example_cases()])
    return list(seen)


CASES = _cases()
IDS = [f"{Path(s).stem}-{b or 'model'}-x{e}" for s, b, e in CASES]


# ---- reading the SVG back: paths as polylines, texts as boxes ----
def _numbers(s: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", s)]


def _polyline(d: str) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(sampled points, vertices) of a path made of absolute M, L, H, V, C and Z commands."""
    pts: list[tuple[float, float]] = []
    verts: list[tuple[float, float]] = []
    x = y = 0.0
    for cmd, args in re.findall(r"([MLHVCZ])([^MLHVCZ]*)", d):
        v = _numbers(args)
        if cmd in "ML":
            x, y = v
            pts.append((x, y))
        elif cmd == "H":
            x = v[0]
            pts.append((x, y))
        elif cmd == "V":
            y = v[0]
            pts.append((x, y))
        elif cmd == "C":
            x1, y1, x2, y2, x3, y3 = v
            for k in range(1, 33):
                t = k / 32
                a, b, c, e = (1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t ** 3
                pts.append((a * x + b * x1 + c * x2 + e * x3, a * y + b * y1 + c * y2 + e * y3))
            x, y = x3, y3
        elif cmd == "Z" and pts:
            pts.append(pts[0])
            x, y = pts[0]
        if cmd != "Z":
            verts.append((x, y))
    return pts, verts


@dataclass
class Wire:
    axis: str          # data-axis: used only to cross-check the label found by geometry
    value: str
    pts: list[tuple[float, float]]
    verts: list[tuple[float, float]]

    @property
    def start(self) -> tuple[float, float]:
        return self.pts[0]

    @property
    def end(self) -> tuple[float, float]:
        return self.pts[-1]

    def spans(self, x: float) -> bool:
        return self.pts[0][0] - 1e-6 <= x <= self.pts[-1][0] + 1e-6

    def y_at(self, x: float) -> float:
        for (x0, y0), (x1, y1) in zip(self.pts, self.pts[1:], strict=False):
            if x0 - 1e-6 <= x <= x1 + 1e-6:
                return y0 if x1 - x0 < 1e-9 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        raise ValueError(f"wire does not reach x={x}")


@dataclass
class Text:
    x: float
    y: float
    text: str
    size: float
    bold: bool
    anchor: str
    attrs: dict[str, str]

    def box(self) -> tuple[float, float, float, float]:
        w = text_width(self.text, self.size, self.bold)
        x0 = self.x - (w / 2 if self.anchor == "middle" else w if self.anchor == "end" else 0)
        return x0, self.y - ASCENT * self.size, x0 + w, self.y + DESCENT * self.size


@dataclass
class Rect:
    x0: float
    y0: float
    x1: float
    y1: float

    def inside(self, x: float, y: float, margin: float = 0.5) -> bool:
        return self.x0 + margin < x < self.x1 - margin and self.y0 + margin < y < self.y1 - margin


@dataclass
class Group:
    node: str
    op: str
    role: str
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    paths: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)


class Diagram:
    def __init__(self, svg: str) -> None:
        self.root = ET.fromstring(svg.encode())
        _, _, self.width, self.height = _numbers(self.root.get("viewBox", ""))
        self.wires: list[Wire] = []
        self.texts: list[Text] = []
        self.groups: dict[str, Group] = {}
        self.cups: list[tuple[str, list[tuple[float, float]], list[tuple[float, float]]]] = []
        self.dots: list[tuple[str, str, float, float]] = []   # (role, node, x, y)
        self.separators: list[tuple[str, float, float, float]] = []  # (gap, y, x0, x1)
        self.shapes: list[list[tuple[float, float]]] = []     # every drawn coordinate, for the viewBox check
        self._walk(self.root, None)

    def _walk(self, el: ET.Element, group: Group | None) -> None:
        tag, role = el.tag.replace(NS, ""), el.get("data-role", "")
        if tag == "g" and el.get("data-node") and el.get("data-op"):
            group = Group(el.get("data-node", ""), el.get("data-op", ""), role)
            self.groups[group.node] = group
        if tag == "path":
            pts, verts = _polyline(el.get("d", ""))
            self.shapes.append(pts)
            if role == "wire":
                self.wires.append(Wire(el.get("data-axis", ""), el.get("data-value", ""), pts, verts))
            elif role == "cup":
                self.cups.append((el.get("data-node", ""), pts, verts))
            elif group is not None:
                group.paths.append((role, verts if role == "box" else pts))
                if role == "box":     # a convolution's trapezoid: for the checks on boxes, its bounding box
                    xs, ys = [x for x, _ in pts], [y for _, y in pts]
                    group.rects.append(Rect(min(xs), min(ys), max(xs), max(ys)))
        elif tag == "rect" and role in ("box", "bar"):
            x, y, w, h = (float(el.get(k, "0")) for k in ("x", "y", "width", "height"))
            self.shapes.append([(x, y), (x + w, y + h)])
            assert group is not None
            group.rects.append(Rect(x, y, x + w, y + h))
        elif tag == "circle":
            x, y, r = (float(el.get(k, "0")) for k in ("cx", "cy", "r"))
            self.shapes.append([(x - r, y - r), (x + r, y + r)])
            self.dots.append((role, el.get("data-node", ""), x, y))
        elif tag == "line":
            x0, y0, x1, y1 = (float(el.get(k, "0")) for k in ("x1", "y1", "x2", "y2"))
            self.shapes.append([(x0, y0), (x1, y1)])
            if role == "separator":
                self.separators.append((el.get("data-gap", ""), y0, x0, x1))
        elif tag == "text":
            t = Text(float(el.get("x", "0")), float(el.get("y", "0")), el.text or "", float(el.get("font-size", "0")),
                     el.get("font-weight") == "bold", el.get("text-anchor", "start"),
                     {k: v for k, v in el.attrib.items() if k.startswith("data-")})
            self.texts.append(t)
            if group is not None:
                group.texts.append(t)
        for child in el:
            self._walk(child, group)

    @property
    def labels(self) -> list[Text]:
        return [t for t in self.texts if t.attrs.get("data-role") == "label"]

    def wire_under(self, label: Text) -> Wire:
        """The wire a label sits on: spanning the label's x, 2..6 units below its baseline."""
        hits = [w for w in self.wires if w.spans(label.x) and 1.5 <= w.y_at(label.x) - label.y <= 6.0]
        assert len(hits) == 1, f"label {label.text!r} at ({label.x}, {label.y}) sits on {len(hits)} wires"
        return hits[0]

    def label_of(self, wire: Wire, x: float) -> Text | None:
        y = wire.y_at(x)
        hits = [t for t in self.labels if abs(t.x - x) < EPS and 1.5 <= y - t.y <= 6.0]
        return hits[0] if hits else None

    def bundles_at(self, x: float) -> list[list[tuple[Text, Wire]]]:
        """The bundles of the gap whose labels are at `x`: runs of labels one wire pitch apart, top to bottom."""
        labels = sorted((t for t in self.labels if abs(t.x - x) < EPS), key=lambda t: t.y)
        out: list[list[tuple[Text, Wire]]] = []
        for n, t in enumerate(labels):
            if n == 0 or t.y - labels[n - 1].y > 18.0 + EPS:
                out.append([])
            out[-1].append((t, self.wire_under(t)))
        return out

    def gap_xs(self) -> list[float]:
        return sorted({round(t.x, 2) for t in self.labels})

    def starting_at(self, x: float, y: float) -> list[Wire]:
        return [w for w in self.wires if math.dist(w.start, (x, y)) < EPS]

    def ending_at(self, x: float, y: float) -> list[Wire]:
        return [w for w in self.wires if math.dist(w.end, (x, y)) < EPS]

    def follow(self, wire: Wire) -> list[Wire]:
        """The wire and, through copy dots, every wire it continues as."""
        out, todo = [], [wire]
        copies = {(round(x, 2), round(y, 2)) for role, _, x, y in self.dots if role == "copy"}
        while todo:
            w = todo.pop()
            out.append(w)
            if (round(w.end[0], 2), round(w.end[1], 2)) in copies:
                todo += self.starting_at(*w.end)
        return out


@functools.cache
def _render(spec: str, block: str | None, expand: int) -> str:
    return circuit_svg(_model(spec), block=block, expand=expand)


@functools.cache
def _diagram(spec: str, block: str | None, expand: int) -> Diagram:
    return Diagram(_render(spec, block, expand))


def _flat(spec: str, block: str | None, expand: int):  # type: ignore[no-untyped-def]
    model = _model(spec)
    return fuse(flatten(model, select_graph(model, block), expand))   # as drawn: split fans and masks are one op


case = pytest.mark.parametrize(("spec", "block", "expand"), CASES, ids=IDS)


# ---- the checks ----
@case
def test_everything_inside_the_viewbox(spec: str, block: str | None, expand: int) -> None:
    dia = _diagram(spec, block, expand)
    for pts in dia.shapes:
        for x, y in pts:
            assert -EPS <= x <= dia.width + EPS and -EPS <= y <= dia.height + EPS, (x, y)
    for t in dia.texts:
        x0, y0, x1, y1 = t.box()
        assert x0 >= 0 and y0 >= 0 and x1 <= dia.width and y1 <= dia.height, t


@case
def test_no_text_overlaps(spec: str, block: str | None, expand: int) -> None:
    boxes = [(t, t.box()) for t in _diagram(spec, block, expand).texts]
    boxes.sort(key=lambda tb: tb[1][0])
    for n, (t, (_, ay0, ax1, ay1)) in enumerate(boxes):
        for u, (bx0, by0, _, by1) in boxes[n + 1:]:
            if bx0 >= ax1 - 0.3:
                break
            assert min(ay1, by1) - max(ay0, by0) <= 0.3, f"{t.text!r} at ({t.x}, {t.y}) overlaps {u.text!r} at " \
                f"({u.x}, {u.y})"


@case
def test_every_wire_is_labelled_in_every_gap_by_a_label_on_it(spec: str, block: str | None, expand: int) -> None:
    dia = _diagram(spec, block, expand)
    for label in dia.labels:
        wire = dia.wire_under(label)
        assert wire.axis == label.text
        # the wire runs straight under its label
        assert abs(wire.y_at(label.x - 3) - wire.y_at(label.x + 3)) < 1e-6
    for x in dia.gap_xs():
        for wire in dia.wires:
            if wire.spans(x):
                assert dia.label_of(wire, x) is not None, f"unlabelled wire {wire.axis} at x={x}"


@case
def test_bundles_in_each_gap_spell_the_tensor_types(spec: str, block: str | None, expand: int) -> None:
    dia, flat = _diagram(spec, block, expand), _flat(spec, block, expand)
    by_gap: dict[str, list[Text]] = {}
    for t in dia.labels:
        by_gap.setdefault(t.attrs["data-gap"], []).append(t)
    for gap, labels in by_gap.items():
        labels.sort(key=lambda t: t.y)
        bundles: list[list[Text]] = [[labels[0]]]
        for prev, t in itertools.pairwise(labels):
            if t.y - prev.y > 18.0 + EPS:
                bundles.append([])
            bundles[-1].append(t)
        seps = sorted(y for g, y, _, _ in dia.separators if g == gap)
        assert len(seps) == len(bundles) - 1, f"gap {gap}: {len(bundles)} tensors, {len(seps)} separators"
        for upper, lower, y in zip(bundles, bundles[1:], seps, strict=False):
            assert upper[-1].y < y < lower[0].y
        for bundle in bundles:
            values = {t.attrs["data-value"] for t in bundle}
            assert len(values) == 1, f"gap {gap}: one bundle holds {values}"
            t = flat.values[values.pop()].type
            assert [x.text for x in bundle] == (list(t.names) or ["·"])


def _types(flat, values: list[str]) -> list[TensorType]:  # type: ignore[no-untyped-def]
    return [flat.values[v].type for v in values]


def _expected_passing(op) -> tuple[set[str], set[str]] | None:  # type: ignore[no-untyped-def]
    """(axes that must pass over the box, axes that must end at it) for ops whose semantics say so."""
    node, ins = op.node, op.operands
    if op.members:          # a split fan ends its whole bundle at its bar (tests/test_render_circuit_fans.py)
        return None
    tensors = [t for t in ins if isinstance(t, TensorType)]
    if node.op in ("linear", "layernorm", "rmsnorm", "select"):
        axis = node.attrs["axis"]
        return {n for n in tensors[0].names if n != axis}, {axis}
    if node.op == "embedding":
        return set(tensors[0].names), set()
    if node.op == "conv":
        acted = {node.attrs["channel"], *node.attrs["spatial"]}
        return set(tensors[0].names) - acted, acted
    if node.op in ("add", "sub", "mul", "div", "where") and len(tensors) >= 2:
        counts: dict[str, int] = {}
        for t in tensors:
            for n in t.names:
                counts[n] = counts.get(n, 0) + 1
        return {n for n, c in counts.items() if c == 1}, {n for n, c in counts.items() if c > 1}
    return None


@case
def test_broadcast_wires_pass_over_boxes_and_acted_axes_end_at_them(spec: str, block: str | None,
                                                                    expand: int) -> None:
    dia, flat = _diagram(spec, block, expand), _flat(spec, block, expand)
    for group in dia.groups.values():
        for rect in group.rects:                    # no wire crosses any box
            for wire in dia.wires:
                assert not any(rect.inside(x, y) for x, y in wire.pts), f"a {wire.axis} wire crosses {group.node}"
    checked = 0
    for op in flat.ops:
        expected = _expected_passing(op)
        group = dia.groups.get(op.id)
        if expected is None or group is None or not group.rects:
            continue
        passing, acted = expected
        bx0, bx1 = min(r.x0 for r in group.rects), max(r.x1 for r in group.rects)
        gaps = dia.gap_xs()
        before = max(x for x in gaps if x < bx0)
        after = min(x for x in gaps if x > bx1)
        ins = set(op.inputs)
        entering = [(dia.label_of(w, before), w) for w in dia.wires if w.spans(before)]
        entering = [(t, w) for t, w in entering if t is not None and t.attrs["data-value"] in ins]
        for name in passing:
            ok = False
            for t, w in entering:
                if t.text != name or not w.spans(bx1 + 0.5):
                    continue
                if any(r.y0 <= w.y_at(x) <= r.y1 for r in group.rects for x in (bx0, (bx0 + bx1) / 2, bx1)):
                    continue
                outs = [dia.label_of(v, after) for v in dia.follow(w) if v.spans(after)]
                if any(o is not None and o.text == name and o.attrs["data-value"] in op.outputs for o in outs):
                    ok = True
            assert ok, f"{op.id}: axis {name} does not pass over the box"
        for name in acted:
            ends = [w for t, w in entering if t.text == name and abs(w.end[0] - bx0) < EPS
                    and any(r.y0 <= w.end[1] <= r.y1 for r in group.rects)]
            assert ends, f"{op.id}: axis {name} does not end at the box"
        checked += 1
    if spec == "examples/gpt2.yaml" and block == "attention":
        assert checked >= 3       # c_attn, c_proj and the mask (q, k, v are one split fan)


@case
def test_contractions_are_cups_and_dots_that_rederive_the_einsum(spec: str, block: str | None,
                                                                 expand: int) -> None:
    dia, flat = _diagram(spec, block, expand), _flat(spec, block, expand)
    for op in flat.ops:
        if op.op != "einsum" or op.params:
            continue
        cups = [(pts, verts) for node, pts, verts in dia.cups if node == op.id]
        joins = [(x, y) for role, node, x, y in dia.dots if role == "join" and node == op.id]
        # contracted wires end on a cup's ends; shared wires end at a dot, where one wire starts
        cupped: list[list[Wire]] = []
        for _, verts in cups:
            members = [w for w in dia.wires if any(math.dist(w.end, v) < EPS for v in (verts[0], verts[-1]))
                       or (len(verts) > 4 and any(abs(w.end[1] - v[1]) < EPS and abs(w.end[0] - verts[0][0]) < EPS
                                                  for v in verts))]
            assert members, f"{op.id}: a cup with no wires"
            cupped.append(members)
        joined = [(dia.ending_at(x, y), dia.starting_at(x, y)) for x, y in joins]
        for ins, outs in joined:
            assert len(ins) >= 2 and len(outs) == 1, f"{op.id}: a dot joins {len(ins)} wires into {len(outs)}"
        ended = [w for g in cupped for w in g] + [w for ins, _ in joined for w in ins]
        assert ended or not op.inputs
        z0 = min(w.verts[-2][0] for w in ended)       # where the op's zone starts: the wires' last bend
        gaps = dia.gap_xs()
        before = max(x for x in gaps if x < z0)
        after = min(x for x in gaps if x > max(x for x, _ in joins) if joins) if joins else None
        # operands: the bundles (in the gap before) holding the wires that end here, top to bottom at z0
        operands = []
        for bundle in dia.bundles_at(before):
            wires = [w for _, w in bundle]
            if any(w in ended for w in wires):
                operands.append((min(w.y_at(z0) for w in wires), [t.text for t, _ in bundle], wires))
        operands.sort()
        assert len(operands) == len(op.inputs), f"{op.id}: found {len(operands)} operands"
        # every cup joins wires of one name that leaves the contraction; every dot, wires of one name that stays
        names = {id(w): n for _, ns, ws in operands for n, w in zip(ns, ws, strict=True)}
        out_t = flat.values[op.outputs[0]].type
        for members in cupped:
            assert len({names[id(w)] for w in members}) == 1 and names[id(members[0])] not in out_t.names
        for ins, _ in joined:
            assert len({names[id(w)] for w in ins}) == 1 and names[id(ins[0])] in out_t.names
        # the result: the bundle in the gap after holding the dot-started and free wires, in y order there
        assert after is not None or not joins
        x_after = after if after is not None else min(x for x in gaps if x > z0)
        free = [w for _, _, ws in operands for w in ws if w not in ended]
        results = [w for _, outs in joined for w in outs] + free
        out_names = []
        for w in results:
            for v in dia.follow(w):
                if v.spans(x_after):
                    lab = dia.label_of(v, x_after)
                    assert lab is not None and lab.attrs["data-value"] in op.outputs
                    out_names.append((v.y_at(x_after), lab.text))
                    break
        out_names = sorted(out_names)
        derived = einsum_string([TensorType(tuple(_axis(n) for n in ns), out_t.dtype) for _, ns, _ in operands],
                                TensorType(tuple(_axis(n) for _, n in out_names), out_t.dtype))
        expected = einsum_string(_types(flat, op.inputs), out_t)
        assert derived == expected, f"{op.id}: the wiring says {derived}, the graph {expected}"


def _axis(name: str):  # type: ignore[no-untyped-def]
    from nnspec.compiler.ir import Axis
    return Axis(name, None)  # type: ignore[arg-type]


def test_the_attention_contractions_are_found() -> None:
    dia = _diagram("examples/gpt2.yaml", "attention", 0)
    assert len([c for c in dia.cups]) == 2                      # head_dim for q·k, S for p·v
    assert len([d for d in dia.dots if d[0] == "join"]) == 4     # B and n_head, twice


@case
def test_bold_glyphs_exactly_on_parameterised_ops_and_plus_exactly_with_bias(spec: str, block: str | None,
                                                                             expand: int) -> None:
    model = _model(spec)
    graph = select_graph(model, block)
    dia = _diagram(spec, block, expand)
    if expand == 0:        # straight from the graph: node -> its parameter inputs
        from nnspec.compiler.analysis import Analysis
        an = Analysis(model)
        for node in graph:
            group = dia.groups.get(node.name)
            if node.op in ("input", "param", "const", "getitem", "buffer") or group is None:
                continue
            params = [graph[i] for i in node.inputs if graph[i].op == "param"]
            learned = bool(params) or (node.op in ("call", "repeat") and an.node_params(node) > 0)
            bias = any(p.attrs["path"].rsplit(".", 1)[-1] == "bias" for p in params)
            assert any(t.bold for t in group.texts) == learned, node.name
            assert any(t.attrs.get("data-role") == "bias" and t.text == "+" for t in group.texts) == bias, node.name
    bold_groups = {g.node for g in dia.groups.values() if any(t.bold for t in g.texts)}
    flat = _flat(spec, block, expand)
    assert bold_groups == {op.id for op in flat.ops if op.param_count > 0}
    outside = [t for t in dia.texts if t.bold and t.attrs.get("data-role") not in ("title", "input", "output")
               and not t.attrs.get("data-role", "").startswith("legend-")    # the legend's key to bold `L`
               and not any(t in g.texts for g in dia.groups.values())]
    assert not outside


@case
def test_copies_fork_at_dots(spec: str, block: str | None, expand: int) -> None:
    dia = _diagram(spec, block, expand)
    for role, _, x, y in dia.dots:
        if role == "copy":
            ins, outs = dia.ending_at(x, y), dia.starting_at(x, y)
            assert len(ins) == 1 and len(outs) >= 2
            assert {w.axis for w in outs} == {ins[0].axis}


@case
def test_softmax_sits_on_its_axis_and_lifted_glyphs_end_no_wire(spec: str, block: str | None, expand: int) -> None:
    dia, flat = _diagram(spec, block, expand), _flat(spec, block, expand)
    for op in flat.ops:
        group = dia.groups.get(op.id)
        if group is None:
            continue
        if op.op == "softmax":
            (pts,) = [p for role, p in group.paths if role == "softmax"]
            cx = sum(x for x, _ in pts[:-1]) / 3
            cy = (min(y for _, y in pts) + max(y for _, y in pts)) / 2
            under = [w for w in dia.wires if w.spans(cx) and abs(w.y_at(cx) - cy) < EPS]
            assert len(under) == 1
            before = max(x for x in dia.gap_xs() if x < cx)
            label = dia.label_of(under[0], before)
            assert label is not None and label.text == op.node.attrs["axis"]
        if group.role == "lift":          # the glyph rides above its bundle, whose wires pass beneath
            ((_, arrow),) = [(r, p) for r, p in group.paths if r == "lift"]
            (x0, y), (x1, _) = arrow[0], arrow[-1]
            below = [w for w in dia.wires if w.spans((x0 + x1) / 2) and w.y_at((x0 + x1) / 2) > y]
            top = min(below, key=lambda w: w.y_at((x0 + x1) / 2))
            assert top.spans(x0 - 1) and top.spans(x1 + 1), f"{op.id}: a wire ends under the lifted glyph"


def test_repeat_is_bracketed_xN() -> None:
    collapsed = _render("examples/gpt2.yaml", None, 0)
    dia = Diagram(collapsed)
    brackets = dia.groups["h_1"]
    assert [t.text for t in brackets.texts if t.attrs.get("data-role") == "count"] == ["×12"]
    box = brackets.rects[0]
    ends = [p for role, p in brackets.paths if role == "bracket"]
    assert len(ends) == 2 and ends[0][1][0] < box.x0 and ends[1][1][0] > box.x1
    expanded = ET.fromstring(_render("examples/gpt2.yaml", None, 1).encode())
    region = [g for g in expanded.iter(f"{NS}g") if g.get("data-role") == "region"]
    assert len(region) == 1 and region[0].get("data-count") == "12"
    xs = [_polyline(p.get("d", ""))[1] for p in region[0].iter(f"{NS}path")]
    left, right = xs[0][1][0], xs[1][1][0]
    dia1 = _diagram("examples/gpt2.yaml", None, 1)
    inside = [g for n, g in dia1.groups.items() if n.startswith("h/")]
    assert inside and all(left < r.x0 and r.x1 < right for g in inside for r in g.rects)
    outside = [g for n, g in dia1.groups.items() if not n.startswith("h/")]
    assert all(r.x1 < left or r.x0 > right for g in outside for r in g.rects)


def test_broadcast_add_passes_B_over_the_box() -> None:
    """`tok + pos` where pos has no B: the B wire passes over the + box, T and d end at it."""
    dia = _diagram("broadcast.yaml", None, 0)
    box = dia.groups["y"].rects
    assert len(box) == 1
    b_wires = [w for w in dia.wires if w.axis == "B" and w.spans(box[0].x0 - 1) and w.spans(box[0].x1 + 1)]
    assert b_wires and all(w.y_at(box[0].x0) < box[0].y0 for w in b_wires)


@pytest.mark.parametrize(("spec", "block"), [("conv.yaml", None), ("examples/vit.yaml", "embeddings")])
def test_a_convolution_is_a_trapezoid_with_a_star_and_its_stride(spec: str, block: str | None) -> None:
    """Abbott's convolution: a trapezoid narrowing to the right (the spatial axes shrink by the stride), a bold
    star with the stride as a subscript; the channel and spatial wires end at its left edge, the output's start at
    its right edge, and the batch passes over it."""
    dia, flat = _diagram(spec, block, 0), _flat(spec, block, 0)
    (op,) = [o for o in flat.ops if o.op == "conv"]
    group = dia.groups[op.id]
    ((_, corners),) = [(r, p) for r, p in group.paths if r == "box"]
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = corners[:4]
    assert x0 == x3 < x1 == x2 and y0 < y1 < y2 < y3, corners    # left edge taller than the right one
    assert {t.text for t in group.texts if t.bold} == {"★"}
    strides = op.node.attrs["stride"]
    assert [t.text for t in group.texts if t.attrs.get("data-role") == "stride"] == [f"÷{strides[0]}"]
    gaps = dia.gap_xs()
    before, after = max(x for x in gaps if x < x0), min(x for x in gaps if x > x1)
    ending = sorted(dia.label_of(w, before).text for w in dia.wires if w.spans(before) and abs(w.end[0] - x0) < EPS
                    and y0 <= w.end[1] <= y3)
    assert ending == sorted([op.node.attrs["channel"], *op.node.attrs["spatial"]])
    out_t = flat.values[op.outputs[0]].type
    starting = [w for w in dia.wires if abs(w.start[0] - x1) < EPS and y1 <= w.start[1] <= y2]
    assert sorted(dia.label_of(w, after).text for w in starting) == sorted(n for n in out_t.names if n != "B")
    assert any(w.spans(x0 - 1) and w.spans(x1 + 1) and w.y_at((x0 + x1) / 2) < y0 for w in dia.wires)   # B


def test_a_scan_consumes_its_state_and_inputs_whole() -> None:
    """A recurrence's box takes every wire of its initial state and of its sequences (none passes over: the state
    is replaced at every step), and its results start at the box."""
    dia, flat = _diagram("examples/small/retention.yaml", None, 0), _flat("examples/small/retention.yaml", None, 0)
    (op,) = [o for o in flat.ops if o.op == "scan"]
    (box,) = dia.groups[op.id].rects
    gaps = dia.gap_xs()
    before = max(x for x in gaps if x < box.x0)
    entering = [w for w in dia.wires if w.spans(before) and dia.label_of(w, before).attrs["data-value"] in op.inputs]
    assert len(entering) == sum(len(flat.values[v].type.names) for v in op.inputs)
    assert all(abs(w.end[0] - box.x0) < EPS and box.y0 <= w.end[1] <= box.y1 for w in entering)
    leaving = [w for w in dia.wires if abs(w.start[0] - box.x1) < EPS and box.y0 <= w.start[1] <= box.y1]
    assert len(leaving) == sum(len(flat.values[v].type.names) for v in op.outputs)


def test_a_tuple_is_stacked_bundles_with_a_dashed_separator() -> None:
    dia = _diagram("halves.yaml", None, 0)
    group = dia.groups["halves"]
    x = min(x for x in dia.gap_xs() if x > group.rects[0].x1)
    labels = sorted((t for t in dia.labels if abs(t.x - x) < EPS), key=lambda t: t.y)
    assert [t.text for t in labels] == ["B", "T", "half", "B", "T", "half"]
    assert [t.attrs["data-value"] for t in labels] == ["halves#0"] * 3 + ["halves#1"] * 3
    seps = [y for _, y, x0, x1 in dia.separators if x0 < x < x1]
    assert len(seps) == 1 and labels[2].y < seps[0] < labels[3].y


def test_byte_identical_across_runs_and_hash_seeds() -> None:
    """A fresh interpreter with another hash seed draws the same bytes as this one, twice."""
    code = ("import sys, nnspec; from nnspec.compiler.diagrams import circuit_svg, block_graph; "
            "m = nnspec.check('examples/gpt2.yaml').model; "
            "sys.stdout.write(circuit_svg(m, block='attention') + circuit_svg(m, expand=1) + block_graph(m, expand=2) "
            "+ circuit_svg(m, block='attention', wrap=True))")
    seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True, env=env, text=True)
    model = _model("examples/gpt2.yaml")
    from nnspec.compiler.diagrams import block_graph
    here = circuit_svg(model, block="attention") + circuit_svg(model, expand=1) + block_graph(model, expand=2) \
        + circuit_svg(model, block="attention", wrap=True)
    assert done.stdout == here
    assert circuit_svg(model, block="attention") == circuit_svg(model, block="attention")


@pytest.fixture
def regen() -> bool:
    return os.environ.get("NNSPEC_REGEN") == "1"


# ---- goldens: the SVG text of the examples (NNSPEC_REGEN=1 rewrites them; review each PNG before accepting) ----
CIRCUIT_GOLDENS = {
    "gpt2_attention": ("examples/gpt2.yaml", "attention", 0),
    "gpt2_layer": ("examples/gpt2.yaml", "layer", 0),
    "gpt2_mlp": ("examples/gpt2.yaml", "mlp", 0),
    "gpt2_model_x1": ("examples/gpt2.yaml", None, 1),
    "tiny_attention": ("tiny_attention.yaml", None, 0),
    "residual_mlp": ("residual_mlp.yaml", None, 0),
    "halves": ("halves.yaml", None, 0),
    "broadcast": ("broadcast.yaml", None, 0),
    "vit_embeddings": ("examples/vit.yaml", "embeddings", 0),
    "moe": ("examples/small/moe.yaml", None, 0),
    "graph_attention": ("examples/small/graph_transformer.yaml", "graph_attention", 0),
    "conv": ("conv.yaml", None, 0),
}


@pytest.mark.parametrize("name", sorted(CIRCUIT_GOLDENS))
def test_circuit_golden(name: str, regen: bool) -> None:
    spec, block, expand = CIRCUIT_GOLDENS[name]
    if not (SPECS / spec).exists() and not (ROOT / spec).exists():
        pytest.skip(f"{spec} is not in this checkout")
    got = _render(spec, block, expand)
    path = GOLDEN / f"{name}.svg"
    if regen:
        path.write_text(got)
    assert path.read_text() == got, f"{path} differs; NNSPEC_REGEN=1 rewrites it (then review the PNG)"
