"""Where each parameter of a transformed model comes from, as plain data (paths, shapes, inits), so the compiler
stays torch-free: `nnspec.backends.torch.transform_params` applies these descriptions to tensors.

Slicing's description is `slicegpt.plan` (per writer, reader and norm, its parameter paths); merging adapters'
is `lora.plan_merge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nnspec.compiler.ir import DType, Model
from nnspec.compiler.transforms.rewrite import instances, param_nodes


@dataclass(frozen=True)
class ParamSpec:
    """One parameter of a model: its full path, dtype, concrete shape and the init its spec declares (e.g.
    `("normal", std)`, `("zeros",)`, `("ones",)`), for a parameter a transform made that has no weights yet."""

    path: str
    dtype: DType
    shape: tuple[int, ...]
    init: tuple[Any, ...]


def param_specs(model: Model) -> list[ParamSpec]:
    """Every parameter instance of `model`, in definition order."""
    return [ParamSpec(path, node.attrs["type"].dtype,
                      tuple(int(model.dims.concrete(s)) for s in node.attrs["type"].sizes), node.attrs["init"])
            for path, node in param_nodes(model)]


def share_sources(model: Model) -> dict[str, str]:
    """For a model `share` made: each shared parameter's path -> the path whose weights it starts from (group g
    of a repeat takes its first iteration's, g * count/groups, so the shared model starts as the original's
    first iteration of each group)."""
    counts = {}
    for prefix, g in instances(model):
        for node in g:
            if node.op == "repeat" and "groups" in node.attrs:
                counts[prefix + node.attrs["scope"]] = node.attrs["count"] // node.attrs["groups"]
    sources: dict[str, str] = {}
    for path, _ in param_nodes(model):
        for rep, per in counts.items():
            head = f"{rep}."
            if path.startswith(head):
                group, _, rest = path[len(head):].partition(".")
                sources[path] = f"{head}{int(group) * per}.{rest}"
    return sources
