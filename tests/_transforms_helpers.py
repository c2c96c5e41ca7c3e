"""Shared set-up for tests/test_transforms*.py: small GPT-2 and Llama models, parameters and runs."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch

import nnspec
from nnspec.backends.torch.interpreter import Interpreter
from nnspec.backends.torch.transform_params import load_params
from nnspec.compiler.ir import Model
from nnspec.compiler.verify import verify

ROOT = Path(__file__).resolve().parent.parent
GPT2 = ("gpt2", (("n_layer", 4), ("n_embd", 32), ("n_head", 4), ("vocab_size", 96), ("n_positions", 64)))
LLAMA = ("llama", (("num_hidden_layers", 3), ("hidden_size", 32), ("num_attention_heads", 4),
                   ("num_key_value_heads", 2), ("intermediate_size", 64), ("vocab_size", 96),
                   ("max_position_embeddings", 64)))


@cache
def checked(spec: tuple[str, tuple[tuple[str, Any], ...]]) -> Model:
    name, dims = spec
    return nnspec.check(ROOT / "examples" / f"{name}.yaml", **dict(dims)).model


def params_of(model: Model, seed: int = 0, *, perturb_norms: bool = False) -> dict[str, torch.Tensor]:
    """Seeded parameters; with `perturb_norms`, norm scales and all biases random too (so folding matters)."""
    interp = Interpreter(model, seed=seed)
    params = {k: v.detach().clone() for k, v in interp.named_spec_parameters().items()}
    if perturb_norms:
        gen = torch.Generator().manual_seed(seed + 1)
        for k, v in params.items():
            leaf = k.rpartition(".")[2]
            if v.dim() == 1 and leaf == "weight":
                params[k] = 1 + 0.3 * torch.randn(v.shape, generator=gen)
            elif leaf == "bias":
                params[k] = 0.1 * torch.randn(v.shape, generator=gen)
    return params


def run(model: Model, params: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    interp = Interpreter(model, seed=None).eval()
    load_params(interp, params)
    with torch.no_grad():
        return interp(**inputs)


def ids(model: Model, batch: int = 2, seq: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    vocab = int(model.dims.concrete(model.dims.declared["vocab_size"]))
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))}


def verify_model(model: Model) -> None:
    for g in model.graphs():
        verify(g, model.dims, model.templates)
