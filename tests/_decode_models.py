"""Small Hugging Face decoders with random weights (never downloaded) and the nnspec module holding the same
weights, for the generate/decoding tests: GPT-2, Llama (GQA, rotary) and Mixtral (top-2 of 4 experts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

import nnspec

EXAMPLES = Path(__file__).parent.parent / "examples"
VOCAB = 97

CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2LMHeadModel", "GPT2Config",
             dict(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0)),
    "llama": ("LlamaForCausalLM", "LlamaConfig",
              dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)),
    "mixtral": ("MixtralForCausalLM", "MixtralConfig",
                dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                     num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
}


def pair(name: str, tmp: Path, opt: int = 0, target: str = "torch", dtype: str | None = None,
         seed: int = 0) -> tuple[Any, Any]:
    """(HF model, nnspec module with the HF weights loaded), both in eval mode."""
    cls, config_cls, kwargs = CONFIGS[name]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**kwargs, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = getattr(transformers, cls)(config).eval()
    config.save_pretrained(tmp)
    spec = EXAMPLES / f"{name}.yaml"
    transforms = {"dtype": dtype} if dtype else None
    ours = nnspec.build(spec, opt=opt, target=target, config=tmp / "config.json", transforms=transforms).eval()
    nnspec.load_weights(ours, hf.state_dict())
    if dtype:
        hf = hf.to(torch.bfloat16)
    return hf, ours


def left_padded(seed: int = 0, lengths: tuple[int, ...] = (5, 9, 7)) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch (pad id 0) of prompts of different lengths, and its attention mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.int64)
    mask = torch.zeros(len(lengths), width, dtype=torch.int64)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[row, width - n:] = 1
    return ids, mask

