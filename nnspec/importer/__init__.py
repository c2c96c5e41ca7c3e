"""`nnspec import`: an existing PyTorch / Hugging Face model written back as a readable spec.

capture (torch.export at example inputs) -> lift (aten nodes -> named-axis values; leaf modules, static tables and
patterns recognised and checked on the captured values) -> render (blocks per module, `repeat` over identical
layers) -> the spec text, with dims named after the config, an `hf_config` section and a `weights: hf:` mapping.
Anything that cannot be lifted raises `ImportFailure` naming the aten op and module path; no spec is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nnspec.importer.errors import ImportFailure

__all__ = ["ImportFailure", "Imported", "import_model", "import_module", "write_spec"]


@dataclass
class Imported:
    text: str                      # the spec
    model: Any                     # the captured nn.Module (with the weights the spec's mapping loads)
    inputs: dict[str, Any]         # the example inputs it was traced at


def import_model(source: str | os.PathLike[str], *, name: str | None = None) -> Imported:
    """Import a Hugging Face config.json (path) or a `module:callable` returning `(model, inputs[, config])`."""
    from nnspec.importer import capture

    text = str(source)
    if text.endswith(".json") or Path(text).is_file():
        model, inputs, config = capture.from_config(text)
    elif ":" in text:
        model, inputs, config = capture.from_callable(text)
    else:
        raise ImportFailure(f"{text!r} is neither a config.json file nor a module:callable")
    return import_module(model, inputs, config, name=name)


def import_module(model: Any, inputs: dict[str, Any], config: dict[str, Any] | None = None, *,
                  name: str | None = None) -> Imported:
    import sys

    from nnspec.importer import capture
    from nnspec.importer.assemble import assemble

    config = dict(config or {})
    cap = capture.capture(model, inputs, config)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20000))
    try:
        text = assemble(cap, name=name or _model_name(model, config))
    finally:
        sys.setrecursionlimit(old)
    return Imported(text=text, model=model, inputs=inputs)


def _model_name(model: Any, config: dict[str, Any]) -> str:
    raw = str(config.get("model_type") or type(model).__name__).lower()
    return re.sub(r"[^a-z0-9_]", "_", raw) or "model"


def write_spec(text: str, path: str | os.PathLike[str]) -> Path:
    from nnspec.atomic import write_atomic

    target = Path(path)
    write_atomic(target, text.encode())
    return target
