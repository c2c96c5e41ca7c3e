"""--drop: removing residual sub-layers equals zeroing their output projections; params and FLOPs shrink by
exactly the removed nodes; anything but a residual branch is refused by path."""

from __future__ import annotations

import networkx as nx
import pytest
import sympy
import torch
from _transforms_helpers import GPT2, LLAMA, checked, ids, params_of, run, verify_model
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.backends.torch.transform_params import convert_params
from nnspec.compiler.analysis import Analysis
from nnspec.compiler.ir import Graph, Model, Node
from nnspec.compiler.transforms import TransformError, apply, drop
from nnspec.compiler.transforms.drop import residual_add
from nnspec.compiler.transforms.rewrite import instances, scope_of
from nnspec.testing import inputs_for, specs

# spec, dropped paths, output projection of each (zeroed in the reference)
CASES = [
    (GPT2, ["h.1.attn", "h.2.mlp", "h.3.attn"], ["h.1.attn.c_proj", "h.2.mlp.c_proj", "h.3.attn.c_proj"]),
    (LLAMA, ["layers.0.mlp", "layers.2.self_attn"], ["layers.0.mlp.down_proj", "layers.2.self_attn.o_proj"]),
]


@pytest.mark.parametrize(("spec", "paths", "projections"), CASES, ids=["gpt2", "llama"])
def test_drop_equals_the_original_with_the_branches_zeroed(spec, paths, projections) -> None:
    model = checked(spec)
    params = params_of(model)
    dropped = drop(model, paths)
    verify_model(dropped)
    zeroed = dict(params)
    for proj in projections:
        for leaf in ("weight", "bias"):
            if f"{proj}.{leaf}" in zeroed:
                zeroed[f"{proj}.{leaf}"] = torch.zeros_like(zeroed[f"{proj}.{leaf}"])
    x = ids(model)
    want = run(model, zeroed, x)["logits"]
    got = run(dropped, convert_params(model, params, drop=paths), x)["logits"]
    torch.testing.assert_close(got, want)
    assert not torch.allclose(run(model, params, x)["logits"], want)   # the branches did contribute


def _removed_flops(model: Model, block: str, names: list[str]) -> sympy.Expr:
    an, graph = Analysis(model), model.templates[block]
    return sum((an.node_flops(graph[n], graph) for n in names), sympy.Integer(0))


def test_params_and_flops_shrink_by_exactly_the_removed_parts() -> None:
    model = checked(GPT2)
    out = drop(model, ["h.1.attn", "h.2.mlp"])
    before, after = Analysis(model), Analysis(out)
    removed = [p for p in before.parameters() if p.path.startswith(("h.1.attn.", "h.1.ln_1.", "h.2.mlp.", "h.2.ln_2."))]
    assert {p.path for p in before.parameters()} - {p.path for p in after.parameters()} == {p.path for p in removed}
    numel = sum(int(model.dims.concrete(p.type.numel())) for p in removed)
    assert before.total_params() - after.total_params() == numel
    # the branch call, its input norm and the residual add, once each
    flops = _removed_flops(model, "layer", ["attn", "ln_1", "add"]) + _removed_flops(model, "layer", ["mlp", "ln_2",
                                                                                                      "add_1"])
    assert sympy.expand(before.total_flops() - after.total_flops() - flops) == 0


def test_a_repeat_runs_a_variant_only_where_a_branch_was_dropped() -> None:
    out = drop(checked(GPT2), ["h.2.mlp"])
    (rep,) = [n for n in out.graph if n.op == "repeat"]
    assert rep.attrs["block"] == "layer"
    ((index, variant),) = rep.attrs["variants"]
    assert index == 2 and out.templates[variant].meta["variant_of"] == "layer"
    assert "mlp" not in {n.name for n in out.templates[variant]}
    assert rep.meta["transform"] == "drop h.2.mlp"
    assert out.transforms == ["drop h.2.mlp"]


def test_dropping_every_layer_s_branch_needs_no_variant() -> None:
    out, lines = apply(checked(GPT2), drop=[f"h.{i}.attn" for i in range(4)])
    (rep,) = [n for n in out.graph if n.op == "repeat"]
    assert "variants" not in rep.attrs and "attn" not in {n.name for n in out.templates[rep.attrs["block"]]}
    assert "attention" not in out.templates      # unreachable templates are dropped
    assert lines[0].startswith("drop h.0.attn h.1.attn h.2.attn h.3.attn: params ")


@pytest.mark.parametrize(("path", "message"), [
    ("h.1.ln_1", "--drop h.1.ln_1: h.1.ln_1 is not a residual branch"),
    ("h.1.attn.c_attn", "--drop h.1.attn.c_attn: h.1.attn.c_attn is not a residual branch"),
    ("h.1.atn", "--drop h.1.atn: no residual sub-layer at that path (did you mean h.1.attn"),
    ("h.9.attn", "--drop h.9.attn: no residual sub-layer at that path"),
])
def test_refuses_what_is_not_a_residual_branch(path: str, message: str) -> None:
    with pytest.raises(TransformError) as err:
        drop(checked(GPT2), [path])
    assert str(err.value).startswith(message)


def _branches(model: Model) -> list[str]:
    return [prefix + scope for prefix, g in instances(model) for n in g
            if (scope := scope_of(g, n)) and residual_add(g, n)]


def _site(model: Model, path: str) -> tuple[str, Graph, Node]:
    """(the instance's parameter prefix, its graph, the branch node) a residual-branch path names."""
    return next((prefix, g, n) for prefix, g in instances(model) for n in g
                if (scope := scope_of(g, n)) and prefix + scope == path and residual_add(g, n))


def _output_projection(model: Model, path: str) -> list[str] | None:
    """The parameters of the linear a branch ends in (through calls and dropout), whose zeroing silences the branch
    in eval mode; None when the branch ends otherwise."""
    prefix, g, node = _site(model, path)
    while True:
        if node.op == "call":
            prefix, g = f"{prefix}{node.attrs['scope']}.", model.templates[node.attrs["block"]]
            node = g[g.outputs[0]]
        elif node.op == "dropout":
            node = g[node.inputs[0]]
        elif node.op == "linear":
            return [prefix + g[i].attrs["path"] for i in node.inputs if g[i].op == "param"]
        else:
            return None


def _removed_nodes(graph: Graph, branch: Node) -> list[Node]:
    """What dropping `branch` must remove: the add, and every node it read that then serves nothing else, i.e.
    is no output and serves no output nor anything outside what the add read, once the add's users read the
    stream. Code that was unused before the drop (reaching no output) is no part of the branch and stays."""
    add, stream = residual_add(graph, branch)
    read = nx.ancestors(graph.nx, add.name)
    g = graph.nx.copy()
    g.add_edges_from((stream, user) for user in graph.nx.successors(add.name))   # the add's users read the stream
    g.remove_node(add.name)
    outputs = {stream if o == add.name else o for o in graph.outputs}
    return [add] + [graph[n] for n in read if graph[n].op != "input" and n not in outputs
                    and nx.descendants(g, n) <= read - outputs]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.data())
def test_drop_on_random_specs(data: st.DataObject) -> None:
    """Any residual branch of a drawn spec drops: the graph verifies; it loses exactly that branch's parameters
    and exactly the FLOPs of the nodes only the branch used (times the uses of that instance); and where the
    branch ends in a linear it computes what the original computes with that linear zeroed."""
    model = nnspec.check(data.draw(specs(max_width=16, max_layers=3))).model
    branches = _branches(model)
    assume(branches)
    path = data.draw(st.sampled_from(branches))
    out = drop(model, [path])
    verify_model(out)
    before, after = Analysis(model), Analysis(out)
    gone = {p.path for p in before.parameters()} - {p.path for p in after.parameters()}
    assert {p.path for p in after.parameters()} <= {p.path for p in before.parameters()}
    assert all(p.startswith(path.rpartition(".")[0]) for p in gone)
    assert before.total_params() - after.total_params() == sum(
        int(model.dims.concrete(p.type.numel())) for p in before.parameters() if p.path in gone)
    _, graph, branch = _site(model, path)
    removed = sum((before.node_flops(n, graph) for n in _removed_nodes(graph, branch)), sympy.Integer(0))
    diff = sympy.expand(before.total_flops() - after.total_flops())
    ratio = sympy.simplify(diff / removed) if removed != 0 else diff   # how often that instance runs
    assert (removed == 0 and diff == 0) or (ratio.is_Integer and ratio >= 1), (path, diff, removed)
    inputs = data.draw(inputs_for(out))
    params = params_of(model)
    got = run(out, convert_params(model, params, drop=[path]), inputs)
    projection = _output_projection(model, path)
    if projection is None:
        assert all(torch.isfinite(v).all() for v in got.values() if v.dtype.is_floating_point)
        return
    zeroed = {k: torch.zeros_like(v) if k in projection else v for k, v in params.items()}
    for name, want in run(model, zeroed, inputs).items():
        torch.testing.assert_close(got[name], want, atol=1e-5, rtol=1e-4)
