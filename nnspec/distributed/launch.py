"""Running a distributed training run in spawned local processes (gloo on CPU): what the tests and a quick local try
use instead of `torchrun`. The rendezvous is a file in `workdir`, so concurrent runs never share a port."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnspec.distributed.train import RunConfig, train_distributed


def _worker(rank: int, world: int, workdir: str, cfg: RunConfig) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{workdir}/store", rank=rank, world_size=world)
    try:
        losses, state = train_distributed(cfg)
        if rank == 0:
            tmp = Path(workdir) / "result.pt.tmp"
            torch.save({"losses": losses, "state": state}, tmp)
            os.replace(tmp, Path(workdir) / "result.pt")
    finally:
        dist.destroy_process_group()


def run_spawned(cfg: RunConfig, world: int, workdir: str | os.PathLike[str]) -> tuple[list[float], dict]:
    """`cfg` on `world` spawned processes; returns rank 0's losses and gathered weights."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mp.start_processes(_worker, args=(world, str(workdir), cfg), nprocs=world, join=True, start_method="spawn")
    result = torch.load(workdir / "result.pt")
    return result["losses"], result["state"]
