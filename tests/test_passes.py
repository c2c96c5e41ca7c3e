"""The pass pipeline: levels, explicit pass lists, verification after every pass, failing passes reported
by name, and what every level keeps (outputs, the state dict, the input model)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from test_passes_support import assert_idempotent, assert_same_outputs, count, optimized, outputs, state

import nnspec
from nnspec.compiler.ir import Axis, DType, Graph, TensorType
from nnspec.compiler.passes import PASSES, PIPELINES, Context, optimize, pipeline, run
from nnspec.compiler.printer import print_model
from nnspec.compiler.verify import verify
from nnspec.errors import InternalError
from nnspec.testing import inputs_for, specs

SMALL = {
    "examples/gpt2.yaml": {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 50},
    "examples/bert.yaml": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                           "intermediate_size": 64, "vocab_size": 50},
    "examples/vit.yaml": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                          "intermediate_size": 64, "image_size": 16, "patch_size": 8},
    "examples/llama.yaml": {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 50},
    "examples/small/graph_transformer.yaml": {},
    "examples/small/moe.yaml": {},
    "examples/small/recursive.yaml": {},
    "examples/small/retention.yaml": {},
    "examples/small/window_attention.yaml": {},
}


@pytest.mark.parametrize("path", list(SMALL))
def test_every_level_keeps_outputs_and_state_dict(path: str) -> None:
    model = nnspec.check(path, **SMALL[path]).model
    before = print_model(model)
    free = {"T": 4, "K": 4, "N": 4, "H": 8, "W": 8}
    for level in (0, 1, 2):
        lines: list[str] = []
        opt = optimize(model, level, explain=lines, verify=True)
        assert state(opt) == state(model), f"-O{level} changed the state dict"
        assert_same_outputs(model, opt, exact=level < 2, **free)
        if level:
            assert_idempotent(opt, level)
    assert print_model(model) == before, "optimize modified its argument"


def test_levels_and_explicit_pass_lists() -> None:
    assert pipeline(0) == []
    assert [p.name for p in pipeline(1)] == PIPELINES[1]
    assert [p.name for p in pipeline(passes="cse, dce")] == ["cse", "dce"]
    assert [p.name for p in pipeline(2, passes=["attention"])] == ["attention"]
    assert set(PIPELINES[2]) == set(PASSES)
    with pytest.raises(nnspec.UsageError, match=r"unknown pass 'cse2'.*canonicalize"):
        pipeline(passes="cse2")
    with pytest.raises(nnspec.UsageError, match="level must be 0, 1 or 2"):
        pipeline(3)


def test_level_0_is_the_checked_graph() -> None:
    model = nnspec.check("examples/gpt2.yaml").model
    assert print_model(optimize(model, 0)) == print_model(model)


def test_explicit_passes_run_alone_and_in_order() -> None:
    _model, opt, _lines = optimized("examples/gpt2.yaml", passes="attention")
    assert count(opt, "attention") == 1 and count(opt, "causal_mask") == 1    # no dce ran
    assert opt.graph.meta["passes"] == ["attention"]
    _, opt2, _ = optimized("examples/gpt2.yaml", passes="attention,dce")
    assert count(opt2, "causal_mask") == 0


@dataclass(frozen=True)
class Corrupt:
    """A broken pass: stores a wrong type on the first linear it finds."""

    name: str = "corrupt"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        for node in graph:
            if node.op == "linear":
                node.type = TensorType((Axis("bogus", node.tensor_type.axes[0].size),), DType.float32)
                return graph, True
        return graph, False


@dataclass(frozen=True)
class Boom:
    name: str = "boom"

    def apply(self, ctx: Context, graph: Graph) -> tuple[Graph, bool]:
        raise KeyError("oops")


def test_a_failing_pass_is_named_with_the_passes_before_it(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nnspec.check("examples/gpt2.yaml").model
    with pytest.raises(InternalError, match=r"pass corrupt left an invalid graph \(after cse, dce\).*"
                                            r"c_attn.*stored as.*infers"):
        run(model, [PASSES["cse"], PASSES["dce"], Corrupt()], verify=True)
    with pytest.raises(InternalError, match=r"pass boom failed on .* \(after canonicalize\): KeyError"):
        run(model, [PASSES["canonicalize"], Boom()])
    run(model, [Corrupt()], verify=False)                                  # not verified: not caught
    monkeypatch.setenv("NNSPEC_VERIFY", "1")
    with pytest.raises(InternalError, match=r"pass corrupt .*\(the first pass\)"):
        run(model, [Corrupt()])


def test_tests_verify_after_every_pass_without_asking() -> None:
    """conftest sets NNSPEC_VERIFY=1: every optimisation in the tests (build, compile, cost) is verified."""
    model = nnspec.check("examples/gpt2.yaml").model
    with pytest.raises(InternalError, match=r"pass corrupt left an invalid graph \(after cse\)"):
        run(model, [PASSES["cse"], Corrupt()])


def test_verify_finds_each_broken_invariant() -> None:
    model = nnspec.check("examples/gpt2.yaml").model
    sizes = model.dims

    def broken(edit: str) -> Graph:
        g = model.templates["mlp"].clone()
        names = list(g.nodes)
        if edit == "order":
            g.reorder([names[-1], *names[:-1]])
        elif edit == "edge":
            g.nx.remove_edge(g["h"].inputs[0], "h", key=0)
        elif edit == "output":
            g.outputs = ["nowhere"]
        elif edit == "stale":
            g["h"].inputs = [g["h"].inputs[0] + "_gone"]
        elif edit == "group":
            g.meta["fusion_groups"] = {"g0": __import__("nnspec.compiler.ir", fromlist=["FusionGroup"])
                                       .FusionGroup("g0", "elementwise", ["h"])}
        return g

    verify(model.templates["mlp"].clone(), sizes, model.templates)
    for edit, message in [("order", "not defined before it"), ("edge", "no edge"), ("output", "output nowhere"),
                          ("stale", "not defined before it"), ("group", "fusion group g0 lists h")]:
        with pytest.raises(InternalError, match=message):
            verify(broken(edit), sizes, model.templates)


def test_explanations_name_nodes_and_spec_locations() -> None:
    _, _, lines = optimized("examples/llama.yaml", num_hidden_layers=1)
    assert any(line.startswith("examples/llama.yaml:37:9: rewrite [fuse-linear] self_attn: q_proj, k_proj, v_proj")
               for line in lines), lines
    assert any(line.startswith("examples/llama.yaml:") and "group [fuse-add-norm] layer: add_norm_0" in line
               for line in lines), lines
    _, _, lines = optimized("examples/small/graph_transformer.yaml")
    assert any("refused [attention] graph_attention: softmax p not fused into attention: mul multiplies the "
               "scores by a tensor (edge), not a constant" in line for line in lines), lines


def test_passes_rewrite_templates_shared_by_repeats() -> None:
    model, opt, _ = optimized("examples/gpt2.yaml", n_layer=3)
    assert count(opt, "attention") == 1          # one template, run by every layer of the repeat
    repeat = next(n for n in opt.graph if n.op == "repeat")
    assert repeat.attrs["count"] == 3
    assert state(opt) == state(model)


def test_outputs_follow_replaced_output_nodes() -> None:
    text = """nnspec: 1
name: t
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
  z: float32[B, T, d]
dims:
  d: 4
body: |
  y = dropout(x * 1, 0.0)
  z = relu(x) + relu(x)
"""
    model, opt, _ = optimized(text, level=1)
    assert opt.outputs["y"] == "x" and opt.graph.outputs[0] == "x"
    assert count(opt, "relu") == 1
    assert_same_outputs(model, opt, exact=True)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_specs_keep_outputs_and_state_at_O2(data: st.DataObject) -> None:
    """Specs drawn by `nnspec.testing.specs()` (spelled-out attention, fused q/k/v, MLPs, repeats, ...)."""
    import torch

    result = nnspec.check(data.draw(specs(max_layers=2, max_width=16)))
    inputs = data.draw(inputs_for(result, max_size=4))
    model = result.model
    opt = optimize(model, 2, verify=True)
    assert state(opt) == state(model)
    before, after = outputs(model, inputs), outputs(opt, inputs)
    for k in before:
        torch.testing.assert_close(before[k], after[k], rtol=1e-4, atol=1e-5, equal_nan=True)
    assert_idempotent(opt)
