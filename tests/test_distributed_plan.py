"""The torch-free distributed plans: tensor-parallel styles derived from named axes, and cost-balanced pipeline stages.

Expected values come from outside nnspec: Hugging Face's `LlamaConfig.base_model_tp_plan`, a GPT-2 plan written by
hand (Megatron-LM's split: fused q/k/v and the first MLP linear column-wise, both output projections row-wise), and
per-stage FLOPs derived by hand from the layer count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nnspec.compiler.check import check
from nnspec.compiler.stage_split import split_stages
from nnspec.compiler.tp_plan import PlanError, derive_tp_plan

ROOT = Path(__file__).resolve().parent.parent
LLAMA = ROOT / "examples" / "llama.yaml"
GPT2 = ROOT / "examples" / "gpt2.yaml"
SMALL_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=32)


def test_llama_plan_equals_hugging_face_base_model_tp_plan() -> None:
    from transformers import LlamaConfig

    plan = derive_tp_plan(check(LLAMA).model, 2)
    assert plan.hf() == LlamaConfig.base_model_tp_plan
    assert list(plan.hf()) == list(LlamaConfig.base_model_tp_plan)   # entry by entry, in order
    # TinyLlama: 4 key/value heads of 32 query heads, 5632 FFN width, each split in 2
    assert plan.local_dims == {"num_key_value_heads": 2, "intermediate_size": 2816}


def test_gpt2_plan_equals_the_hand_written_megatron_plan() -> None:
    hand = {
        "h.*.attn.c_attn": "colwise_strided_3",   # (3 n_head head_dim): each of q, k, v split by heads
        "h.*.attn.c_proj": "rowwise",
        "h.*.mlp.c_fc": "colwise",
        "h.*.mlp.c_proj": "rowwise",
    }
    plan = derive_tp_plan(check(GPT2).model, 4)
    assert plan.hf() == hand
    assert plan.local_dims == {"n_head": 3}
    c_attn = next(r for r in plan.rules if r.path == "h.*.attn.c_attn")
    assert (c_attn.axis, c_attn.stride) == ("n_head", 3)


def test_norms_are_sequence_parallel_candidates_only_on_request() -> None:
    plan = derive_tp_plan(check(LLAMA, **SMALL_LLAMA).model, 2)
    sp = plan.hf(sequence_parallel=True)
    assert sp["layers.*.input_layernorm"] == sp["layers.*.post_attention_layernorm"] == "sequence_parallel"
    assert "layers.*.input_layernorm" not in plan.hf()
    assert any("local num_key_value_heads = 2 / 2 = 1" in line for line in plan.explain())


def test_a_head_count_the_mesh_does_not_divide_is_refused_at_the_linear() -> None:
    with pytest.raises(PlanError) as info:
        derive_tp_plan(check(LLAMA).model, 8)     # TinyLlama has 4 key/value heads
    err = info.value
    assert "num_key_value_heads = 4 over 8 ranks" in str(err) and "layers.*.self_attn.q_proj" in str(err)
    assert err.span is not None and "q_proj" in err.span.source.line_text(err.span.line)
    with pytest.raises(PlanError, match=r"n_head = 12 over 5 ranks"):
        derive_tp_plan(check(GPT2).model, 5)


def test_reducing_over_a_sharded_axis_is_refused_at_that_op() -> None:
    text = """\
nnspec: 1
name: bad
dims: {d: 8, h: 4}
inputs:
  x: float32[B, d]
outputs:
  y: float32[B]
blocks:
  layer(x): |
    u = linear(x, h, bias=false, name=up)
    return x + sum(u, over=h)
body: |
  z = repeat(2, layer, x, name=layers)
  y = sum(z, over=d)
"""
    model = check(text).model
    with pytest.raises(PlanError, match="reduces or drops the sharded axis h") as info:
        derive_tp_plan(model, 2)
    assert info.value.span is not None and info.value.span.line == 11


def test_24_layers_in_4_stages_balance_within_one_layer() -> None:
    dims = {**SMALL_LLAMA, "num_hidden_layers": 24}
    plan = split_stages(check(LLAMA, **dims).model, 4, seq=16)
    costs = [s.cost for s in plan.stages]
    assert max(costs) - min(costs) <= plan.layer_cost
    assert [(s.first, s.stop) for s in plan.stages] == [(0, 6), (6, 12), (12, 18), (18, 24)]
    assert plan.split_points() == ["layers.6", "layers.12", "layers.18"]
    assert plan.stages[0].has_prologue and plan.stages[-1].has_epilogue


def test_a_heavy_head_moves_layers_off_the_last_stage() -> None:
    """GPT-2 small untied: the head (2 x 768 x 50257 FLOPs a token) weighs about 4.4 layers at T=1024, so the last
    stage takes fewer layers; the split minimises the largest stage (checked against every contiguous split)."""
    model = check(GPT2, n_layer=24, tie_word_embeddings=False).model
    plan = split_stages(model, 4, seq=1024)
    worst = max(s.cost for s in plan.stages)
    layer, pro, epi = plan.layer_cost, plan.prologue_cost, plan.epilogue_cost
    best = min(max(a * layer + pro, (b - a) * layer, (c - b) * layer, (24 - c) * layer + epi)
               for a in range(1, 22) for b in range(a + 1, 23) for c in range(b + 1, 24))
    assert worst == best
    assert plan.stages[-1].stop - plan.stages[-1].first < 6


def test_impossible_splits_name_the_repeat_or_weight() -> None:
    model = check(LLAMA, **SMALL_LLAMA).model
    with pytest.raises(PlanError, match=r"repeat layers runs 2 iterations; cannot make 4 pipeline stages"):
        split_stages(model, 4)
    with pytest.raises(PlanError, match=r"wte.weight is read by the embedding .*tied weights"):
        split_stages(check(GPT2).model, 2)


def _cli(*args: object) -> Any:
    from typer.testing import CliRunner

    from nnspec.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_plan_command_lists_the_plan_and_emits_the_hf_dict() -> None:
    from transformers import LlamaConfig

    out = _cli("plan", LLAMA, "--tp", 2, "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["tp"]["base_model_tp_plan"] == LlamaConfig.base_model_tp_plan
    assert report["tp"]["local_dims"] == {"num_key_value_heads": 2, "intermediate_size": 2816}
    out = _cli("plan", LLAMA, "--pp", 2, "--by", "params", "--set", "num_hidden_layers=4")
    assert out.exit_code == 0, out.output
    assert "stage 0: layers.0..1 (2 iterations + prologue)" in out.stdout
    assert "stage 1: layers.2..3 (2 iterations + epilogue)" in out.stdout


def test_plan_command_refuses_with_the_place_and_exit_codes() -> None:
    out = _cli("plan", LLAMA, "--tp", 3)
    assert out.exit_code == 1
    assert "llama.yaml:" in out.stderr and "num_key_value_heads = 4 over 3 ranks" in out.stderr
    assert "Traceback" not in out.output
    out = _cli("plan", LLAMA)
    assert out.exit_code == 2 and "--tp N and/or --pp N" in out.stderr


def test_a_split_opened_in_one_block_and_closed_in_another_is_refused() -> None:
    """BERT's self-attention block returns the per-head context; the output projection lives in a sibling block, so
    the colwise q/k/v would have no rowwise partner inside the block: refused, not half-planned."""
    with pytest.raises(PlanError, match=r"block self_attention returns a tensor sharded on num_attention_heads"):
        derive_tp_plan(check(ROOT / "examples" / "bert.yaml").model, 2)
    vit = derive_tp_plan(check(ROOT / "examples" / "vit.yaml").model, 2).hf()   # q: linear(x, hidden) split by a view
    assert vit == {"layers.*.attention.q_proj": "colwise", "layers.*.attention.k_proj": "colwise",
                   "layers.*.attention.v_proj": "colwise", "layers.*.attention.o_proj": "rowwise",
                   "layers.*.mlp.fc1": "colwise", "layers.*.mlp.fc2": "rowwise"}
