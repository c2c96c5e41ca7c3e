"""Tensor parallelism from the derived plan (`nnspec.compiler.tp_plan`) with DTensor's `parallelize_module`.

Each rule becomes a `ColwiseParallel` / `RowwiseParallel` on every iteration of the repeat; a fused q/k/v
projection (`(3 n_head head_dim)`) is colwise with a `_StridedShard` placement, so each rank holds its heads of q,
of k and of v. The token embedding is `RowwiseParallel` over the vocabulary (torch's embedding sharding: each rank
looks up its rows, the partial lookups are all-reduced) and the head `ColwiseParallel` with its logits gathered. With
sequence parallelism (torchtitan's Llama plan) the residual stream between blocks is each rank's slice of the
sequence: the embedding and the row-wise linears scatter onto it (`output_layouts=Shard(seq)`), the norms run
`SequenceParallel`, and the blocks they feed gather it back (`PrepareModuleInput`), as does the head. The module's
head counts are then made local (`model.localize`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard

from nnspec.compiler.tp_plan import Rule, TPPlan, derive_tp_plan
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


def style_of(rule: Rule, sequence_parallel: bool, seq: int) -> ParallelStyle:
    """One rule as a torch parallel style; with `sequence_parallel`, the layouts where the residual stream is split
    on the sequence dim `seq`."""
    on_seq = Shard(seq)
    seq_in = on_seq if sequence_parallel and rule.seq_in else Replicate()
    seq_out = on_seq if sequence_parallel and rule.seq_out else Replicate()
    if rule.style == "colwise":
        return StridedColwiseParallel(rule.stride, input_layouts=seq_in) if rule.stride > 1 \
            else ColwiseParallel(input_layouts=seq_in)
    if rule.style == "rowwise":
        return RowwiseParallel(output_layouts=seq_out)
    if rule.style == "embedding_rowwise":
        return RowwiseParallel(input_layouts=Replicate(), output_layouts=seq_out)
    if rule.style == "colwise_gather_output":
        return ColwiseParallel(input_layouts=seq_in, output_layouts=Replicate())
    if rule.style == "sequence_parallel":
        return SequenceParallel(sequence_dim=seq)
    if rule.style == "gather_input":
        return PrepareModuleInput(input_layouts=tuple(on_seq if i in rule.args else None for i in range(rule.arity)),
                                  desired_input_layouts=tuple(Replicate() if i in rule.args else None
                                                              for i in range(rule.arity)),
                                  use_local_output=True)
    raise ValueError(f"{rule.path}: no torch style for {rule.style!r}")


def styles(plan: TPPlan, counts: dict[str, int]) -> dict[str, ParallelStyle]:
    """The plan as `parallelize_module`'s dict, one entry per iteration (`layers.3.self_attn.q_proj`); `counts` is
    each repeat's iteration count by its module path."""
    out: dict[str, ParallelStyle] = {}
    for rule in plan.styles():
        style = style_of(rule, plan.sequence_parallel, plan.sequence_dim)
        if ".*." not in rule.path:
            out[rule.path] = style
            continue
        scope = rule.path.split(".*.", 1)[0]
        for i in range(counts[scope]):
            out[rule.path.replace("*", str(i), 1)] = style
    return out


def apply_tp(model: nn.Module, mesh: DeviceMesh, plan: TPPlan | None = None, *,
             sequence_parallel: bool = False) -> TPPlan:
    """Shard `model` over the 1-D `mesh` by its derived plan (or `plan`, which may be edited to override it), with
    sequence parallelism if asked (then the sequence length must be a multiple of the mesh size)."""
    checked = spec_model(model)
    plan = plan or derive_tp_plan(checked, mesh.size(), sequence_parallel=sequence_parallel)
    if plan.size != mesh.size():
        raise ValueError(f"the plan is for {plan.size} ranks, the mesh has {mesh.size()}")
    if sequence_parallel and not plan.sequence_parallel:
        raise ValueError("sequence_parallel=True with a plan derived without it: derive_tp_plan(..., "
                         "sequence_parallel=True)")
    counts = {str(n.attrs["scope"]): int(n.attrs["count"]) for n in checked.graph if n.op == "repeat"}
    parallelize_module(model, mesh, styles(plan, counts))
    localize(model, plan.local_dims)
    if plan.sequence_parallel:
        model.register_forward_pre_hook(_sequence_divides(plan))
    return plan


def _sequence_divides(plan: TPPlan) -> Any:
    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        first = args[0] if args else None
        if hasattr(first, "shape") and first.dim() > plan.sequence_dim:
            length = first.shape[plan.sequence_dim]
            if length % plan.size:
                raise ValueError(f"sequence parallelism over {plan.size} ranks splits the sequence evenly; got a "
                                 f"sequence of {length} (dim {plan.sequence_dim} of the first input)")
    return check
