"""The reference interpreter computes what transformers' BERT, ViT and Llama compute, and the examples' parameter
counts are the published ones.

HF models are built from small configs with random weights (never downloaded); their weights are copied into the
interpreter through each example's `weights: hf:` rules, so the test covers the spec, the rules and the op
semantics (attention masks, GQA, rotary, convolution, class tokens) at once.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.torch import Interpreter  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"


def copy_hf_weights(interp: Interpreter, hf: Any) -> None:
    """Copy every parameter through the spec's rules; each HF key used at most once (except tied ones)."""
    state = hf.state_dict()
    rules = interp.model.weight_maps["hf"]
    with torch.no_grad():
        for path, p in interp.named_spec_parameters().items():
            for ours, theirs, transforms in rules:
                pattern = "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(ours)) + "$"
                m = re.match(pattern, path)
                if m:
                    src = state[theirs.format(**m.groupdict())]
                    for t in transforms:
                        if t == "transpose":
                            src = src.t()
                        elif t.startswith(("squeeze", "unsqueeze")):
                            src = src.reshape(p.shape)
                    p.copy_(src)
                    break
            else:
                raise AssertionError(f"no rule for {path}")


def run_both(example: str, dims: dict[str, int], hf: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    interp = Interpreter(nnspec.check(EXAMPLES / example, **dims).model).eval()
    copy_hf_weights(interp, hf.eval())
    with torch.no_grad():
        return interp(**inputs), hf(**inputs)


def test_bert_with_padding_mask_matches_hf() -> None:
    dims = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=64, type_vocab_size=2)
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(**dims, hidden_dropout_prob=0.0,
                                                        attention_probs_dropout_prob=0.0,
                                                        attn_implementation="eager"))
    ids = torch.randint(0, 99, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    types = torch.zeros(3, 9, dtype=torch.long)
    types[:, 5:] = 1
    ours, theirs = run_both("bert.yaml", dims, hf, dict(input_ids=ids, attention_mask=mask, token_type_ids=types))
    torch.testing.assert_close(ours["last_hidden_state"], theirs.last_hidden_state)
    torch.testing.assert_close(ours["pooler_output"], theirs.pooler_output)


def test_bert_optional_inputs_default_like_hf() -> None:
    dims = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                max_position_embeddings=16)
    torch.manual_seed(1)
    hf = transformers.BertModel(transformers.BertConfig(**dims, attn_implementation="eager"))
    ours, theirs = run_both("bert.yaml", dims, hf, dict(input_ids=torch.randint(0, 50, (2, 7))))
    torch.testing.assert_close(ours["last_hidden_state"], theirs.last_hidden_state)


def test_vit_matches_hf() -> None:
    dims = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=48, num_labels=10)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**dims, attn_implementation="eager"))
    pixels = torch.randn(2, 3, 32, 32)
    ours, theirs = run_both("vit.yaml", dims, hf, dict(pixel_values=pixels))
    torch.testing.assert_close(ours["logits"], theirs.logits)


@pytest.mark.parametrize("tied", [False, True])
def test_llama_gqa_matches_hf(tied: bool) -> None:
    dims = dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**dims, tie_word_embeddings=tied, rms_norm_eps=1e-5,
                                                                attn_implementation="eager"))
    ids = torch.randint(0, 101, (2, 13))
    interp = Interpreter(nnspec.check(EXAMPLES / "llama.yaml", **dims, tie_word_embeddings=tied).model).eval()
    copy_hf_weights(interp, hf.eval())
    with torch.no_grad():
        torch.testing.assert_close(interp(input_ids=ids)["logits"], hf(input_ids=ids).logits)


@pytest.mark.parametrize(("example", "dims", "params"), [
    ("bert.yaml", {}, 109_482_240),
    ("vit.yaml", {}, 86_567_656),
    ("llama.yaml", {}, 1_100_048_384),                                   # TinyLlama-1.1B, untied
    ("llama.yaml", dict(vocab_size=128256, intermediate_size=8192, num_hidden_layers=16, num_key_value_heads=8,
                        tie_word_embeddings=True), 1_235_814_400),       # Llama-3.2-1B, tied
])
def test_published_parameter_counts(example: str, dims: dict[str, Any], params: int) -> None:
    assert nnspec.check(EXAMPLES / example, **dims).params == params


def _published_configs() -> list[tuple[str, Any, str, int]]:
    """(example, HF config built from transformers' own classes, model class, published parameter count)."""
    t = transformers
    return [
        ("gpt2.yaml", t.GPT2Config(), "GPT2LMHeadModel", 124_439_808),                      # defaults: GPT-2 small
        ("bert.yaml", t.BertConfig(), "BertModel", 109_482_240),                            # defaults: bert-base
        ("vit.yaml", t.ViTConfig(num_labels=1000), "ViTForImageClassification", 86_567_656),  # defaults: ViT-B/16
        ("llama.yaml", t.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                     num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                                     tie_word_embeddings=False), "LlamaForCausalLM", 1_100_048_384),  # TinyLlama-1.1B
        # Llama-3.2-1B's dims; its real config also has llama3 rope scaling, which the spec refuses (E022)
        ("llama.yaml", t.LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                     rope_theta=500000.0, tie_word_embeddings=True), "LlamaForCausalLM", 1_235_814_400),
    ]


@pytest.mark.parametrize("case", range(5), ids=["gpt2", "bert", "vit", "tinyllama", "llama3.2-1b"])
def test_published_counts_through_hf_config_json(tmp_path: Path, case: int) -> None:
    """`nnspec check --config` on a config.json written by transformers' config class counts what transformers'
    model (built on the meta device: no memory, no download) holds, and that is the published number."""
    example, config, cls, published = _published_configs()[case]
    path = tmp_path / "config.json"
    config.to_json_file(path)
    result = nnspec.check(EXAMPLES / example, config=path)
    with torch.device("meta"):
        hf = getattr(transformers, cls)(config)
    assert result.params == sum(p.numel() for p in hf.parameters()) == published   # tied weights once, both sides
    assert [w.message for w in result.warnings] == []                              # every key used or known
