"""FSDP2 (`torch.distributed.fsdp.fully_shard`) over a spec's module: each repeat iteration is one unit, then the root.

Parameter names and the state dict keep the spec's paths (FSDP2 swaps parameters for DTensors in place); a full
state dict is gathered with `nnspec.distributed.state.full_state_dict`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from nnspec.distributed.model import spec_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def mixed_precision(param: str | None = None, reduce: str | None = None) -> MixedPrecisionPolicy:
    """`mixed_precision("bf16", "fp32")`: compute in bf16, reduce gradients in fp32 (names from `DTYPES`)."""
    for name in (param, reduce):
        if name is not None and name not in DTYPES:
            raise ValueError(f"mixed precision takes {', '.join(DTYPES)}, got {name!r}")
    return MixedPrecisionPolicy(param_dtype=DTYPES[param] if param else None,
                                reduce_dtype=DTYPES[reduce] if reduce else None)


def repeat_units(model: nn.Module) -> list[str]:
    """The module path of every repeat iteration (`layers.0`, `layers.1`, ...): FSDP's units."""
    checked = spec_model(model)
    return [f"{n.attrs['scope']}.{i}" for n in checked.graph if n.op == "repeat" and not n.attrs.get("shared")
            for i in range(int(n.attrs["count"]))]


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, *, mp_policy: MixedPrecisionPolicy | None = None,
               reshard_after_forward: bool = True) -> list[str]:
    """Shard each repeat iteration, then the root, over the data-parallel `mesh`. Returns the units' paths."""
    policy = mp_policy or MixedPrecisionPolicy()
    units = repeat_units(model)
    for path in units:
        fully_shard(model.get_submodule(path), mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return units
