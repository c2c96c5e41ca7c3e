"""Qwen2-MoE (examples/qwen2_moe.yaml) conforms to transformers' Qwen2MoeForCausalLM (issue 17).

The HF model is built from small `Qwen2MoeConfig`s with random weights (never downloaded); the spec reads the same
config.json and takes HF's state dict through its `weights: hf:` mapping. Logits must match HF's within
`assert_close` at -O0 and -O2, and gradients in training mode, across configs that exercise every per-layer choice:
the shared expert with its sigmoid gate, routing weights renormalised (`norm_topk_prob`) or not, dense layers from
`mlp_only_layers` and from `decoder_sparse_step`, q/k/v biases on or off. Default sizes are Qwen1.5-MoE-A2.7B's
parameter count, counted by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.torch.weights import to_source  # noqa: E402

SPEC = Path(__file__).parent.parent / "examples" / "qwen2_moe.yaml"

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
             shared_expert_intermediate_size=20, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             num_experts=4, num_experts_per_tok=2, max_position_embeddings=64)

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "renormalised_dense_first": dict(norm_topk_prob=True, mlp_only_layers=[0], num_hidden_layers=3, qkv_bias=False),
    "sparse_every_second": dict(decoder_sparse_step=2, num_hidden_layers=4, num_experts=5, num_experts_per_tok=3),
}


def _pair(name: str, tmp_path: Path, opt: int = 0) -> tuple[Any, Any, Any]:
    """(HF model, nnspec module with HF's weights loaded, a batch of token ids)."""
    config = transformers.Qwen2MoeConfig(**{**SMALL, **CONFIGS[name]})
    path = tmp_path / "config.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = transformers.Qwen2MoeForCausalLM(config).eval()
    ours = nnspec.build(SPEC, config=path, opt=opt).eval()
    nnspec.load_weights(ours, hf.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    return hf, ours, ids


@pytest.mark.parametrize(("name", "opt"), [
    ("plain", 0), ("renormalised_dense_first", 2), ("sparse_every_second", 2),     # every config, both levels
    *(pytest.param(n, o, marks=pytest.mark.slow) for n, o in (("plain", 2), ("renormalised_dense_first", 0),
                                                              ("sparse_every_second", 0)))])
def test_logits_match_hf(name: str, opt: int, tmp_path: Path) -> None:
    hf, ours, ids = _pair(name, tmp_path, opt)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids), hf(ids).logits)


@pytest.mark.parametrize("name", ["renormalised_dense_first"])
def test_gradients_match_hf(name: str, tmp_path: Path) -> None:
    hf, ours, ids = _pair(name, tmp_path)
    probe = torch.randn(2, 9, SMALL["vocab_size"], generator=torch.Generator().manual_seed(2))
    (hf(ids).logits * probe).sum().backward()
    (ours(input_ids=ids) * probe).sum().backward()
    grads = to_source(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert set(grads) == {k for k, _ in hf.named_parameters()}
    for key, grad in grads.items():
        torch.testing.assert_close(grad, hf.get_parameter(key).grad, atol=1e-5, rtol=1e-4, msg=key)


def test_the_shared_expert_gate_is_not_inert(tmp_path: Path) -> None:
    """Zeroing the shared expert's gate weight halves its contribution (sigmoid(0) = 1/2): the logits move."""
    hf, ours, ids = _pair("plain", tmp_path)
    with torch.no_grad():
        before = ours(input_ids=ids)
        for i in range(SMALL["num_hidden_layers"]):
            ours.get_parameter(f"layers.{i}.mlp.shared_expert_gate.weight").zero_()
            hf.get_parameter(f"model.layers.{i}.mlp.shared_expert_gate.weight").zero_()
        after = ours(input_ids=ids)
        assert not torch.allclose(before, after, atol=1e-4)
        torch.testing.assert_close(after, hf(ids).logits)


def test_default_sizes_are_qwen1_5_moe_a2_7b_counted_by_hand() -> None:
    vocab, d, layers, experts, moe_ff, shared_ff = 151936, 2048, 24, 60, 1408, 5632   # q, k, v: d wide
    attention = 3 * (d * d + d) + d * d                                   # q, k, v with biases; o without
    moe = experts * d + 3 * experts * moe_ff * d                          # router and stacked experts
    shared = 3 * shared_ff * d + d                                        # shared SwiGLU and its 1-output gate
    want = 2 * vocab * d + layers * (attention + moe + shared + 2 * d) + d
    assert nnspec.check(SPEC).params == want == 14_315_784_192
