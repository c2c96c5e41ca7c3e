"""Circuit diagrams draw a split as one fan and a mask as a box on the score wires.

Expected values come from the checked graph (the split's select nodes and their indices, the mask's axes, the
value the padding mask arrives as) and from the SVG's own geometry (where wires end, where the contraction's cups
and the softmax triangle are), never from what the renderer printed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import nnspec
from nnspec.compiler.diagrams import circuit_svg
from nnspec.compiler.diagrams.view import select_graph

ROOT = Path(__file__).resolve().parent.parent
NS = "{http://www.w3.org/2000/svg}"
EPS = 0.6


def _svg(spec: str, block: str | None, expand: int = 0) -> tuple[ET.Element, nnspec.compiler.ir.Model]:
    model = nnspec.check(ROOT / "examples" / spec).model
    return ET.fromstring(circuit_svg(model, block=block, expand=expand).split("?>", 1)[-1]), model


def _ends(d: str) -> tuple[tuple[float, float], tuple[float, float]]:
    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
    first = (nums[0], nums[1])
    cmds = re.findall(r"([MHVLC])([^MHVLC]*)", d)
    x, y = first
    for cmd, args in cmds:
        vals = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", args)]
        if cmd == "H":
            x = vals[-1]
        elif cmd == "V":
            y = vals[-1]
        else:
            x, y = vals[-2], vals[-1]
    return first, (x, y)


def _wires(root: ET.Element) -> list[ET.Element]:
    return [p for p in root.iter(NS + "path") if p.get("data-role") == "wire"]


def _split_members(model: nnspec.compiler.ir.Model, block: str | None) -> list[str]:
    """From the graph: the select nodes reading one value over one axis, by index (the spec's names)."""
    graph = select_graph(model, block)
    readers: dict[str, list] = {}
    for node in graph:
        if node.op == "select":
            readers.setdefault(node.inputs[0], []).append(node)
    (nodes,) = [ns for ns in readers.values() if len(ns) > 1]
    return [n.name for n in sorted(nodes, key=lambda n: n.attrs["index"])]


@pytest.mark.parametrize(("spec", "block"), [("gpt2.yaml", "attention"), ("mamba.yaml", "mixer")])
def test_a_split_is_one_bundle_fanning_into_named_members(spec: str, block: str) -> None:
    root, model = _svg(spec, block)
    (fan,) = [g for g in root.iter(NS + "g") if g.get("data-role") == "split"]
    members = [t.text for t in fan.iter(NS + "text") if t.get("data-role") == "member"]
    assert members == _split_members(model, block)
    (bar,) = [r for r in fan.iter(NS + "rect") if r.get("data-role") == "bar"]
    x0, x1 = float(bar.get("x")), float(bar.get("x")) + float(bar.get("width"))
    y0, y1 = float(bar.get("y")), float(bar.get("y")) + float(bar.get("height"))
    ending = [w for w in _wires(root) if abs(_ends(w.get("d"))[1][0] - x0) < 2 + EPS
              and y0 - EPS <= _ends(w.get("d"))[1][1] <= y1 + EPS and w.get("data-end") == "box"]
    starting = [w for w in _wires(root) if abs(_ends(w.get("d"))[0][0] - x1) < 2 + EPS
                and y0 - EPS <= _ends(w.get("d"))[0][1] <= y1 + EPS]
    # one bundle in: the value the split reads (before its reshape to [.., 3, ..]), once, not once per member
    graph = select_graph(model, block)
    value = graph[_split_members(model, block)[0]].inputs[0]
    if graph[value].op == "rearrange":
        value = graph[value].inputs[0]
    assert len(ending) == len(graph[value].tensor_type.names)
    assert not [c for c in root.iter(NS + "circle") if c.get("data-role") == "copy" and c.get("data-node") == value]
    # each member leaves the bar as its own bundle: the sum of the members' widths, not members x the bundle's
    outs = {w.get("data-value") for w in starting}
    assert len(outs) == len(members)
    assert len(starting) == sum(len(graph[m].tensor_type.names) for m in _split_members(model, block))
    assert len([r for r in root.iter(NS + "rect") if r.get("data-role") == "bar"
                and x0 - EPS <= float(r.get("x")) <= x1 + EPS]) == 1
    # each name sits over its own member's first wire, in order down the bar
    ys = [float(t.get("y")) for t in fan.iter(NS + "text") if t.get("data-role") == "member"]
    assert ys == sorted(ys)
    firsts = sorted(min(_ends(w.get("d"))[0][1] for w in starting if w.get("data-value") == v) for v in outs)
    for y, first in zip(ys, firsts, strict=True):
        assert first - 12 < y < first


def test_the_causal_mask_is_a_triangle_box_on_the_score_axes_between_the_scores_and_the_softmax() -> None:
    root, model = _svg("gpt2.yaml", "attention")
    graph = select_graph(model, "attention")
    (mask,) = [g for g in root.iter(NS + "g") if g.get("data-role") == "mask"]
    (causal,) = [n for n in graph if n.op == "causal_mask"]
    assert mask.get("data-axes").split() == [causal.attrs["q"].name, causal.attrs["k"].name]   # T S
    assert [t.text for t in mask.iter(NS + "text") if t.get("data-role") == "mask-axes"] == ["T S"]
    (shape,) = [p for p in mask.iter(NS + "path") if p.get("data-role") == "mask-shape"]
    assert shape.get("data-shape") == "causal_mask"
    pts = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", shape.get("d"))]
    xs, ys = pts[0::2], pts[1::2]
    # a lower triangle: the corner at (left, bottom) and the diagonal from top-left to bottom-right
    assert len(xs) == 3 and xs[0] == xs[2] == min(xs) and ys[1] == ys[2] == max(ys) and ys[0] == min(ys)
    # no separate source box for the mask: it is drawn inside the mask box
    assert not [g for g in root.iter(NS + "g") if g.get("data-op") == "causal_mask"]
    boxes = [r for r in mask.iter(NS + "rect") if r.get("data-role") == "box"]
    bx0 = min(float(r.get("x")) for r in boxes)
    bx1 = max(float(r.get("x")) + float(r.get("width")) for r in boxes)
    # between the q.k contraction (its cup summing head_dim) and the softmax triangle
    (qk_cup,) = [p for p in root.iter(NS + "path") if p.get("data-role") == "cup" and p.get("data-axis") == "head_dim"]
    cup_x = max(float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", qk_cup.get("d"))[0::2])
    (soft,) = [p for p in root.iter(NS + "path") if p.get("data-role") == "softmax"]
    soft_x = min(float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", soft.get("d"))[0::2])
    assert cup_x < bx0 < bx1 < soft_x
    # the padding mask arrives as a wire (the block's input `visible`) and enters the same box
    padding = [n for n in graph.inputs if n != graph.inputs[0]]
    entering = [w for w in _wires(root) if w.get("data-value") in padding and w.get("data-end") == "box"
                and bx0 - EPS <= _ends(w.get("d"))[1][0] <= bx1 + EPS]
    assert len(entering) == len(graph[padding[0]].tensor_type.names)


def test_a_mask_that_arrives_as_a_wire_alone_is_a_mask_box_it_enters() -> None:
    root, _ = _svg("small/graph_transformer.yaml", "graph_attention")
    masks = [g for g in root.iter(NS + "g") if g.get("data-role") == "mask"]
    assert masks
    for g in masks:
        assert g.get("data-shape") is None and g.get("data-axes")


def test_a_fused_causal_attention_shows_its_mask_inside_its_box() -> None:
    root, model = _svg("llama.yaml", "self_attn")
    (node,) = [n for n in select_graph(model, "self_attn") if n.op == "attention"]
    assert node.attrs["causal"]
    (group,) = [g for g in root.iter(NS + "g") if g.get("data-op") == "attention"]
    (mask,) = [g for g in group.iter(NS + "g") if g.get("data-role") == "mask"]
    assert mask.get("data-axes").split() == [node.attrs["query"], node.attrs["key"]]
    (shape,) = [p for p in mask.iter(NS + "path") if p.get("data-role") == "mask-shape"]
    pts = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", shape.get("d"))]
    boxes = [r for r in group.findall(NS + "rect") if r.get("data-role") == "box"]
    assert any(float(r.get("x")) <= min(pts[0::2]) and max(pts[0::2]) <= float(r.get("x")) + float(r.get("width"))
               and float(r.get("y")) <= min(pts[1::2]) and max(pts[1::2]) <= float(r.get("y")) + float(r.get("height"))
               for r in boxes)                                  # inside the attention's box
