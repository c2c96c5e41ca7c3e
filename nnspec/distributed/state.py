"""Saving and loading a sharded model: gathered full state dicts, and the distributed checkpoint API."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor


def full_state_dict(model: nn.Module | list[nn.Module], *, pipeline: bool = False) -> dict[str, torch.Tensor]:
    """Every parameter at full size under its spec path, on every rank (collective: all ranks call it).
    FSDP and tensor-parallel DTensors are gathered; with `pipeline`, each rank's stage modules are merged."""
    modules = model if isinstance(model, list) else [model]
    options = StateDictOptions(full_state_dict=True, cpu_offload=False)
    own: dict[str, torch.Tensor] = {}
    for m in modules:
        if any(isinstance(sub, FSDPModule) for sub in m.modules()):
            own.update(_unsharded(m))
        else:
            own.update({k: v.detach().clone() for k, v in get_model_state_dict(m, options=options).items()})
    if not pipeline:
        return own
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, own)
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        out.update(part)
    return out


def _unsharded(model: nn.Module) -> dict[str, torch.Tensor]:
    """FSDP alone: each sharded parameter gathered. FSDP + TP: FSDP's own all-gather, then the tensor-parallel
    DTensors gathered on their (1-D) mesh (in the policy's compute dtype under mixed precision). Gathering the 2-D
    (dp, tp) placement in one redistribution is wrong for a strided TP shard (FSDP2 nests its `_StridedShard` over
    ours: the fused q/k/v of GPT-2 came back permuted), so the two gathers are done one after the other."""
    if all(t.device_mesh.ndim == 1 for t in model.parameters() if isinstance(t, DTensor)):
        # FSDP alone: gather the sharded (master, full-precision) parameters; unsharding would hand back the
        # mixed-precision policy's compute dtype
        return {name: (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()
                for name, t in [*model.named_parameters(), *model.named_buffers()]}
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        out = {}
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            full = t.full_tensor() if isinstance(t, DTensor) else t
            out[name] = full.detach().clone()
    finally:
        for unit in units:
            unit.reshard()
    return out


def save_checkpoint(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Write the sharded state dict with torch.distributed.checkpoint (each rank its shards; collective)."""
    dcp.save(get_model_state_dict(model), checkpoint_id=os.fspath(directory))


def load_checkpoint(model: nn.Module, directory: str | os.PathLike[str]) -> None:
    """Read a checkpoint written by `save_checkpoint`, resharding to this model's layout (collective)."""
    state = get_model_state_dict(model)
    dcp.load(state, checkpoint_id=os.fspath(directory))
    set_model_state_dict(model, state)
