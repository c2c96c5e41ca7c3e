"""`save_pretrained(model, DIR)`: a generated module as a Hugging Face model directory.

`config.json` (`hf_config.hf_config`: the spec's `hf_config` mapping with the bound dims and options) and the
weights under the spec's `weights: hf:` names (`nnspec.save_weights`), as `model.safetensors`, or above
`max_shard_size` as `model-0000i-of-0000n.safetensors` shards with the `model.safetensors.index.json` that
`from_pretrained` reads. Every file is written beside the directory first and the directory appears whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nnspec.compiler.check import CheckResult
from nnspec.compiler.elaborate import UsageError
from nnspec.export.hf_config import hf_config

DEFAULT_SHARD = "5GB"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """Bytes from `5GB`, `200MiB`, `1000` (Hugging Face's `max_shard_size` spellings)."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(size), re.IGNORECASE)
        if m is None:
            raise UsageError(f"shard size {size!r} is not a size like 5GB, 200MiB or 1000000")
        value = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if value <= 0:
        raise UsageError(f"shard size must be positive, got {size!r}")
    return value


def _shards(tensors: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Tensors in order, a new shard whenever the next would pass `limit` (a tensor larger than it alone)."""
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    return shards


def save_pretrained(model: Any, directory: str | os.PathLike[str], result: CheckResult | None = None, *,
                    max_shard_size: int | str = DEFAULT_SHARD) -> list[Path]:
    """Write `model` (an `nnspec.build` module, or any generated module with `result`, the check result of its
    spec) as a Hugging Face directory; returns the files written. An existing directory's config, weights and
    index are replaced together; other files in it are kept."""
    from safetensors.torch import save_file

    from nnspec.backends.torch.weights import save_weights

    result = result if result is not None else getattr(model, "spec_result", None)
    if result is None:
        raise UsageError("save_pretrained needs the spec's check result for a module not made by nnspec.build "
                         "(pass result=nnspec.check(spec, ...))")
    if "hf" not in getattr(model, "weight_maps", {}):
        raise UsageError(f"spec {result.spec.name} has no `weights: hf:` mapping: its Hugging Face names are unknown")
    config = hf_config(result)
    config.setdefault("dtype", _dtype_name(model))
    tensors = save_weights(model, target="hf")
    shards = _shards(tensors, parse_size(max_shard_size))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".nnspec-export-", dir=out))
    try:
        names = ["model.safetensors"] if len(shards) == 1 else \
            [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        for name, shard in zip(names, shards, strict=True):
            save_file(shard, str(staging / name), metadata={"format": "pt"})
        files = list(names)
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                     "weight_map": {k: name for name, shard in zip(names, shards, strict=True) for k in shard}}
            (staging / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
            files.append("model.safetensors.index.json")
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        files.append("config.json")
        # stale weights of an earlier export (another shard count) would confuse from_pretrained
        for old in out.glob("model*.safetensors*"):
            if old.name not in files:
                old.unlink()
        for name in files:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in files]


def _dtype_name(model: Any) -> str:
    for p in model.parameters():
        if p.is_floating_point():
            return str(p.dtype).removeprefix("torch.")
    return "float32"
