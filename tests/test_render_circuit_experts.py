"""A mixture of experts is drawn with its routing: router and top-k making the gates, the experts as a stack of
learned maps over the experts axis, and the gate-weighted sum. Expected names come from the checked graph (the
`moe` node's k, its weights' experts axis; the dense form's weights), positions from the SVG's own geometry."""

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


def _svg(spec: str, block: str | None) -> tuple[ET.Element, nnspec.compiler.ir.Model]:
    model = nnspec.check(ROOT / "examples" / spec).model
    return ET.fromstring(circuit_svg(model, block=block).split("?>", 1)[-1]), model


def _role(root: ET.Element, role: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("data-role") == role]


def _end_x(d: str) -> float:
    """The x where a path of M, H and C commands ends."""
    cmd, args = re.findall(r"([MHVLC])([^MHVLC]*)", d)[-1]
    nums = re.findall(r"-?\d+(?:\.\d+)?", args)
    return float(nums[-1] if cmd == "H" else nums[-2])


def _xs(el: ET.Element) -> list[float]:
    xs = [float(e.get(a)) for e in el.iter() for a in ("x", "cx") if e.get(a) is not None]
    xs += [float(e.get("x")) + float(e.get("width")) for e in el.iter(NS + "rect")]
    return xs


@pytest.mark.parametrize(("spec", "block"), [("mixtral.yaml", "layer"), ("qwen2_moe.yaml", "sparse_moe")])
def test_a_moe_op_shows_router_topk_the_experts_stack_and_the_weighted_sum(spec: str, block: str) -> None:
    root, model = _svg(spec, block)
    graph = select_graph(model, block)
    (node,) = [n for n in graph if n.op == "moe"]
    experts_axis = graph[node.inputs[2]].attrs["type"].names[0]     # gate_proj [E, I, H]: its experts axis
    (group,) = [g for g in root.iter(NS + "g") if g.get("data-op") == "moe"]
    (router,) = _role(group, "router")
    assert router.get("data-k") == str(node.attrs["k"])
    assert [t.text for t in router.iter(NS + "text") if t.get("data-role") == "topk"] == [f"top-{node.attrs['k']}"]
    assert any(t.text == "L" and t.get("font-weight") == "bold" for t in router.iter(NS + "text"))   # learned
    (stack,) = [e for e in _role(group, "experts") if e.tag == NS + "g"]
    assert stack.get("data-axis") == experts_axis
    assert len(stack.findall(NS + "rect")) >= 3                    # maps stacked behind one another
    (wsum,) = _role(group, "weighted-sum")
    assert wsum.get("data-axis") == experts_axis and wsum.find(NS + "circle") is not None
    (caption,) = _role(group, "experts-axis")
    assert experts_axis in caption.text and f"top-{node.attrs['k']}" in caption.text
    # the routing reads left to right: fork, then the experts (on the wire) and the router (under it), then Σ
    (fork,) = _role(group, "moe-fork")
    sum_x = float(wsum.find(NS + "circle").get("cx"))
    assert float(fork.get("cx")) < min(_xs(stack)) and max(_xs(stack)) < sum_x
    assert float(fork.get("cx")) < min(_xs(router)) and max(_xs(router)) < sum_x
    wire_y = float(fork.get("cy"))
    router_y = float(router.find(NS + "rect").get("y"))
    assert router_y > wire_y                                       # the gates branch off below the features
    # the acted axis ends at the box and leaves it; the others pass over (the wire test covers their labels)
    (box,) = [r for r in group.findall(NS + "rect") if r.get("data-role") == "box"]
    x0, x1 = float(box.get("x")), float(box.get("x")) + float(box.get("width"))
    ends = [p for p in root.iter(NS + "path") if p.get("data-role") == "wire" and p.get("data-end") == "box"
            and p.get("data-node") == group.get("data-node")]
    assert len(ends) == 1 and abs(_end_x(ends[0].get("d")) - x0) < 0.6
    assert any(abs(float(re.findall(r"-?\d+(?:\.\d+)?", p.get("d"))[0]) - x1) < 0.6
               for p in root.iter(NS + "path") if p.get("data-role") == "wire" and p.get("data-start") == "box")


def test_the_dense_gated_form_draws_the_experts_as_a_stack_and_the_gated_sum() -> None:
    root, model = _svg("small/moe.yaml", None)
    graph = model.graph
    stacked, summed = [], []
    for node in graph:
        weights = [graph[i] for i in node.inputs if graph[i].op == "param"]
        tensors = [graph[i] for i in node.inputs if graph[i].op != "param"]
        if node.op != "einsum" or not weights or len(weights[0].attrs["type"].names) < 3:
            continue
        lead = weights[0].attrs["type"].names[0]
        stacked.append((node.name, lead))
        if lead not in node.type.names and any(lead in t.tensor_type.names for t in tensors):
            summed.append((node.name, lead))
    assert stacked and summed                     # w1 makes one output per expert; w2 sums them under the gates
    groups = {g.get("data-node"): g for g in root.iter(NS + "g") if g.get("data-op")}
    for name, _ in stacked:
        assert _role(groups[name], "experts"), name
    for name, lead in summed:
        (wsum,) = _role(groups[name], "weighted-sum")
        assert wsum.get("data-axis") == lead
    plain = [n.name for n in graph if n.op == "linear"]    # the router: one map, not a stack
    assert plain and not any(_role(groups[n], "experts") for n in plain)
    assert not _role(groups[stacked[0][0]], "weighted-sum") or stacked[0] in summed
