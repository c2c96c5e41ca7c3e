"""Building the model to import and capturing its computation with `torch.export`.

A Hugging Face `config.json` is turned into its model class with `AutoModelFor*.from_config` on the meta device
(nothing downloaded); since tracing needs values, the parameters are then materialised (`to_empty`) and filled
with a fixed random init at the config's size, so import is meant for small configs or for a structural look at a
large one's small twin. A `module:callable` returns `(model, example_inputs)` itself.

The example inputs use a batch and sequence length that no config value equals, so every axis of those sizes is
a free dim (`B`, `T`) and never mistaken for a configured size.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnspec.importer.errors import ImportFailure
from nnspec.importer.helpers import helpers_as_calls

# Model classes by the config's `architectures` entry suffix, tried in order; a config without one gets AutoModel.
_AUTO_BY_SUFFIX = (("ForCausalLM", "AutoModelForCausalLM"), ("LMHeadModel", "AutoModelForCausalLM"),
                   ("ForImageClassification", "AutoModelForImageClassification"),
                   ("ForMaskedLM", "AutoModelForMaskedLM"))


@dataclass
class Captured:
    """A model, its exported program, every node's value at the example inputs, and where it came from."""

    model: nn.Module
    program: Any                      # torch.export.ExportedProgram
    inputs: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)   # node name -> value at the example inputs
    output_name: str = "logits"
    free: dict[int, str] = field(default_factory=dict)     # example size -> free dim name


def _free_sizes(config: dict[str, Any], limit: int) -> tuple[int, int]:
    """A batch and a sequence length equal to no integer in the config (so their axes are recognisably free)."""
    taken = set(_ints(config)) | {len(config.get("id2label") or {})}
    picks = [n for n in range(3, max(limit, 4) + 1) if n not in taken]
    if len(picks) < 2:
        raise ImportFailure("cannot pick example sizes distinct from every config value")
    return picks[0], picks[1]


def _ints(config: Any) -> list[int]:
    if isinstance(config, bool):
        return []
    if isinstance(config, int):
        return [config]
    if isinstance(config, dict):
        return [i for v in config.values() for i in _ints(v)]
    if isinstance(config, list):
        return [i for v in config for i in _ints(v)]
    return []


def from_config(path: str | Path, *, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """The Hugging Face model a config.json describes, materialised with a seeded random init, and example inputs."""
    import transformers

    raw = json.loads(Path(path).read_text())
    config = transformers.AutoConfig.for_model(**raw)
    return from_hf_config(config, seed=seed)


def from_hf_config(config: Any, *, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    import transformers

    config._attn_implementation = "sdpa"
    archs = getattr(config, "architectures", None) or []
    auto = "AutoModel"
    for suffix, name in _AUTO_BY_SUFFIX:
        if any(a.endswith(suffix) for a in archs):
            auto = name
            break
    with torch.device("meta"):
        try:
            model = getattr(transformers, auto).from_config(config)
        except ValueError:               # a model without attention (Mamba) refuses "sdpa": it needs no choice
            config._attn_implementation = "eager"
            model = getattr(transformers, auto).from_config(config)
    model = model.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
        for name, buf in model.named_buffers():
            # buffers hold derived tables (rotary inverse frequencies, position ids): rebuild them as init would
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            _reinit_buffer(owner, name.rsplit(".", 1)[-1], buf)
    if hasattr(model, "tie_weights"):
        model.tie_weights()                  # to_empty made fresh tensors: tie the head to the embedding again
    model.eval()
    as_dict = config.to_dict()
    if _takes(model, "pixel_values"):
        size = as_dict.get("image_size", 32)
        b, _ = _free_sizes(as_dict, 16)
        inputs = {"pixel_values": torch.randn(b, as_dict.get("num_channels", 3), size, size)}
    else:
        b, t = _free_sizes(as_dict, min(16, as_dict.get("max_position_embeddings") or as_dict.get("n_positions") or 16))
        inputs = {"input_ids": torch.randint(0, as_dict.get("vocab_size", 2), (b, t))}
        if _takes(model, "token_type_ids") and as_dict.get("type_vocab_size"):
            # an input rather than the zeros buffer HF falls back to, so the spec takes it as HF does
            inputs["token_type_ids"] = torch.randint(0, as_dict["type_vocab_size"], (b, t))
    return model, inputs, as_dict


def _reinit_buffer(owner: nn.Module, attr: str, buf: torch.Tensor) -> None:
    if hasattr(owner, "config") and not any(True for _ in owner.parameters()):
        # a table built from the config (rotary inverse frequencies): build the module again, on the CPU
        try:
            fresh = type(owner)(owner.config)
            buf.copy_(getattr(fresh, attr))
            return
        except Exception:
            pass
    if attr in ("position_ids",):
        buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    elif buf.is_floating_point():
        buf.zero_()
    else:
        buf.zero_()


def from_callable(spec: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """`module:callable` returning `(model, inputs)` (inputs a dict of keyword tensors), optionally with a config."""
    mod_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ImportFailure(f"cannot load {spec!r}: {exc}") from None
    got = fn()
    model, inputs = got[0], got[1]
    config = got[2] if len(got) > 2 else getattr(getattr(model, "config", None), "to_dict", dict)()
    return model.eval(), dict(inputs), dict(config)


def capture(model: nn.Module, inputs: dict[str, torch.Tensor], config: dict[str, Any]) -> Captured:
    """Export the model at the example inputs and record every node's value (for recognising constant tables)."""
    kwargs: dict[str, Any] = dict(inputs)
    if _takes(model, "use_cache"):
        kwargs.setdefault("use_cache", False)
    with helpers_as_calls(model):      # nnspec's generated MoE dispatch as one call export can capture
        try:
            program = torch.export.export(model, (), kwargs, strict=False)
        except Exception as exc:  # export's own message names the Python line it could not trace
            raise ImportFailure(f"torch.export could not capture the model: {type(exc).__name__}: {exc}") from None
        cap = Captured(model=model, program=program, inputs=inputs, config=config)
        cap.values = _evaluate(program, kwargs)
    return cap


def _takes(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _evaluate(program: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run the exported graph once, keeping every node's value."""
    gm = program.graph_module
    sig = program.graph_signature
    state = program.state_dict
    consts = program.constants
    args = []
    for spec in sig.input_specs:
        target = spec.target
        if target in state:
            args.append(state[target])
        elif target is not None and target in consts:
            args.append(consts[target])
        else:
            args.append(kwargs.get(spec.arg.name))
    values: dict[str, Any] = {}

    class _Keep(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            values[n.name] = out
            return out

    with torch.no_grad():
        _Keep(gm).run(*args)
    return values
