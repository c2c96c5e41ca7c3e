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
from nnspec.distributed.train import RunConfig, train_single

ROOT = Path(__file__).resolve().parent.parent
LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32)
GPT2 = dict(vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, tie_word_embeddings=False)
SPECS = {"llama": (ROOT / "examples" / "llama.yaml", LLAMA), "gpt2": (ROOT / "examples" / "gpt2.yaml", GPT2)}

# (spec, mode, world, extra config); the first of each family runs by default
CASES = [
    ("llama", "tp", 2, {}),
    ("gpt2", "fsdp", 2, {}),
    ("llama", "pp", 2, {"schedule": "gpipe"}),
    ("gpt2", "tp", 2, {}),
    ("llama", "fsdp", 2, {}),
    ("gpt2", "pp", 2, {"schedule": "1f1b"}),
    ("llama", "pp", 2, {"schedule": "1f1b"}),
    ("gpt2", "pp", 2, {"schedule": "gpipe"}),
    ("llama", "pp", 2, {"schedule": "interleaved", "microbatches": 4}),
    ("llama", "fsdp_tp", 4, {"tp": 2}),
    ("gpt2", "fsdp_tp", 4, {"tp": 2}),    # FSDP over a strided (fused q/k/v) TP shard
    ("llama", "pp_fsdp", 4, {"pp": 2}),
    ("llama", "fsdp", 4, {}),
    ("gpt2", "tp", 4, {}),
    ("llama", "fsdp_tp", 4, {"tp": 2, "checkpoint": True}),   # weights through a torch.distributed.checkpoint
]
DEFAULT = {0, 2}     # TP and PP in the default run; FSDP is covered by the same harness in the slow set


def _case(i: int) -> object:
    spec, mode, world, extra = CASES[i]
    marks = [] if i in DEFAULT else [pytest.mark.slow]
    if extra.get("schedule") == "interleaved":
        # the generated llama computes positions and masks before the layers; the traced split sends them from stage
        # 0 to every stage, and ScheduleInterleaved1F1B refuses non-adjacent sends (passed before the spec had them)
        marks.append(pytest.mark.xfail(strict=True, raises=Exception, reason="prologue tensors sent past one stage"))
    tag = f"-{extra['schedule']}" if "schedule" in extra else "-checkpoint" if "checkpoint" in extra else ""
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
