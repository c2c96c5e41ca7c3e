"""Transforms are visible in the diagrams (`nnspec render` with transform flags, `block_graph`, `circuit_svg`).

The block graph is parsed by graphviz itself (`dot -Tjson0`: nodes, clusters, edges and their attributes); the
circuit diagram as XML, its outlines measured. What must be marked comes from the transforms' definitions,
written out by hand (a LoRA adapter is two linears, a scale and a sum; a bf16 layer casts each norm's result
down and each branch's result up; a dropped branch takes its norm with it), and from the transformed IR's
`meta["transform"]`; an untransformed model shows no mark (its goldens are in test_render_dot/_circuit).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import nnspec
from nnspec.cli import app
from nnspec.compiler.diagrams import block_graph, circuit_svg
from nnspec.compiler.diagrams.metrics import text_width
from nnspec.compiler.diagrams.palette import TRANSFORM
from nnspec.compiler.diagrams.view import flatten, select_graph
from nnspec.compiler.ir import Model
from nnspec.compiler.transforms import apply

ROOT = Path(__file__).resolve().parent.parent
NS = "{http://www.w3.org/2000/svg}"
LAYER_PARAMS = 7_087_872          # one GPT-2 small layer: ln_1 1,536 + attn 2,362,368 + ln_2 1,536 + mlp 4,722,432
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` is not installed")


@functools.cache
def _gpt2() -> Model:
    return nnspec.check(ROOT / "examples" / "gpt2.yaml", n_layer=4).model


def _transformed(**kw: Any) -> Model:
    return apply(_gpt2(), **kw)[0]


# ---- the block graph, parsed by graphviz ----
class Dot:
    """`dot -Tjson0` of DOT text: nodes and clusters by name, edges as (tail, head, attributes)."""

    def __init__(self, source: str) -> None:
        out = subprocess.run(["dot", "-Tjson0"], input=source.encode(), capture_output=True, check=True).stdout
        data = json.loads(out)
        objects = data.get("objects", [])
        self.label = data.get("label", "")
        self.clusters = {o["name"]: o for o in objects if o["name"].startswith("cluster")}
        self.nodes = {o["name"]: o for o in objects if not o["name"].startswith("cluster")}
        names = [o["name"] for o in objects]
        self.edges = [(names[e["tail"]], names[e["head"]], e) for e in data.get("edges", [])]

    def marked(self) -> set[str]:
        return {n for n, o in self.nodes.items() if o.get("color") == TRANSFORM and n != "legend"}

    def lines(self, name: str) -> list[str]:
        return self.nodes[name]["label"].split("\\n")


def _ir_marked(model: Model, graph_name: str) -> set[str]:
    """The nodes of a template a transform made or changed, as the diagram names them (drawn ops only)."""
    g = model.templates[graph_name]
    return {n.name for n in g if n.meta.get("transform") and n.op not in ("param", "buffer", "const", "input")}


@needs_dot
def test_lora_adapters_are_marked_exactly_and_frozen_weights_say_so() -> None:
    model = _transformed(lora=["*.c_attn:4"])
    dot = Dot(block_graph(model, block="attention"))
    marked = dot.marked()
    # y = linear(x, W) + linear(linear(x, A), B) * scale: the adapted linear, two adapter linears, a mul, an add
    assert Counter(dot.lines(n)[1].split()[0] for n in marked) == Counter({"linear": 3, "mul": 1, "add": 1})
    assert marked == _ir_marked(model, "attention")
    for n in marked:
        assert dot.lines(n)[-1] == "[lora r=4]" and dot.nodes[n]["fontcolor"] == TRANSFORM
    adapters = sorted(line for n in marked for line in dot.lines(n) if line.endswith(" params"))
    assert adapters == [f"{4 * 768:,} params", f"{2304 * 4:,} params"]      # A [4, 768] and B [2304, 4]
    assert f"{768 * 2304 + 2304:,} params (frozen)" in [line for n in marked for line in dot.lines(n)]
    unmarked = set(dot.nodes) - marked - {"legend"}
    assert all(dot.nodes[n].get("color") != TRANSFORM for n in unmarked)
    assert any(line == f"{768 * 768 + 768:,} params (frozen)" for n in unmarked for line in dot.lines(n))  # c_proj
    assert "made or changed by a transform" in dot.nodes["legend"]["label"]
    assert "[transforms: lora *.c_attn:4]" in dot.label


@needs_dot
def test_bf16_casts_are_marked_and_low_precision_edges_name_their_dtype() -> None:
    model = _transformed(dtype="bf16")
    dot = Dot(block_graph(model, block="layer"))
    marked = dot.marked()
    # the norms' results are cast down to bf16 and each branch's result up to the float32 stream
    assert Counter(dot.lines(n)[1] for n in marked) == Counter({"cast to bfloat16": 2, "cast to float32": 2})
    assert marked == _ir_marked(model, "layer")
    low = [(a, b) for a, b, e in dot.edges if e.get("label", "").strip().endswith("bfloat16")]
    to_f32 = {n for n in marked if dot.lines(n)[1] == "cast to float32"}
    to_low = {n for n in marked if dot.lines(n)[1] == "cast to bfloat16"}
    # out of each down-cast into a branch, and out of each branch into its up-cast: four bf16 edges
    assert len(low) == 4 and {a for a, _ in low} & to_low == to_low and {b for _, b in low} & to_f32 == to_f32
    plain = Dot(block_graph(_gpt2(), block="layer"))
    assert not plain.marked() and "transform" not in plain.nodes["legend"]["label"]
    assert not [e for *_, e in plain.edges if "bfloat16" in e.get("label", "")]


@needs_dot
def test_a_branch_dropped_from_every_layer_is_a_ghost_off_the_stream() -> None:
    model = _transformed(drop=[f"h.{i}.attn" for i in range(4)])
    dot = Dot(block_graph(model, expand=1))
    (ghost,) = [n for n, o in dot.nodes.items() if "dropped" in o["label"]]
    assert dot.lines(ghost) == ["attn", "[dropped]"]
    assert "dashed" in dot.nodes[ghost]["style"] and dot.nodes[ghost]["color"] == TRANSFORM
    # it hangs off the stream the add read: the layer's input, drawn inside the repeat's cluster (`h/in.x`, fed by
    # the dropout `h`)
    assert [(a, e["style"]) for a, b, e in dot.edges if b == ghost] == [("h/in.x", "dashed")]
    assert ("h", "h/in.x") in {(a, b) for a, b, _ in dot.edges}
    assert "h/attn" not in dot.nodes and "h/ln_1" not in dot.nodes       # the branch and its norm went
    assert {"h/ln_2", "h/mlp"} <= set(dot.nodes)
    (label,) = [c["label"] for c in dot.clusters.values() if c["label"].startswith("h ×4")]
    assert f"({4 * (LAYER_PARAMS - 1_536 - 2_362_368):,} params)" in label


@needs_dot
def test_a_branch_dropped_from_one_layer_is_named_in_the_repeat() -> None:
    model = _transformed(drop=["h.2.mlp"])
    collapsed = Dot(block_graph(model))
    (rep,) = [n for n in collapsed.marked() if collapsed.lines(n)[:2] == ["h", "layer"]]
    (label,) = [c["label"] for c in collapsed.clusters.values() if c["label"].startswith("h ×4")]
    assert "[drop h.2.mlp]" in label.split("\\n")
    assert any(line.startswith("[iteration 2: ") and line.endswith("(drop mlp)]") for line in label.split("\\n"))
    assert collapsed.clusters[next(k for k, c in collapsed.clusters.items() if c["label"] == label)]["color"] == \
        TRANSFORM and rep


@needs_dot
def test_a_shared_repeat_says_how_its_weights_are_grouped() -> None:
    dot = Dot(block_graph(_transformed(share=["h:2"]), expand=1))
    (cluster,) = [c for c in dot.clusters.values() if c["label"].startswith("h ×4")]
    lines = cluster["label"].split("\\n")
    assert lines[0] == f"h ×4  ({2 * LAYER_PARAMS:,} params, 2 groups of 2 share weights)"
    assert lines[1:] == ["[share 2 groups of 2]"] and cluster["color"] == TRANSFORM


# ---- the circuit diagram, parsed as XML ----
def _svg(model: Model, block: str | None = None, expand: int = 0) -> ET.Element:
    return ET.fromstring(circuit_svg(model, block=block, expand=expand).encode())


def _box(el: ET.Element) -> tuple[float, float, float, float]:
    x, y, w, h = (float(el.get(k, "0")) for k in ("x", "y", "width", "height"))
    return x, y, x + w, y + h


@pytest.mark.parametrize(("kw", "block", "ops"), [
    ({"lora": ["*.c_attn:4"]}, "attention", {"linear": 3, "mul": 1, "add": 1}),
    ({"dtype": "bf16"}, "layer", {"cast": 4}),
    ({"lora": ["*.c_fc:2:randlora"]}, "mlp", None),
], ids=["lora", "bf16", "randlora"])
def test_circuit_outlines_exactly_the_ops_a_transform_made_or_changed(kw: dict[str, Any], block: str,
                                                                      ops: dict[str, int] | None) -> None:
    model = _transformed(**kw)
    root = _svg(model, block)
    _, _, width, height = (float(v) for v in root.get("viewBox", "").split())
    groups = {g.get("data-node"): g for g in root.iter(f"{NS}g") if g.get("data-op")}
    outlines = {r.get("data-node"): r for r in root.iter(f"{NS}rect") if r.get("data-role") == "transform"}
    flat = flatten(model, select_graph(model, block), 0)
    expected = {op.id for op in flat.ops if op.node.meta.get("transform")}
    assert set(outlines) == expected == {n for n, g in groups.items() if g.get("data-transform")}
    if ops is not None:
        assert Counter(groups[n].get("data-op") for n in outlines) == Counter(ops)
    for node, outline in outlines.items():
        x0, y0, x1, y1 = _box(outline)
        assert outline.get("stroke") == TRANSFORM and outline.get("data-transform") == groups[node].get(
            "data-transform")
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
        for r in groups[node].iter(f"{NS}rect"):       # the op's own boxes lie inside its outline
            bx0, by0, bx1, by1 = _box(r)
            assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1, (node, _box(r), (x0, y0, x1, y1))
    (line,) = [t for t in root.iter(f"{NS}text") if t.get("data-role") == "transforms"]
    assert line.text == "transforms: " + "; ".join(model.transforms)
    x = float(line.get("x", "0"))
    assert x + text_width(line.text, float(line.get("font-size", "0"))) <= width and float(line.get("y", "0")) < height


@pytest.mark.parametrize(("kw", "block", "expand"), [
    ({"lora": ["*.c_attn:4"], "dtype": "bf16"}, None, 2), ({"share": ["h:2"]}, None, 1),
    ({"drop": ["h.1.attn"], "lora": ["h.1.*:2"]}, None, 1), ({"dtype": "fp16"}, "attention", 0),
], ids=["lora-bf16", "share", "drop-lora", "fp16-attention"])
def test_marked_circuits_stay_inside_the_viewbox_without_overlapping_text(kw: dict[str, Any], block: str | None,
                                                                           expand: int) -> None:
    from test_render_circuit import EPS, Diagram  # the geometry reader the circuit tests use

    dia = Diagram(circuit_svg(_transformed(**kw), block=block, expand=expand))
    for pts in dia.shapes:
        assert all(-EPS <= x <= dia.width + EPS and -EPS <= y <= dia.height + EPS for x, y in pts)
    boxes = sorted(((t, t.box()) for t in dia.texts), key=lambda tb: tb[1][0])
    for n, (t, (x0, y0, x1, y1)) in enumerate(boxes):
        assert x0 >= 0 and y0 >= 0 and x1 <= dia.width and y1 <= dia.height, t
        for u, (bx0, by0, _, by1) in boxes[n + 1:]:
            if bx0 >= x1 - 0.3:
                break
            assert min(y1, by1) - max(y0, by0) <= 0.3, f"{t.text!r} overlaps {u.text!r}"


def test_circuit_of_an_untransformed_model_has_no_marks() -> None:
    root = _svg(_gpt2(), "layer")
    assert not [e for e in root.iter() if e.get("data-transform") or e.get("data-role") in ("transform", "transforms")]


def test_circuit_brackets_a_shared_repeat_in_the_transform_colour_with_its_note() -> None:
    root = _svg(_transformed(share=["h:2"]), expand=1)
    _, _, width, height = (float(v) for v in root.get("viewBox", "").split())
    (region,) = [g for g in root.iter(f"{NS}g") if g.get("data-role") == "region"]
    assert region.get("data-transform") == "share 2 groups of 2" and region.get("data-count") == "4"
    brackets = [p for p in region.iter(f"{NS}path") if p.get("data-role") == "bracket"]
    assert len(brackets) == 2 and all(p.get("stroke") == TRANSFORM for p in brackets)
    (note,) = [t for t in region.iter(f"{NS}text") if t.get("data-role") == "transform"]
    bottom = max(float(v) for p in brackets for v in p.get("d", "").replace("M", " ").replace("H", " ")
                 .replace("V", " ").split()[1::2])
    left = min(float(p.get("d", "M0").split()[0][1:]) for p in brackets)
    assert note.text == "share 2 groups of 2" and float(note.get("y", "0")) > bottom
    assert float(note.get("x", "0")) >= left - 8 and float(note.get("y", "0")) < height
    assert float(note.get("x", "0")) + text_width(note.text, float(note.get("font-size", "0"))) <= width


# ---- the command line ----
def test_render_takes_the_transform_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out = tmp_path / "g.dot"
    result = CliRunner().invoke(app, ["render", "examples/gpt2.yaml", "--set", "n_layer=4", "-o", str(out),
                                      "--expand", "2", "--drop", "h.1.attn", "--lora", "*.c_attn:4", "--dtype",
                                      "bf16", "--share", "h:2", "--explain"])
    assert result.exit_code == 2, result.output      # share after drop: iterations 0 and 1 run different blocks
    assert "--share h:2: iterations of one group run different blocks" in result.stderr
    result = CliRunner().invoke(app, ["render", "examples/gpt2.yaml", "--set", "n_layer=4", "-o", str(out),
                                      "--expand", "2", "--drop", "h.1.attn", "--lora", "*.c_attn:4", "--dtype",
                                      "bf16", "--explain"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "transforms:" and [line.split(":")[0].strip() for line in lines[1:4]] == \
        ["drop h.1.attn", "lora *.c_attn", "dtype bfloat16"]
    assert lines[-1] == f"wrote {out}"
    if shutil.which("dot"):
        dot = Dot(out.read_text())
        assert {"h/attn/c_attn_lora_down", "h/attn/c_attn_adapted"} <= dot.marked()
        assert "[transforms: drop h.1.attn; lora *.c_attn:4; dtype bfloat16]" in dot.label


@pytest.mark.parametrize(("args", "message"), [
    (["--drop", "h.1.ln_1"], "nnspec: error: --drop h.1.ln_1: h.1.ln_1 is not a residual branch"),
    (["--lora", "*.q_proj:4"], "nnspec: error: --lora *.q_proj:4: the pattern matches no linear"),
    (["--dtype", "int8"], "nnspec: error: --dtype takes bf16 or fp16, got 'int8'"),
])
def test_render_refuses_a_flag_that_does_not_apply(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "g.svg"
    result = CliRunner().invoke(app, ["render", str(ROOT / "examples" / "gpt2.yaml"), "-o", str(out),
                                      "--style", "circuit", *args])
    assert result.exit_code == 2 and result.stderr.startswith(message) and not out.exists()
