"""A short AdamW training run of a spec in one of the distributed modes, and the same run in one process.

Every mode sees the same global batches (drawn from a seeded generator) and starts from the same weights (built
from one seed), so a distributed run and `train_single` must give the same losses and final weights up to the
reordering of floating-point reductions. Used by examples/distributed/train.py and the tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from nnspec.distributed.fsdp import apply_fsdp, mixed_precision
from nnspec.distributed.model import build_model, spec_model
from nnspec.distributed.pipeline_parallel import build_pipeline
from nnspec.distributed.state import full_state_dict, load_checkpoint, save_checkpoint
from nnspec.distributed.tensor_parallel import apply_tp

MODES = ("fsdp", "tp", "fsdp_tp", "pp", "pp_fsdp")


@dataclass
class RunConfig:
    spec: str
    mode: str = "fsdp"
    dims: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 3
    batch: int = 4            # global batch (sequences per step)
    seq: int = 8
    lr: float = 1e-2
    seed: int = 0
    tp: int = 1               # tensor-parallel size (fsdp_tp); the rest of the world is data parallel
    pp: int = 1               # pipeline size (pp_fsdp); the rest is data parallel
    schedule: str = "1f1b"
    microbatches: int = 2
    mixed: str | None = None  # FSDP mixed precision: compute dtype (bf16, fp16); gradients reduced in fp32
    sequence_parallel: bool = False   # with tp: the residual stream split on the sequence between blocks
    # save the trained model with torch.distributed.checkpoint here, load it into a freshly built (differently
    # initialised) sharded model, and return that model's weights: a round trip through the sharded checkpoint
    checkpoint: str | None = None


def global_batch(cfg: RunConfig, step: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(cfg.seed * 1000 + step)
    ids = torch.randint(0, vocab, (cfg.batch, cfg.seq + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def vocab_of(model: torch.nn.Module) -> int:
    checked = spec_model(model)
    out = checked.graph[next(iter(checked.outputs.values()))]
    return int(checked.dims.value(out.tensor_type.sizes[-1]))


def train_single(cfg: RunConfig) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The reference: one process, the whole global batch per step."""
    model = build_model(cfg.spec, seed=cfg.seed, **cfg.dims)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    vocab, losses = vocab_of(model), []
    for step in range(cfg.steps):
        ids, targets = global_batch(cfg, step, vocab)
        loss = loss_fn(model(ids), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def mesh_for(cfg: RunConfig, world: int, device: str = "cpu") -> DeviceMesh:
    """The mode's device mesh: 1-D for fsdp/tp/pp, (dp, tp) or (pp, dp) for the compositions."""
    if cfg.mode == "fsdp_tp":
        return init_device_mesh(device, (world // cfg.tp, cfg.tp), mesh_dim_names=("dp", "tp"))
    if cfg.mode == "pp_fsdp":
        return init_device_mesh(device, (cfg.pp, world // cfg.pp), mesh_dim_names=("pp", "dp"))
    return init_device_mesh(device, (world,), mesh_dim_names=({"fsdp": "dp", "tp": "tp"}.get(cfg.mode, "pp"),))


def train_distributed(cfg: RunConfig, device: str = "cpu") -> tuple[list[float], dict[str, torch.Tensor]]:
    """This rank's part of the run (the process group is already initialised). Returns the global losses and the
    gathered final weights, the same on every rank."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode takes {', '.join(MODES)}, got {cfg.mode!r}")
    world = dist.get_world_size()
    mesh = mesh_for(cfg, world, device)
    model = build_model(cfg.spec, seed=cfg.seed, **cfg.dims)
    vocab = vocab_of(model)
    if cfg.mode.startswith("pp"):
        if cfg.checkpoint:
            raise ValueError("the checkpoint round trip is for the fsdp and tp modes")
        return _train_pipeline(cfg, model, mesh, vocab)
    dp = _shard(cfg, model, mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    parts, part = (dp.size(), dp.get_local_rank()) if dp is not None else (1, 0)
    losses = []
    for step in range(cfg.steps):
        ids, targets = (t.chunk(parts)[part] for t in global_batch(cfg, step, vocab))
        loss = loss_fn(model(ids), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)                          # every rank of a data-parallel slice holds the same loss
        losses.append(total.item() / (world // parts) / parts)
    if cfg.checkpoint:
        save_checkpoint(model, cfg.checkpoint)
        model = build_model(cfg.spec, seed=cfg.seed + 1, **cfg.dims)
        _shard(cfg, model, mesh)
        load_checkpoint(model, cfg.checkpoint)
    return losses, full_state_dict(model)


def _shard(cfg: RunConfig, model: torch.nn.Module, mesh: DeviceMesh) -> DeviceMesh | None:
    """TP then FSDP as the mode says; returns the data-parallel mesh, if any."""
    if "tp" in cfg.mode:
        apply_tp(model, mesh["tp"], sequence_parallel=cfg.sequence_parallel)
    dp = mesh["dp"] if "dp" in (mesh.mesh_dim_names or ()) else None
    if dp is not None:
        apply_fsdp(model, dp, mp_policy=mixed_precision(cfg.mixed, "fp32") if cfg.mixed else None)
    return dp


def _train_pipeline(cfg: RunConfig, model: torch.nn.Module, mesh: DeviceMesh,
                    vocab: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    dp = mesh["dp"] if cfg.mode == "pp_fsdp" else None
    parts, part = (dp.size(), dp.get_local_rank()) if dp is not None else (1, 0)
    local = cfg.batch // parts
    example = torch.zeros(local // cfg.microbatches, cfg.seq, dtype=torch.int64)
    pp = mesh["pp"]
    run = build_pipeline(model, example, microbatches=cfg.microbatches, schedule=cfg.schedule, loss_fn=loss_fn,
                         group=pp.get_group(),
                         shard=(lambda m: apply_fsdp_root(m, dp)) if dp is not None else None)
    params = [p for m in run.modules for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    losses = []
    for step in range(cfg.steps):
        ids, targets = (t.chunk(parts)[part] for t in global_batch(cfg, step, vocab))
        mb_losses: list[torch.Tensor] = []
        if run.is_first:
            run.schedule.step(ids, target=targets if run.is_last else None, losses=mb_losses)
        elif run.is_last:
            run.schedule.step(target=targets, losses=mb_losses)
        else:
            run.schedule.step()
        opt.step()
        opt.zero_grad()
        total = torch.stack(mb_losses).mean().detach() if run.is_last else torch.zeros(())
        dist.all_reduce(total)                          # only the last stage of each replica contributes
        losses.append(total.item() / parts)
    return losses, full_state_dict(run.modules, pipeline=True)


def apply_fsdp_root(module: torch.nn.Module, mesh: DeviceMesh) -> None:
    """FSDP over a traced stage module: one unit (its layers are inlined into the stage's graph, so per-layer
    units would never see their forward)."""
    from torch.distributed.fsdp import fully_shard

    fully_shard(module, mesh=mesh)
