"""Fusion groups (fuse-add-norm, fuse-epilogue, fuse-elementwise): planted linear + activation epilogues,
residual add + norm and elementwise chains must be grouped, near-misses must not be, and groups are mere
annotations: convex, contiguous in the node order, with exact boundaries, changing no output bit."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from test_passes_support import assert_idempotent, assert_same_outputs, optimized, state

from nnspec.compiler.ir import Graph, Model
from nnspec.compiler.passes.groups import boundary, convex

FUSION = "fuse-add-norm,fuse-epilogue,fuse-elementwise"
# kind -> (planted statements for step i, the nodes that must share a group, its kind)
PLANTS = {
    "epilogue": ("pre{i} = linear(h, d, name=l{i})\nh{i} = gelu(pre{i})", ["l{i}", "h{i}"], "epilogue"),
    "epilogue_chain": ("pre{i} = linear(h, d, name=l{i})\nh{i} = dropout(silu(pre{i}) * 0.5, 0.1)",
                       ["l{i}", "h{i}"], "epilogue"),
    "add_norm": ("h{i} = layernorm(h + tanh(h), name=n{i})", ["n{i}"], "add_norm"),
    "rms_add_norm": ("s{i} = h + sigmoid(h)\nh{i} = rmsnorm(s{i}, name=n{i}) + s{i}", ["s{i}"], "add_norm"),
    "chain": ("a{i} = h * sigmoid(h)\nh{i} = relu(a{i} + 1.0) * 2.0", ["a{i}", "h{i}"], "elementwise"),
    "where": ("h{i} = where(h > 0.0, exp(h), h * 0.1)", ["h{i}"], "elementwise"),
}
NEAR_MISSES = {
    "shared_linear": ("pre{i} = linear(h, d, name=l{i})\nh{i} = gelu(pre{i}) + linear(pre{i}, d, name=m{i})",
                      "l{i}", "h{i}"),
    "broadcast": ("m{i} = exp(mean(h, over=d))\nh{i} = h - m{i}", "m{i}", "h{i}"),
    "multi_use": ("a{i} = exp(h)\nh{i} = relu(a{i}) + mean(a{i}, over=d)", "a{i}", "h{i}"),
}


def spec_text(steps: list[str]) -> str:
    lines = []
    for i, step in enumerate(steps):
        lines += step.format(i=i).splitlines()
        lines.append(f"h = h{i}")
    body = "\n".join(f"  {line}" for line in lines)
    return f"""nnspec: 1
name: planted
dims:
  d: 8
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
body: |
  h = x
{body}
  y = h
"""


def group_name(graph: Graph, name: str) -> str | None:
    node = graph[name]
    if node.op == "add" and graph.users(name) and graph.users(name)[0].op in ("layernorm", "rmsnorm"):
        return node.meta.get("fusion_group")
    if node.op in ("layernorm", "rmsnorm"):
        return graph[node.inputs[0]].meta.get("fusion_group")
    return node.meta.get("fusion_group")


def check_groups(model: Model) -> None:
    """Every group: members carry its name, are contiguous, convex, and its boundary is exact."""
    for graph in model.graphs():
        order = list(graph.nodes)
        for name, g in graph.meta.get("fusion_groups", {}).items():
            assert all(graph[m].meta["fusion_group"] == name for m in g.nodes)
            idx = [order.index(m) for m in g.nodes]
            assert idx == list(range(idx[0], idx[0] + len(idx))), f"{name} is not contiguous"
            assert convex(graph, set(g.nodes))
            assert (g.inputs, g.outputs) == boundary(graph, g.nodes)


def run_case(steps: list[str]) -> tuple[Model, Model, list[str]]:
    model, opt, lines = optimized(spec_text(steps), passes=FUSION)
    check_groups(opt)
    assert state(opt) == state(model)
    assert_same_outputs(model, opt, exact=True, T=3)
    assert_idempotent(opt, passes=FUSION)
    return model, opt, lines


@st.composite
def programs(draw: st.DrawFn, pool: dict) -> list[str]:
    return draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=4))


def test_planted_groups_form_at_least_90_percent() -> None:
    results: list[bool] = []

    @settings(suppress_health_check=[HealthCheck.too_slow])
    @given(programs(PLANTS))
    def planted(kinds: list[str]) -> None:
        _, opt, _ = run_case([PLANTS[k][0] for k in kinds])
        groups = opt.graph.meta.get("fusion_groups", {})
        for i, k in enumerate(kinds):
            names = [n.format(i=i) for n in PLANTS[k][1]]
            found = {group_name(opt.graph, n) for n in names}
            results.append(len(found) == 1 and None not in found and groups[found.pop()].kind == PLANTS[k][2])

    planted()
    rate = sum(results) / len(results)
    print(f"fusion groups formed on planted cases: {rate:.0%} of {len(results)}")
    assert rate >= 0.9


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(programs(NEAR_MISSES))
def test_near_misses_are_not_grouped_together(kinds: list[str]) -> None:
    _, opt, lines = run_case([NEAR_MISSES[k][0] for k in kinds])
    for i, k in enumerate(kinds):
        producer, consumer = (n.format(i=i) for n in NEAR_MISSES[k][1:])
        g = opt.graph[producer].meta.get("fusion_group")
        assert g is None or g != opt.graph[consumer].meta.get("fusion_group"), lines


@pytest.mark.parametrize("kind", sorted(NEAR_MISSES))
def test_near_misses_are_explained(kind: str) -> None:
    _, _, lines = run_case([NEAR_MISSES[kind][0]])
    reason = {"shared_linear": "l0 is also used by m0", "broadcast": "is over [B, T], the group over [B, T, d]",
              "multi_use": "is also used by mean"}[kind]
    assert any("refused [fuse-" in line and reason in line for line in lines), lines


def test_examples_at_O2_have_valid_groups() -> None:
    for path, dims in [("examples/gpt2.yaml", {"n_layer": 1}), ("examples/llama.yaml", {"num_hidden_layers": 1}),
                       ("examples/bert.yaml", {"num_hidden_layers": 1})]:
        _, opt, lines = optimized(path, **dims)
        check_groups(opt)
        kinds = {g.kind for gr in opt.graphs() for g in gr.meta.get("fusion_groups", {}).values()}
        assert "add_norm" in kinds, (path, lines)
        assert any(line.split(" ")[1] == "group" for line in lines)
