"""Running a spec across processes on PyTorch's own engines (the `torch` extra): FSDP2 (`fully_shard`), DTensor
tensor parallelism (`parallelize_module`) and `torch.distributed.pipelining`, with plans derived from the spec
(`nnspec.compiler.tp_plan`, `nnspec.compiler.stage_split`). See docs/distributed.md."""

from nnspec.compiler.stage_split import StagePlan, split_stages
from nnspec.compiler.tp_plan import PlanError, TPPlan, derive_tp_plan
from nnspec.distributed.fsdp import apply_fsdp, mixed_precision
from nnspec.distributed.model import build_model, localize
from nnspec.distributed.pipeline_parallel import SCHEDULES, PipelineRun, build_pipeline
from nnspec.distributed.state import full_state_dict, load_checkpoint, save_checkpoint
from nnspec.distributed.tensor_parallel import apply_tp

__all__ = ["SCHEDULES", "PipelineRun", "PlanError", "StagePlan", "TPPlan", "apply_fsdp", "apply_tp", "build_model",
           "build_pipeline", "derive_tp_plan", "full_state_dict", "load_checkpoint", "localize", "mixed_precision",
           "save_checkpoint", "split_stages"]
