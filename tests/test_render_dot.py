"""The block graph (graphviz DOT): collapsible hierarchy, shapes on edges, parameter counts, family colours.

Goldens are DOT text (the SVG `dot` writes varies across graphviz versions); `NNSPEC_REGEN=1` rewrites them,
and each is reviewed as a rendered PNG before it is accepted.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import nnspec
from nnspec.compiler.diagrams import block_graph, dot_to_svg
from nnspec.compiler.diagrams.palette import colours, legend_text
from nnspec.compiler.ir import Model, TensorType
from nnspec.compiler.ops import OPS

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "render"
GPT2 = ROOT / "examples" / "gpt2.yaml"

NODE = re.compile(r'^(\t*)("(?:[^"\\]|\\.)*"|[\w.]+) \[label=(?:"((?:[^"\\]|\\.)*)"|<(.*)>|([\w.]+))(.*)\]$')
EDGE = re.compile(r'^\t*("(?:[^"\\]|\\.)*"|[\w./]+) -> ("(?:[^"\\]|\\.)*"|[\w./]+)(?: \[(.*)\])?$')


@functools.cache
def _model(path: Path = GPT2, **dims: int) -> Model:
    return nnspec.check(path, **dims).model


def _unquote(s: str) -> str:
    return s[1:-1] if s.startswith('"') else s


def _parse(source: str) -> tuple[dict[str, tuple[int, str, str]], list[tuple[str, str, str]], list[str]]:
    """(node id -> (cluster depth, label, attributes), edges (src, dst, attributes), cluster labels)."""
    nodes: dict[str, tuple[int, str, str]] = {}
    edges: list[tuple[str, str, str]] = []
    clusters: list[str] = []
    depth = 0
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("subgraph"):
            depth += 1
            continue
        if stripped == "}":
            depth -= 1
            continue
        if depth and stripped.startswith(("label=", "color=")):
            label = re.search(r'label="((?:[^"\\]|\\.)*)"', stripped)
            if label:
                clusters.append(label.group(1))
        m = EDGE.match(line)
        if m:
            edges.append((_unquote(m.group(1)), _unquote(m.group(2)), m.group(3) or ""))
            continue
        m = NODE.match(line)
        if m:
            label = m.group(3) if m.group(3) is not None else (m.group(4) or m.group(5) or "")
            nodes[_unquote(m.group(2))] = (depth, label, m.group(6))
    return nodes, edges, clusters


def test_96_layers_draw_at_most_40_top_level_nodes() -> None:
    source = block_graph(_model(n_layer=96))
    nodes, _, clusters = _parse(source)
    top = [n for n, (depth, _, _) in nodes.items() if depth == 0 and n != "legend"]
    assert len(top) <= 40
    assert [c for c in clusters if "×" in c] == [f"h ×96  ({96 * 7_087_872:,} params)"]
    inside = [n for n, (depth, _, _) in nodes.items() if depth == 1]
    assert inside == ["h_1"]                                 # the layer block, collapsed to one node


def test_expand_opens_one_level_at_a_time() -> None:
    counts = []
    for expand in range(4):
        nodes, _, clusters = _parse(block_graph(_model(), expand=expand))
        counts.append(len(nodes))
        if expand == 1:
            assert "h/attn" in nodes and "h/attn/c_attn" not in nodes
            assert not [c for c in clusters if c.startswith("attn:")]
        if expand >= 2:
            assert "h/attn/c_attn" in nodes
            assert [c for c in clusters if c.startswith("attn: attention")]
    assert counts[0] < counts[1] < counts[2] == counts[3]


def test_block_option_draws_one_template() -> None:
    nodes, edges, _ = _parse(block_graph(_model(), block="mlp"))
    assert {"c_fc", "h", "c_proj", "dropout"} <= set(nodes)
    assert "in.x" in nodes and "out.out" in nodes
    assert ("in.x", "c_fc") in {(a, b) for a, b, _ in edges}


def test_edges_carry_symbolic_shapes_once_where_the_shape_changes() -> None:
    model = _model()
    # the spec's axis names, in its order (`n_head*head_dim`, not sympy's `head_dim*n_head`)
    shapes = {" x ".join(a.name for a in t.axes) for g in model.graphs() for n in g if isinstance(n.type, TensorType)
              for t in [n.type]}
    _, edges, _ = _parse(block_graph(model, expand=2))
    drawn = [(a, b, attrs) for a, b, attrs in edges if "invis" not in attrs and "dashed" not in attrs]
    labelled = [(a, b, re.search(r'label=" (.*?) "', attrs)) for a, b, attrs in drawn if "label=" in attrs]
    assert labelled and len(labelled) < len(drawn) / 2     # a layer's run of same-shape edges is not relabelled
    for a, b, label in labelled:
        assert label and label.group(1) in shapes, (a, b)
    assert len({a for a, _, _ in labelled}) == len(labelled)          # each value labelled on one edge only
    by_src = {a: label.group(1) for a, _, label in labelled if label}
    assert by_src["wte"] == "B x T x n_embd"                          # the embedding changes B x T
    assert by_src["h/attn/c_attn"] == "B x T x 3*n_embd"              # the qkv projection widens
    assert "h/ln_1" not in by_src and "h_1" not in by_src             # norms and the layer keep the shape
    assert "logits" in by_src                                          # the head changes the last axis


def test_residuals_stay_inside_their_block_and_the_repeat_loops_back() -> None:
    source = block_graph(_model(), expand=1)
    cluster = source[source.index("subgraph cluster_h_1"):]
    cluster = cluster[:cluster.index("\n\t}")]
    # the layer's input is a node inside its cluster, and both residual adds read it or each other there
    assert '"h/in.x" [label=x' in cluster
    inner = {tuple(_unquote(e.strip()) for e in line.split(" [")[0].split(" -> "))
             for line in cluster.splitlines() if " -> " in line}
    assert {("h/in.x", "h/add"), ("h/attn", "h/add"), ("h/add", "h/add_1"), ("h/mlp", "h/add_1")} <= inner
    loop = [line for line in cluster.splitlines() if "dashed" in line and "next of ×12" in line]
    # from the iteration's result back to its input: written input -> result, its arrow drawn back at the input
    assert len(loop) == 1 and loop[0].strip().startswith('"h/in.x" -> "h/add_1"') and "dir=back" in loop[0]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
@pytest.mark.parametrize("spec", ["gpt2.yaml", "llama.yaml"])
def test_the_loop_back_is_routed_inside_its_repeat_cluster(spec: str) -> None:
    """Graphviz's own layout (`dot -Tjson`): every point of the loop-back's spline (ends and control points, so the
    whole curve) lies inside the bounding box of the repeat's cluster."""
    import json
    import subprocess
    source = block_graph(_model(ROOT / "examples" / spec), expand=1)
    laid = json.loads(subprocess.run(["dot", "-Tjson"], input=source, capture_output=True, text=True,
                                     check=True).stdout)
    (edge,) = [e for e in laid["edges"] if e.get("label", "").strip().startswith("next of ×")]
    (cluster,) = [o for o in laid["objects"] if o["name"].startswith("cluster_") and "×" in o.get("label", "")
                  and edge["tail"] in o.get("nodes", ()) and edge["head"] in o.get("nodes", ())]
    x0, y0, x1, y1 = map(float, cluster["bb"].split(","))
    points = [pt for d in edge["_draw_"] if d["op"] in ("b", "B") for pt in d["points"]]
    points += [pt for d in edge.get("_tdraw_", []) + edge.get("_hdraw_", []) if "points" in d for pt in d["points"]]
    assert len(points) >= 4
    for x, y in points:
        assert x0 <= x <= x1 and y0 <= y <= y1, (spec, (x, y), cluster["bb"])
    lx, ly = map(float, edge["lp"].split(","))                 # and its label
    assert x0 <= lx <= x1 and y0 <= ly <= y1


def test_nodes_show_the_specs_names_op_and_parameter_count() -> None:
    nodes, _, _ = _parse(block_graph(_model(), expand=2))
    assert nodes["wte"][1] == "tok (wte)\\nembedding\\n38,597,376 params"     # variable, layer, op
    assert nodes["h/attn/c_attn"][1] == "qkv (c_attn)\\nlinear\\n1,771,776 params"
    assert nodes["logits"][1] == "logits (wte)\\neinsum\\ntied to wte.weight"  # the tied head adds no parameters
    assert nodes["h/attn/s"][1] == "s\\ndiv 8"                              # a scalar constant is folded in
    labels = [label for _, label, _ in nodes.values()]
    assert not [x for x in labels if re.search(r"(^|\\n)\w+_\d+(\\n|$)", x) and not re.search(r"ln_\d", x)]
    assert "mlp\\nmlp" not in "".join(labels)                                  # a scope named as its block: once
    collapsed, _, _ = _parse(block_graph(_model()))
    assert collapsed["h_1"][1] == "h\\nlayer\\n85,054,464 params"


def test_fill_colour_is_the_op_family_and_the_legend_lists_them() -> None:
    model = _model()
    nodes, _, _ = _parse(block_graph(model, expand=2))
    names = {}
    for prefix, graph in [("", model.graph), ("h/", model.templates["layer"]),
                          ("h/attn/", model.templates["attention"]), ("h/mlp/", model.templates["mlp"])]:
        names.update({prefix + n.name: n for n in graph})
    families = set()
    for nid, (_, _, attrs) in nodes.items():
        if nid in names:
            node = names[nid]
            family = "structure" if node.op in ("call", "repeat") else OPS[node.op].family
        elif nid.startswith(("in.", "out.")):
            family = "io"
        else:
            continue
        families.add(family)
        fill, border = colours(family)
        assert f'fillcolor="{fill}"' in attrs and f'color="{border}"' in attrs, nid
    legend = nodes["legend"][1]
    for family in families:
        assert legend_text(family) in legend


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_dot_lays_it_out() -> None:
    svg = dot_to_svg(block_graph(_model(), expand=2))
    titles = {t.text for t in ET.fromstring(svg.encode()).iter("{http://www.w3.org/2000/svg}title")}
    assert {"wte", "h/attn/c_attn", "ln_f", "cluster_h/attn"} <= titles


def test_deterministic() -> None:
    model = _model()
    assert block_graph(model, expand=2) == block_graph(model, expand=2)


DOT_GOLDENS = {
    "gpt2_graph_x0": (GPT2, None, 0),
    "gpt2_graph_x1": (GPT2, None, 1),
    "gpt2_graph_x2": (GPT2, None, 2),
    "gpt2_graph_attention": (GPT2, "attention", 0),
    "vit_graph_x1": (ROOT / "examples" / "vit.yaml", None, 1),
}


@pytest.fixture
def regen() -> bool:
    return os.environ.get("NNSPEC_REGEN") == "1"


@pytest.mark.parametrize("name", sorted(DOT_GOLDENS))
def test_dot_golden(name: str, regen: bool) -> None:
    spec, block, expand = DOT_GOLDENS[name]
    if not spec.exists():
        pytest.skip(f"{spec.name} is not in this checkout")
    got = block_graph(_model(spec), expand=expand, block=block)
    path = GOLDEN / f"{name}.dot"
    if regen:
        path.write_text(got)
    assert path.read_text() == got, f"{path} differs; NNSPEC_REGEN=1 rewrites it (then review the PNG)"


def test_edges_name_axes_as_the_spec_does() -> None:
    # MoE's top-k keeps K experts: its edges say K (the spec's axis), not the size 2; GPT-2's merged heads keep the
    # spec's order n_head*head_dim (sympy would print head_dim*n_head)
    moe = ROOT / "examples" / "small" / "moe.yaml"
    model = _model(moe)
    topk = next(n for g in model.graphs() for n in g if n.op == "topk")
    assert [a.name for a in topk.type[0].axes][-1] == "K" and topk.type[0].axes[-1].size == 2
    _, edges, _ = _parse(block_graph(model, expand=2))
    labels = {re.search(r'label=" (.*?) "', attrs).group(1) for _, _, attrs in edges if "label=" in attrs}
    assert "B x T x K" in labels and "B x T x 2" not in labels
    _, edges, _ = _parse(block_graph(_model(), expand=2))
    labels = {re.search(r'label=" (.*?) "', attrs).group(1) for _, _, attrs in edges if "label=" in attrs}
    assert "B x T x n_head*head_dim" in labels and "B x T x head_dim*n_head" not in labels
