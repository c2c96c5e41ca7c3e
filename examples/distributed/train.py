"""Train a spec for a few steps across processes with PyTorch's own engines (FSDP2, tensor and pipeline parallel).

    torchrun --nproc-per-node 2 examples/distributed/train.py examples/llama.yaml --mode fsdp \
        --set num_hidden_layers=4 --set hidden_size=64 --set intermediate_size=128 --set vocab_size=256
    torchrun --nproc-per-node 4 examples/distributed/train.py examples/llama.yaml --mode fsdp_tp --tp 2 ...
    torchrun --nproc-per-node 2 examples/distributed/train.py examples/llama.yaml --mode pp --schedule 1f1b ...

Modes: fsdp (every rank a data-parallel shard), tp (the derived tensor-parallel plan), fsdp_tp (a (dp, tp) mesh),
pp (stages balanced by the cost model; --schedule gpipe | 1f1b | interleaved), pp_fsdp (a (pp, dp) mesh). The batches
are synthetic (seeded random tokens); swap `global_batch` for your data loader. On GPUs (NCCL) pass --device cuda.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

from nnspec.cli import parse_sets
from nnspec.distributed.train import MODES, RunConfig, train_distributed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec")
    p.add_argument("--mode", choices=MODES, default="fsdp")
    p.add_argument("--tp", type=int, default=2, help="tensor-parallel size of fsdp_tp's mesh")
    p.add_argument("--pp", type=int, default=2, help="pipeline size of pp_fsdp's mesh")
    p.add_argument("--schedule", choices=("gpipe", "1f1b", "interleaved"), default="1f1b")
    p.add_argument("--microbatches", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="global batch, split over the data-parallel ranks")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mixed", choices=("bf16", "fp16"), default=None,
                   help="FSDP compute dtype (gradients reduced in fp32)")
    p.add_argument("--sequence-parallel", action="store_true",
                   help="tp / fsdp_tp: keep the residual stream split on the sequence between blocks")
    p.add_argument("--set", dest="sets", action="append", default=[], help="override a dim/option: name=value")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl)")
    args = p.parse_args()

    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    cfg = RunConfig(spec=args.spec, mode=args.mode, dims=parse_sets(args.sets), steps=args.steps, batch=args.batch,
                    seq=args.seq, lr=args.lr, tp=args.tp, pp=args.pp, schedule=args.schedule,
                    microbatches=args.microbatches, mixed=args.mixed, sequence_parallel=args.sequence_parallel)
    try:
        losses, state = train_distributed(cfg, device=args.device)
        if dist.get_rank() == 0:
            for step, loss in enumerate(losses):
                print(f"step {step}: loss {loss:.4f}")
            print(f"{len(state)} tensors, {sum(t.numel() for t in state.values()):,} parameters gathered")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
