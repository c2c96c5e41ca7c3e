"""Distributed training equals one process: three AdamW steps of a small GPT-2 and a small Llama in each mode
(FSDP2, tensor parallel, pipeline GPipe / 1F1B / interleaved, FSDP + TP) on spawned gloo processes give the losses
and the gathered final weights of one process running the same global batches from the same initial weights.

Tolerances (fp32): the distributed runs reorder reductions (gradient all-reduce / reduce-scatter, row-wise partial
sums, microbatch accumulation), which moves losses by a few ulps (rtol 1e-5). AdamW divides each update by
sqrt(v) + eps, so a weight whose gradient is near zero can move by up to lr x (relative gradient difference):
weights are compared at atol 2e-4 for lr = 1e-2 over three steps.

Spawned processes start slowly (each imports torch and compiles the spec): the default run keeps one test per mode
family; the rest are marked slow (`--runslow`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nnspec.distributed.launch import run_spawned
from nnspec.distributed.model import build_model
from nnspec.distributed.train import RunConfig, global_batch, loss_fn, train_single, vocab_of

ROOT = Path(__file__).resolve().parent.parent
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)
GPT2 = dict(vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, tie_word_embeddings=False)
SPECS = {"llama": (ROOT / "examples" / "llama.yaml", LLAMA), "gpt2": (ROOT / "examples" / "gpt2.yaml", GPT2)}

# (spec, mode, world, extra config); the first of each family runs by default
CASES = [
    ("llama", "tp", 2, {}),                               # embedding and head sharded on the vocabulary too
    ("llama", "tp", 2, {"sequence_parallel": True}),
    ("llama", "pp", 2, {"schedule": "interleaved", "microbatches": 4}),   # 4 stages: mask, positions forwarded
    ("gpt2", "fsdp", 2, {}),
    ("llama", "pp", 2, {"schedule": "gpipe"}),
    ("gpt2", "tp", 2, {}),
    ("llama", "fsdp", 2, {}),
    ("gpt2", "pp", 2, {"schedule": "1f1b"}),
    ("llama", "pp", 2, {"schedule": "1f1b"}),
    ("gpt2", "pp", 2, {"schedule": "gpipe"}),
    ("llama", "fsdp_tp", 4, {"tp": 2}),
    ("llama", "fsdp_tp", 4, {"tp": 2, "sequence_parallel": True}),
    ("gpt2", "fsdp_tp", 4, {"tp": 2}),    # FSDP over a strided (fused q/k/v) TP shard
    ("llama", "pp_fsdp", 4, {"pp": 2}),
    ("llama", "fsdp", 4, {}),
    ("gpt2", "tp", 4, {}),
    ("llama", "fsdp_tp", 4, {"tp": 2, "checkpoint": True}),   # weights through a torch.distributed.checkpoint
]
DEFAULT = {0, 1, 2}  # TP (with and without sequence parallelism) and PP (interleaved) in the default run; FSDP is
                     # covered by the same harness in the slow set


def _case(i: int) -> object:
    spec, mode, world, extra = CASES[i]
    marks = [] if i in DEFAULT else [pytest.mark.slow]
    tag = f"-{extra['schedule']}" if "schedule" in extra else "-checkpoint" if "checkpoint" in extra else ""
    tag += "-sp" if extra.get("sequence_parallel") else ""
    return pytest.param(i, id=f"{spec}-{mode}{tag}-w{world}", marks=marks)


@pytest.mark.parametrize("i", [_case(i) for i in range(len(CASES))])
def test_distributed_matches_one_process(i: int, tmp_path: Path) -> None:
    name, mode, world, extra = CASES[i]
    spec, dims = SPECS[name]
    if extra.get("checkpoint"):
        extra = {**extra, "checkpoint": str(tmp_path / "checkpoint")}
    cfg = RunConfig(spec=str(spec), mode=mode, dims=dims, steps=3, batch=4, seq=8, lr=1e-2, **extra)
    ref_losses, ref_state = train_single(cfg)
    losses, state = run_spawned(cfg, world, tmp_path / "run")
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    start = build_model(str(spec), seed=cfg.seed, **dims).state_dict()
    assert all((ref_state[k] - start[k]).abs().max() > 1e-3 for k in start)   # every weight trained
    assert set(state) == set(ref_state)          # the spec's parameter paths, unchanged
    for key, want in ref_state.items():
        torch.testing.assert_close(state[key], want, rtol=1e-4, atol=2e-4, msg=lambda m, k=key: f"{k}: {m}")


def _mixed_reference(cfg: RunConfig, parts: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process doing FSDP2's casts under `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`: fp32
    master weights; each step, every data-parallel rank's share of the batch runs forward and backward on a bf16 copy
    of the weights, the bf16 gradients are cast to fp32 and averaged over the shares, and AdamW updates the fp32
    master weights. Written with plain PyTorch (no nnspec.distributed code beyond building the model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as in each spawned rank: the same bf16 kernels, the same accumulation order
    try:
        master = build_model(cfg.spec, seed=cfg.seed, **cfg.dims)
        low = build_model(cfg.spec, seed=cfg.seed, **cfg.dims).to(torch.bfloat16)
        opt = torch.optim.AdamW(master.parameters(), lr=cfg.lr)
        vocab, losses = vocab_of(master), []
        for step in range(cfg.steps):
            ids, targets = global_batch(cfg, step, vocab)
            with torch.no_grad():
                for p, q in zip(master.parameters(), low.parameters(), strict=True):
                    q.copy_(p)
            grads = [torch.zeros_like(p) for p in master.parameters()]
            shares = []
            for part_ids, part_targets in zip(ids.chunk(parts), targets.chunk(parts), strict=True):
                low.zero_grad(set_to_none=True)
                loss = loss_fn(low(part_ids), part_targets)
                loss.backward()
                for g, q in zip(grads, low.parameters(), strict=True):
                    g += q.grad.float()
                shares.append(loss.item())
            for p, g in zip(master.parameters(), grads, strict=True):
                p.grad = g / parts
            opt.step()
            opt.zero_grad()
            losses.append(sum(shares) / parts)
        return losses, {k: v.detach().clone() for k, v in master.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_fsdp_mixed_precision_matches_a_one_process_bf16_reference(tmp_path: Path) -> None:
    """FSDP2 with bf16 compute and fp32 gradient reduction equals one process doing the same casts. Tolerances: the
    bf16 forward and backward are the same kernels on the same shapes (one thread each), so what differs is the fp32
    averaging of gradients and losses over ranks, as in the fp32 cases (losses rtol 1e-5, weights atol 2e-4 at
    lr 1e-2). The run also differs from a plain fp32 run by far more than that: the policy was applied."""
    spec, dims = SPECS["llama"]
    cfg = RunConfig(spec=str(spec), mode="fsdp", dims=dims, steps=3, batch=4, seq=8, lr=1e-2, mixed="bf16")
    ref_losses, ref_state = _mixed_reference(cfg, parts=2)
    losses, state = run_spawned(cfg, 2, tmp_path / "run")
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    assert set(state) == set(ref_state) and all(t.dtype == torch.float32 for t in state.values())
    for key, want in ref_state.items():
        torch.testing.assert_close(state[key], want, rtol=1e-4, atol=2e-4, msg=lambda m, k=key: f"{k}: {m}")
    fp32_losses, fp32_state = train_single(cfg)
    assert max(abs(a - b) for a, b in zip(losses, fp32_losses, strict=True)) > 1e-4
    assert max((fp32_state[k] - state[k]).abs().max().item() for k in state) > 1e-3
