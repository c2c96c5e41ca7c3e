"""Pipeline parallelism with `torch.distributed.pipelining`, stages split where the cost model balances them.

`nnspec.compiler.stage_split` picks the split points (`layers.6`, ...); PyTorch's tracing frontend (`pipeline`)
cuts the generated module there, keeping every parameter's spec path (`layers.7.mlp.up_proj.weight`) in the stage
modules, with the embedding on the first stage and the head on the last. Schedules: GPipe, 1F1B and interleaved
1F1B (several stages per rank, assigned round-robin: rank r holds stages r, r + pp, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import fx, nn
from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B, SplitPoint, pipeline
from torch.distributed.pipelining.schedules import _PipelineSchedule
from torch.distributed.pipelining.stage import _PipelineStageBase

from nnspec.compiler.stage_split import StagePlan, split_stages
from nnspec.compiler.tp_plan import PlanError
from nnspec.distributed.model import spec_model
from nnspec.distributed.stage_links import forward_through_stages

SCHEDULES: dict[str, type[_PipelineSchedule]] = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B,
                                                 "interleaved": ScheduleInterleaved1F1B}


@dataclass
class PipelineRun:
    schedule: _PipelineSchedule
    stages: list[_PipelineStageBase]
    modules: list[nn.Module]      # this rank's stage modules, parameters under their spec paths
    plan: StagePlan
    is_first: bool
    is_last: bool


def build_pipeline(model: nn.Module, microbatch: torch.Tensor, *, microbatches: int, schedule: str = "1f1b",
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   group: dist.ProcessGroup | None = None, stages_per_rank: int | None = None, by: str = "flops",
                   shard: Callable[[nn.Module], None] | None = None) -> PipelineRun:
    """Split `model` into stages over the ranks of `group` and build `schedule` over them. `microbatch` is an example
    input of one microbatch's shape; `shard` (e.g. FSDP over a data-parallel mesh) is applied to each stage module."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule takes {', '.join(SCHEDULES)}, got {schedule!r}")
    interleaved = schedule == "interleaved"
    per_rank = stages_per_rank or (2 if interleaved else 1)
    if per_rank > 1 and not interleaved:
        raise ValueError(f"{schedule} runs one stage per rank; use 'interleaved' for {per_rank}")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if microbatches < 1 or (interleaved and microbatches % size):
        raise ValueError(f"{microbatches} microbatches: the interleaved schedule needs a multiple of the "
                         f"{size} pipeline ranks")
    plan = split_stages(spec_model(model), size * per_rank, by=by, batch=microbatch.shape[0],
                        seq=microbatch.shape[-1])
    pipe = pipeline(model, mb_args=(microbatch,),
                    split_spec={p: SplitPoint.BEGINNING for p in plan.split_points()})
    forward_through_stages(pipe)      # every value crosses one boundary at a time (interleaved needs it)
    _contiguous_boundaries([pipe.get_stage_module(i) for i in range(pipe.num_stages)])
    if pipe.num_stages != len(plan.stages):
        raise PlanError(f"the traced model split into {pipe.num_stages} stages, not {len(plan.stages)}")
    device = microbatch.device
    indices = [rank + k * size for k in range(per_rank)]
    modules = [pipe.get_stage_module(i) for i in indices]
    if shard is not None:
        for m in modules:
            shard(m)
    stages = [pipe.build_stage(i, device, group) for i in indices]
    cls = SCHEDULES[schedule]
    run = cls(stages if interleaved else stages[0], microbatches, loss_fn=loss_fn)  # type: ignore[arg-type]
    return PipelineRun(run, stages, modules, plan, 0 in indices, len(plan.stages) - 1 in indices)


def _contiguous_boundaries(stages: list[nn.Module]) -> None:
    """Make every tensor crossing a stage boundary contiguous: the stages send and receive buffers with the traced
    strides, and gloo (like NCCL) moves only contiguous tensors, while a generated module may hand a transposed view
    (positions, masks) from the embedding stage to every layer."""
    for gm in stages:
        assert isinstance(gm, fx.GraphModule), f"the pipeline frontend made a {type(gm).__name__}"
        graph = gm.graph
        for node in graph.nodes:
            if node.op == "placeholder" and _strided(node):
                node.meta["val"] = _dense(node.meta["val"])
        output = next(n for n in graph.nodes if n.op == "output")

        def dense(arg: fx.Node, graph: fx.Graph = graph, output: fx.Node = output) -> fx.Node:
            if not _strided(arg):
                return arg
            with graph.inserting_before(output):
                made = graph.call_method("contiguous", (arg,))
            made.meta["val"] = _dense(arg.meta["val"])
            return made

        output.args = fx.node.map_arg(output.args, dense)
        gm.recompile()


def _strided(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and not val.is_contiguous()


def _dense(val: torch.Tensor) -> torch.Tensor:
    return torch.empty(val.shape, dtype=val.dtype, device="meta")
