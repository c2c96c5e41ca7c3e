"""Mixtral (examples/mixtral.yaml) conforms to transformers' MixtralForCausalLM (issue 17).

The HF model is built from a small `MixtralConfig` with random weights (never downloaded); the spec reads the same
config.json, takes HF's state dict through its `weights: hf:` mapping (the stacked `gate_up_proj` split into the
moe op's gate and up projections) and must give HF's logits within `assert_close`, at -O0 and -O2, and HF's
gradients in training mode. The default sizes are Mixtral-8x7B's parameter count, counted by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.torch.weights import to_source  # noqa: E402

SPEC = Path(__file__).parent.parent / "examples" / "mixtral.yaml"

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64)


def _pair(tmp_path: Path, opt: int = 0, **extra: Any) -> tuple[Any, Any, Any]:
    """(HF model, nnspec module with HF's weights loaded, a batch of token ids)."""
    config = transformers.MixtralConfig(**{**SMALL, **extra})
    path = tmp_path / "config.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = transformers.MixtralForCausalLM(config).eval()
    ours = nnspec.build(SPEC, config=path, opt=opt).eval()
    nnspec.load_weights(ours, hf.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    return hf, ours, ids


@pytest.mark.parametrize(("extra", "opt"), [
    ({}, 0), ({}, 2),
    pytest.param(dict(num_local_experts=6, num_experts_per_tok=3, num_key_value_heads=4), 0, marks=pytest.mark.slow),
    (dict(num_local_experts=6, num_experts_per_tok=3, num_key_value_heads=4), 2)], ids=["4x2-O0", "4x2-O2", "6x3-O0",
                                                                                       "6x3-O2"])
def test_logits_match_hf(opt: int, extra: dict[str, Any], tmp_path: Path) -> None:
    hf, ours, ids = _pair(tmp_path, opt, **extra)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids), hf(ids).logits)


def test_gradients_match_hf(tmp_path: Path) -> None:
    hf, ours, ids = _pair(tmp_path)
    probe = torch.randn(2, 9, SMALL["vocab_size"], generator=torch.Generator().manual_seed(2))
    (hf(ids).logits * probe).sum().backward()
    (ours(input_ids=ids) * probe).sum().backward()
    grads = to_source(ours, {k: p.grad for k, p in ours.named_parameters()})
    assert set(grads) == {k for k, _ in hf.named_parameters()}
    for key, grad in grads.items():
        torch.testing.assert_close(grad, hf.get_parameter(key).grad, atol=1e-5, rtol=1e-4, msg=key)


def test_default_sizes_are_mixtral_8x7b_counted_by_hand() -> None:
    vocab, d, ff, layers, heads, kv, experts = 32000, 4096, 14336, 32, 32, 8, 8
    hd = d // heads
    attention = d * heads * hd + 2 * d * kv * hd + heads * hd * d
    moe = experts * d + 3 * experts * ff * d                # router and stacked gate, up, down experts
    want = 2 * vocab * d + layers * (attention + moe + 2 * d) + d
    assert nnspec.check(SPEC).params == want == 46_702_792_704


def test_a_sliding_window_config_is_refused(tmp_path: Path) -> None:
    config = transformers.MixtralConfig(**SMALL, sliding_window=4)
    path = tmp_path / "config.json"
    config.to_json_file(path)
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(SPEC, config=path)
    assert "sliding_window" in err.value.message
