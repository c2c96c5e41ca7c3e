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


def _hf_to_spec_paths(model: Any) -> dict[str, str]:
    """Hugging Face module path pattern -> the spec's, from the spec's own `weights: hf:` map (`{i}` is `*`)."""
    out = {}
    for ours, theirs, _ in model.weight_maps["hf"]:
        out[theirs.removesuffix(".weight").replace("{i}", "*")] = ours.removesuffix(".weight").replace("{i}", "*")
    return out


def test_llama_model_plan_equals_the_hugging_face_model_tp_plan() -> None:
    """Embedding row-wise and head column-wise (logits gathered) on the vocabulary, as a LlamaForCausalLM built from a
    small config (random weights, nothing downloaded) declares in its `_tp_plan`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model = check(LLAMA, **SMALL_LLAMA).model
    plan = derive_tp_plan(model, 2)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2))
    paths = _hf_to_spec_paths(model)
    assert plan.hf_model() == {paths[k]: v for k, v in hf._tp_plan.items()}
    assert plan.hf() == LlamaConfig.base_model_tp_plan        # the config's dict stays the repeated blocks only
    assert plan.local_dims == {"num_key_value_heads": 1, "intermediate_size": 32}   # the vocabulary is gathered


def test_a_tied_or_indivisible_vocabulary_stays_replicated_with_a_note() -> None:
    tied = derive_tp_plan(check(GPT2).model, 2)
    assert "wte" not in tied.hf_model() and any("wte stays replicated" in n and "tied" in n for n in tied.notes)
    odd = derive_tp_plan(check(GPT2, tie_word_embeddings=False).model, 2)      # 50257 tokens
    assert not {"wte", "lm_head"} & set(odd.hf_model())
    assert any("lm_head stays replicated: vocab_size = 50257 is not divisible by 2" in n for n in odd.notes)
    even = derive_tp_plan(check(GPT2, tie_word_embeddings=False, vocab_size=50258).model, 2)
    assert even.hf_model()["wte"] == "embedding_rowwise" and even.hf_model()["lm_head"] == "colwise_gather_output"
    assert "wpe" not in even.hf_model()                        # positions are not the vocabulary axis


def test_sequence_parallel_llama_plan_is_torchtitans() -> None:
    """torchtitan's Llama plan (parallelize_llama): norms SequenceParallel, attention and feed-forward gather their
    input, wo / w2 reduce-scatter onto the sequence, tok_embeddings scatter onto it, output gathers it."""
    plan = derive_tp_plan(check(LLAMA, **SMALL_LLAMA).model, 2, sequence_parallel=True)
    rules = {r.path: r for r in plan.styles()}
    hand = {   # path: (style, input arrives sequence-sharded, output leaves sequence-sharded)
        "embed_tokens": ("embedding_rowwise", False, True),
        "layers.*.input_layernorm": ("sequence_parallel", False, False),
        "layers.*.self_attn": ("gather_input", False, False),
        "layers.*.self_attn.q_proj": ("colwise", False, False),
        "layers.*.self_attn.k_proj": ("colwise", False, False),
        "layers.*.self_attn.v_proj": ("colwise", False, False),
        "layers.*.self_attn.o_proj": ("rowwise", False, True),
        "layers.*.post_attention_layernorm": ("sequence_parallel", False, False),
        "layers.*.mlp": ("gather_input", False, False),
        "layers.*.mlp.gate_proj": ("colwise", False, False),
        "layers.*.mlp.up_proj": ("colwise", False, False),
        "layers.*.mlp.down_proj": ("rowwise", False, True),
        "norm": ("sequence_parallel", False, False),
        "lm_head": ("colwise_gather_output", True, False),
    }
    assert {p: (r.style, r.seq_in, r.seq_out) for p, r in rules.items()} == hand
    assert (rules["layers.*.self_attn"].args, rules["layers.*.self_attn"].arity) == ((0,), 3)   # x, not mask/positions
    assert plan.sequence_dim == 1
    assert "sequence_parallel" not in derive_tp_plan(check(LLAMA, **SMALL_LLAMA).model, 2).hf_model().values()


def test_sequence_parallel_is_refused_where_the_residual_stream_is_not_the_embedding() -> None:
    """GPT-2 adds position embeddings (and dropout) before the blocks: splitting from the token embedding alone would
    add a sequence shard to whole positions; refused at the op the repeat reads."""
    model = check(GPT2, tie_word_embeddings=False, vocab_size=50258).model
    with pytest.raises(PlanError, match=r"repeat h reads h \(dropout\)") as info:
        derive_tp_plan(model, 2, sequence_parallel=True)
    assert info.value.span is not None


def test_moe_experts_stay_replicated_with_the_reason() -> None:
    model = check(ROOT / "examples" / "mixtral.yaml").model
    plan = derive_tp_plan(model, 2)
    assert not any(".mlp." in r.path for r in plan.rules)
    with pytest.raises(PlanError, match="moe reads the output of norm post_attention_layernorm") as info:
        derive_tp_plan(model, 2, sequence_parallel=True)     # the fused op cannot gather a sequence-sharded input
    assert info.value.span is not None
    assert any(n.startswith("layers.*.mlp stays replicated: the experts are one fused moe op") for n in plan.notes)
    assert any("note: layers.*.mlp stays replicated" in line for line in plan.explain())


def test_plan_command_with_sequence_parallel_lists_the_model_plan() -> None:
    out = _cli("plan", LLAMA, "--tp", 2, "--sequence-parallel", "--json")
    assert out.exit_code == 0, out.output
    tp = json.loads(out.stdout)["tp"]
    assert tp["tp_plan"]["norm"] == "sequence_parallel" and tp["tp_plan"]["lm_head"] == "colwise_gather_output"
    assert tp["base_model_tp_plan"]["layers.*.input_layernorm"] == "sequence_parallel"
    out = _cli("plan", GPT2, "--tp", 2, "--sequence-parallel", "--set", "tie_word_embeddings=false")
    assert out.exit_code == 1 and "gpt2.yaml:" in out.stderr and "Traceback" not in out.output
