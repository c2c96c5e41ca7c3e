"""`nnspec import`: Hugging Face models from small configs (random weights, nothing downloaded) lifted to specs
that check, count the same parameters, load the original state dict through the generated mapping and match the
original logits; layers collapse into one `repeat`; what cannot be lifted is refused with op and module path."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.importer.capture import from_hf_config

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


def _gpt2(layers: int = 2):
    return transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=64, n_layer=layers, n_head=4,
                                   architectures=["GPT2LMHeadModel"])


def _llama(layers: int = 2):
    return transformers.LlamaConfig(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    architectures=["LlamaForCausalLM"])


def _bert(layers: int = 2):
    return transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                   intermediate_size=37, max_position_embeddings=64, type_vocab_size=2)


def _mixtral(layers: int = 2):
    return transformers.MixtralConfig(vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                      num_experts_per_tok=2, max_position_embeddings=64,
                                      architectures=["MixtralForCausalLM"])


def _qwen2_moe(layers: int = 2):
    return transformers.Qwen2MoeConfig(vocab_size=101, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                                       shared_expert_intermediate_size=40, num_hidden_layers=layers,
                                       num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                                       num_experts_per_tok=2, max_position_embeddings=64,
                                       architectures=["Qwen2MoeForCausalLM"])


def _vit(layers: int = 2):
    return transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                                  num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                                  num_labels=10, architectures=["ViTForImageClassification"])


@cache
def _imported(kind: str, layers: int = 2):
    """Export is the slow part: import each (model, depth) once per test session."""
    config = {"gpt2": _gpt2, "llama": _llama, "bert": _bert, "vit": _vit,
              "mixtral": _mixtral, "qwen2_moe": _qwen2_moe}[kind](layers)
    model, inputs, cfg = from_hf_config(config)
    return import_module(model, inputs, cfg)


def _matches_hf(imp) -> None:
    model = imp.model
    result = nnspec.check(imp.text)
    assert result.params == sum(p.numel() for p in model.parameters())
    built = nnspec.build(imp.text).eval()
    nnspec.load_weights(built, model.state_dict())
    with torch.no_grad():
        want = model(**imp.inputs).logits
        got = built(**imp.inputs)
        # other lengths than the traced one: the spec's sizes are free dims, not the example's
        ids = torch.randint(0, model.config.vocab_size, (2, 9))
        want9, got9 = model(input_ids=ids).logits, built(input_ids=ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got9, want9, atol=1e-4, rtol=1e-4)


def test_gpt2_imports_readably_and_matches_hf() -> None:
    imp = _imported("gpt2")
    _matches_hf(imp)
    text = imp.text
    assert "repeat(n_layer, layer, " in text and "name=h)" in text
    for fn in ("layernorm(", "linear(", "embedding(", "attention(", "gelu_tanh(", "arange(T)"):
        assert fn in text
    assert "aten" not in text
    assert "h.{i}.attn.c_attn.weight: transformer.h.{i}.attn.c_attn.weight | transpose" in text
    assert "* wte.weight" in text                  # the tied head is the embedding's weight, not a copy
    hand = len((ROOT / "examples/gpt2.yaml").read_text().splitlines())
    assert len(text.splitlines()) <= 2 * hand


def test_llama_imports_with_rotary_gqa_and_matches_hf() -> None:
    imp = _imported("llama")
    _matches_hf(imp)
    text = imp.text
    for fn in ("rmsnorm(", "rotary(", "base=rope_theta", "silu(", "attention(", "causal=true", "groups"):
        assert fn in text
    assert "repeat(num_hidden_layers, layer, " in text
    assert "head_dim: hidden_size / num_attention_heads" in text


@pytest.mark.slow
def test_bert_imports_both_outputs_and_matches_hf() -> None:
    imp = _imported("bert")
    model = imp.model
    assert nnspec.check(imp.text).params == sum(p.numel() for p in model.parameters())
    built = nnspec.build(imp.text).eval()
    nnspec.load_weights(built, model.state_dict())
    with torch.no_grad():
        want, got = model(**imp.inputs), built(**imp.inputs)
    for key in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)
    text = imp.text
    assert "repeat(num_hidden_layers, layer, " in text and "name=layer)" in text
    assert "type_vocab_size" in text and "take(" in text and "gelu(" in text
    assert "causal=true" not in text                # an encoder: full attention


def test_vit_imports_patches_and_class_token_and_matches_hf() -> None:
    imp = _imported("vit")
    model = imp.model
    assert nnspec.check(imp.text).params == sum(p.numel() for p in model.parameters())
    built = nnspec.build(imp.text).eval()
    nnspec.load_weights(built, model.state_dict())
    pixels = torch.randn(2, 3, 32, 32)               # another batch than the traced one
    with torch.no_grad():
        torch.testing.assert_close(built(pixel_values=pixels), model(pixel_values=pixels).logits, atol=1e-4,
                                   rtol=1e-4)
    text = imp.text
    assert "conv(" in text and "param(hidden_size, name=cls_token)" in text and "concat(" in text
    assert "embeddings.cls_token: vit.embeddings.cls_token | squeeze(0, 1)" in text
    assert "pixel_values: float32[B, num_channels, height, width]" in text
    assert "repeat(num_hidden_layers, layer, " in text


def test_mixtral_moe_imports_as_moe_and_matches_hf() -> None:
    imp = _imported("mixtral")
    _matches_hf(imp)
    text = imp.text
    assert "moe(rmsnorm(" in text and "num_local_experts, intermediate_size, num_experts_per_tok" in text
    assert "layers.{i}.mlp.gate_proj: model.layers.{i}.mlp.experts.gate_up_proj | split(1, 2, 0)" in text
    assert "repeat(num_hidden_layers, layer, " in text


def test_qwen2_moe_shared_expert_imports_and_matches_hf() -> None:
    """Qwen2-MoE's sparse block is more than routed experts: only its `experts` child is the `moe` call (router read
    from the sibling `gate`, top-k weights not renormalised), the shared expert a block of its own and its gate a
    one-output linear summed to broadcast by name, as examples/qwen2_moe.yaml writes them."""
    imp = _imported("qwen2_moe")
    _matches_hf(imp)
    text = imp.text
    assert "moe(x, num_experts, moe_intermediate_size, num_experts_per_tok, norm_topk_prob=false, name=experts)" \
        in text
    assert "sigmoid(sum(linear(x, 1, bias=false, name=shared_expert_gate), over=1))" in text
    assert "shared_expert(x, name=shared_expert)" in text and "repeat(num_hidden_layers, layer, " in text
    assert "layers.{i}.mlp.experts.router: model.layers.{i}.mlp.gate.weight" in text
    assert "layers.{i}.mlp.experts.up_proj: model.layers.{i}.mlp.experts.gate_up_proj | split(1, 2, 1)" in text


def test_round_trip_of_the_gpt2_example() -> None:
    """spec -> generated module -> import -> spec: the second spec builds a model equal to the first (its tied head,
    spelled-out attention with a causal mask, and q/k/v split of one projection all lifted back)."""
    dims = dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    first = nnspec.build(str(ROOT / "examples/gpt2.yaml"), **dims).eval()
    inputs = {"input_ids": torch.randint(0, 97, (3, 5))}
    imp = import_module(first, inputs, dims, name="gpt2")
    assert nnspec.check(imp.text).params == sum(p.numel() for p in first.parameters())
    second = nnspec.build(imp.text).eval()
    nnspec.load_weights(second, first.state_dict())
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(second(input_ids=ids), first(input_ids=ids), atol=1e-5, rtol=1e-5)
    assert "causal_mask(T, S)" in imp.text and "repeat(n_layer, layer, " in imp.text


@pytest.mark.slow
def test_spec_size_does_not_grow_with_layers() -> None:
    two, four = _imported("llama", 2), _imported("llama", 4)
    a, b = two.text.splitlines(), four.text.splitlines()
    assert len(a) == len(b)                       # the depth lives in the dims, not in more text
    diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    assert diff == [("  num_hidden_layers: 2", "  num_hidden_layers: 4")]
    assert nnspec.check(four.text, num_hidden_layers=4).params == sum(p.numel() for p in four.model.parameters())


@pytest.mark.slow
def test_gpt2_size_does_not_grow_with_layers() -> None:
    assert len(_imported("gpt2", 2).text.splitlines()) == len(_imported("gpt2", 4).text.splitlines())


class _Sorts(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(self.proj(x), dim=-1)


def make_unliftable():
    return _Sorts().eval(), {"x": torch.randn(3, 5, 8)}, {"hidden_size": 8}


def test_unliftable_op_is_reported_with_module_path() -> None:
    model, inputs, config = make_unliftable()
    with pytest.raises(ImportFailure) as info:
        import_module(model, inputs, config)
    assert "aten.cumprod" in str(info.value) and "no lifting rule" in str(info.value)
    assert info.value.op == "aten.cumprod.default"


def test_cli_writes_nothing_when_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.cli import app

    monkeypatch.setitem(sys.modules, "nnspec_import_fixture", sys.modules[__name__])
    out = tmp_path / "spec.yaml"
    res = CliRunner().invoke(app, ["import", "nnspec_import_fixture:make_unliftable", "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert "aten.cumprod" in res.output and not out.exists()


@pytest.mark.slow
def test_cli_imports_a_config_json(tmp_path: Path) -> None:
    from nnspec.cli import app

    cfg = tmp_path / "config.json"
    _gpt2().to_json_file(str(cfg))
    out = tmp_path / "gpt2.yaml"
    res = CliRunner().invoke(app, ["import", str(cfg), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert nnspec.check(str(out)).params == 108352  # GPT-2 at these sizes, tied head counted once

