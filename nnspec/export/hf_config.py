"""The Hugging Face `config.json` of a checked spec: the inverse of `nnspec.compiler.hf_config.map_config`.

Spec dims and options use Hugging Face key names, so the config is: every dim the spec states as a number (a dim
given by a formula, like `head_dim: hidden_size / num_attention_heads`, is left for Hugging Face to derive the
same way), every option under its `hf: key` (a dotted key such as `rope_parameters.rope_theta` nests), its value
mapped back through `hf: values`, every `hf_config.require` key at the value the spec requires, and the keys of
`hf_config.export` as written (`model_type` and `architectures`, which choose the Hugging Face class).
Torch-free: `save_pretrained` writes the result beside the weights.
"""

from __future__ import annotations

from typing import Any

import yaml

from nnspec.compiler.check import CheckResult
from nnspec.compiler.elaborate import UsageError


def export_keys(result: CheckResult) -> dict[str, Any]:
    """The spec's `hf_config.export` mapping (keys written into config.json as they are)."""
    doc = yaml.safe_load(result.spec.source.text) or {}
    section = (doc.get("hf_config") or {}).get("export") or {}
    return dict(section)


def hf_config(result: CheckResult) -> dict[str, Any]:
    """config.json for the model `result` checked, with its bound dims and options."""
    spec, model = result.spec, result.model
    config: dict[str, Any] = {}
    for key, value in export_keys(result).items():
        _put(config, key, value)
    for key, (value, _) in spec.hf_require.items():
        _put(config, key, value)
    for name, decl in spec.dims.items():
        sym = model.dims.lookup(name)
        bound = model.dims.value(sym) if sym is not None else None
        if bound is None:
            continue
        if isinstance(decl.value, int):
            _put(config, name, bound)
    for name, opt in spec.options.items():
        value = model.options.get(name, opt.default)
        if opt.hf_values is not None:
            back = [k for k, v in opt.hf_values.items() if v == value]
            if not back:
                raise UsageError(f"option {name}={value!r} has no Hugging Face value (hf: values maps "
                                 f"{', '.join(map(repr, opt.hf_values))})")
            value = back[0]
        _put(config, opt.hf_key or name, value)
    if "model_type" not in config:
        raise UsageError(f"spec {spec.name} does not name its Hugging Face model: add `hf_config: export: "
                         "{model_type: ..., architectures: [...]}` (e.g. model_type: llama, architectures: "
                         "[LlamaForCausalLM])")
    return config


def _put(config: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted key, making the mappings (or, for a numeric part, the list) on the way."""
    *parents, last = path.split(".")
    node: Any = config
    for i, part in enumerate(parents):
        nxt: Any = [] if (parents + [last])[i + 1].isdigit() else {}
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append(None)
            if node[idx] is None:
                node[idx] = nxt
            node = node[idx]
        else:
            node = node.setdefault(part, nxt)
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append(None)
        node[idx] = value
    else:
        node[last] = value
