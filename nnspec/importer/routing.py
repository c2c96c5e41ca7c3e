"""Which modules are routed mixtures of experts the importer lifts as one `moe` call (see `moe.py`): asked by the
lifter to know its leaf modules, so it depends on nothing else of the importer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Routed:
    """The parameters of one routed MoE: its router's module path and the experts module's path."""

    router: str            # module path of the router (its `weight` is [E, H])
    experts: str           # module path holding gate_up_proj and down_proj


def routed(modules: dict[str, nn.Module], path: str) -> Routed | None:
    """The routed MoE computed by the module at `path`, if it is one the importer lifts as a whole."""
    mod = modules.get(path)
    if mod is None or not path:
        return None
    names = {name for name, _ in mod.named_children()}
    if type(mod).__name__.endswith("SparseMoeBlock") and names <= {"gate", "experts"} and _experts(mod, "experts"):
        return Routed(f"{path}.gate", f"{path}.experts")
    parent_path, _, attr = path.rpartition(".")
    parent = modules.get(parent_path)
    if attr == "experts" and parent is not None and type(parent).__name__.endswith("SparseMoeBlock") \
            and _experts(parent, "experts") and isinstance(getattr(getattr(parent, "gate", None), "weight", None),
                                                           torch.Tensor):
        return Routed(f"{parent_path}.gate", path)
    return None


def _experts(owner: nn.Module, attr: str) -> bool:
    experts = getattr(owner, attr, None)
    return all(isinstance(getattr(experts, p, None), torch.Tensor) and getattr(experts, p).dim() == 3
               for p in ("gate_up_proj", "down_proj"))
