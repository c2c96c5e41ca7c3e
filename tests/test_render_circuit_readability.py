"""Circuit diagrams a reader can follow: contractions named by their axes (not einsum letters) and dashed tuple
separators only ever between two drawn members. Expected values come from the checked graph (the einsum nodes'
axis names) and from the SVG's own wire geometry, not from what the renderer printed."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import nnspec
from nnspec.compiler.diagrams import circuit_svg

ROOT = Path(__file__).resolve().parent.parent
NS = "{http://www.w3.org/2000/svg}"
CASES = [("gpt2.yaml", "attention", 0), ("gpt2.yaml", "layer", 1), ("small/moe.yaml", None, 1),
         ("llama.yaml", "self_attn", 0), ("small/window_attention.yaml", None, 1), ("mixtral.yaml", "layer", 0)]
WITH_EINSUMS = CASES[:2]    # the others' contractions are attention ops or read a weight (learned maps)


def _svg(spec: str, block: str | None, expand: int) -> tuple[ET.Element, nnspec.compiler.ir.Model]:
    model = nnspec.check(ROOT / "examples" / spec).model
    text = circuit_svg(model, block=block, expand=expand)
    return ET.fromstring(text.split("?>", 1)[-1]), model


def _horizontal_runs(d: str) -> list[tuple[float, float, float]]:
    """(x from, x to, y) of each horizontal piece of a wire's path (M, H, V, L and C commands)."""
    out, x, y = [], 0.0, 0.0
    for cmd, args in re.findall(r"([MHVLC])([^MHVLC]*)", d):
        nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", args)]
        if cmd == "H":
            for nx in nums:
                out.append((min(x, nx), max(x, nx), y))
                x = nx
        elif cmd == "V":
            y = nums[-1]
        else:
            x, y = nums[-2], nums[-1]
    return out


@pytest.mark.parametrize(("spec", "block", "expand"), WITH_EINSUMS)
def test_contractions_are_labelled_by_the_axes_they_sum(spec: str, block: str | None, expand: int) -> None:
    root, model = _svg(spec, block, expand)
    notes = [e for e in root.iter(NS + "text") if e.get("data-role") == "einsum"]
    einsums = [n for g in model.graphs() for n in g if n.op == "einsum"]
    assert einsums
    # what each einsum of the graph sums over, by name: its inputs' axes that its output lacks
    summed = set()
    for g in model.graphs():
        for n in g:
            if n.op == "einsum" and not any(g[i].op == "param" for i in n.inputs):
                names = [a for i in n.inputs for a in g.input_types(n)[n.inputs.index(i)].names]
                gone = list(dict.fromkeys(a for a in names if a not in n.type.names))
                summed.add("Σ " + ", ".join(gone) if gone else "outer")
    assert notes
    for e in notes:
        assert not re.fullmatch(r"[a-zA-Z]+(,[a-zA-Z]+)*->[a-zA-Z]*", e.text or ""), e.text
        assert e.text in summed, (e.text, summed)
        assert "->" in e.get("data-einsum", "")      # the einsum string stays available to tools


@pytest.mark.parametrize(("spec", "block", "expand"), CASES)
def test_every_dashed_separator_lies_between_two_drawn_members(spec: str, block: str | None, expand: int) -> None:
    root, _ = _svg(spec, block, expand)
    runs = [r for p in root.iter(NS + "path") if p.get("data-role") == "wire" for r in _horizontal_runs(p.get("d"))]
    separators = [e for e in root.iter(NS + "line") if e.get("data-role") == "separator"]
    for sep in separators:
        x1, x2, y = float(sep.get("x1")), float(sep.get("x2")), float(sep.get("y1"))
        for x in (x1, (x1 + x2) / 2, x2):          # along its whole length: a wire above and one below
            assert any(a <= x <= b and wy < y for a, b, wy in runs), (spec, block, x, y, "nothing above")
            assert any(a <= x <= b and wy > y for a, b, wy in runs), (spec, block, x, y, "nothing below")


MARK_ROLES = {"lift", "softmax", "cup", "join", "copy", "bar", "split", "mask", "router", "experts", "weighted-sum",
              "separator", "bracket"}


@pytest.mark.parametrize(("spec", "block", "expand"), CASES)
def test_the_legend_lists_exactly_the_marks_drawn(spec: str, block: str | None, expand: int) -> None:
    root, _ = _svg(spec, block, expand)
    (key,) = [g for g in root.iter(NS + "g") if g.get("data-role") == "legend"]
    in_key = {id(e) for e in key.iter()}
    drawn = [e for e in root.iter() if id(e) not in in_key]
    roles = {e.get("data-role") for e in drawn} & MARK_ROLES
    op_groups = [e for e in drawn if e.tag == NS + "g" and e.get("data-op")]
    if any(g.get("data-role") == "box" and g.get("data-family") == "nn" for g in op_groups):
        roles.add("learned")
    if any(g.get("data-role") == "box" and g.get("data-family") != "nn" for g in op_groups):
        roles.add("box")
    entries = [e for e in key.iter(NS + "g") if e.get("data-role") == "legend-entry"]
    assert {e.get("data-mark") for e in entries if e.get("data-mark") != "glyph"} == roles
    # every glyph written on an op that is not a learned map is explained, by the op it stands for
    glyph_ops = {e.get("data-glyph"): e for e in entries if e.get("data-mark") == "glyph"}
    for g in op_groups:
        if g.get("data-family") == "nn":
            continue
        for t in g.iter(NS + "text"):
            if t.get("data-role") == "glyph" and t.text != g.get("data-op"):
                explained = [e for shown, e in glyph_ops.items() if t.text in shown.split(" ")]
                assert explained, (t.text, g.get("data-op"))
                assert explained[0].findall(f"{NS}text[@data-role='legend-text']")[0].text == g.get("data-op")
    # inside the drawing
    width = float(root.get("width"))
    assert all(float(t.get("x")) <= width for t in key.iter(NS + "text"))


def test_legend_can_be_left_out() -> None:
    model = nnspec.check(ROOT / "examples" / "gpt2.yaml").model
    assert 'data-role="legend"' not in circuit_svg(model, block="mlp", legend=False)
    assert 'data-role="legend"' in circuit_svg(model, block="mlp")
