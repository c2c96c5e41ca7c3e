"""Tensor parallelism from the derived plan (`nnspec.compiler.tp_plan`) with DTensor's `parallelize_module`.

Each rule becomes a `ColwiseParallel` / `RowwiseParallel` on every iteration of the repeat; a fused q/k/v
projection (`(3 n_head head_dim)`) is colwise with a `_StridedShard` placement, so each rank holds its heads of q,
of k and of v. The module's head counts are then made local (`model.localize`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module
from torch.distributed.tensor.placement_types import _StridedShard

from nnspec.compiler.tp_plan import TPPlan, derive_tp_plan
from nnspec.distributed.model import localize, spec_model


class StridedColwiseParallel(ColwiseParallel):
    """Colwise over an output axis written `(k, heads, ...)`: each of the k chunks is split across the ranks."""

    def __init__(self, stride: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stride = stride

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        for pname, param in module.named_parameters():
            placement = _StridedShard(0, split_factor=self.stride)
            module.register_parameter(pname, nn.Parameter(distribute_tensor(param, device_mesh, [placement],
                                                                            src_data_rank=self.src_data_rank)))

    @staticmethod
    def _prepare_output_fn(output_layouts: Any, use_local_output: bool, mod: nn.Module, outputs: Any,
                           device_mesh: DeviceMesh) -> Any:
        """Keep the strided layout the product has: redistributing it to a plain `Shard(-1)` would regroup the
        features into contiguous q|k|v slices, which is not what the next view expects."""
        if outputs.placements != (_StridedShard(outputs.ndim - 1, split_factor=mod.weight.placements[0].split_factor),):
            raise RuntimeError(f"strided colwise product came out as {outputs.placements}")
        return outputs.to_local() if use_local_output else outputs


def styles(plan: TPPlan, counts: dict[str, int]) -> dict[str, ParallelStyle]:
    """The plan as `parallelize_module`'s dict, one entry per iteration (`layers.3.self_attn.q_proj`); `counts` is
    each repeat's iteration count by its module path."""
    out: dict[str, ParallelStyle] = {}
    for rule in plan.styles():
        style: ParallelStyle = (StridedColwiseParallel(rule.stride) if rule.stride > 1 else ColwiseParallel()) \
            if rule.style == "colwise" else RowwiseParallel()
        scope = rule.path.split(".*.", 1)[0]
        for i in range(counts[scope]):
            out[rule.path.replace("*", str(i), 1)] = style
    return out


def apply_tp(model: nn.Module, mesh: DeviceMesh, plan: TPPlan | None = None) -> TPPlan:
    """Shard `model` over the 1-D `mesh` by its derived plan (or `plan`, which may be edited to override it).
    The plan's `sequence_parallel` rules are listed, not applied: the generated module's embedding and head would
    have to be sharded on the sequence too."""
    checked = spec_model(model)
    plan = plan or derive_tp_plan(checked, mesh.size())
    if plan.size != mesh.size():
        raise ValueError(f"the plan is for {plan.size} ranks, the mesh has {mesh.size()}")
    counts = {str(n.attrs["scope"]): int(n.attrs["count"]) for n in checked.graph if n.op == "repeat"}
    parallelize_module(model, mesh, styles(plan, counts))
    localize(model, plan.local_dims)
    return plan
