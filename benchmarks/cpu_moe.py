"""CPU forward time of the two MoE example specs against their Hugging Face models (issue 17's MoE half).

    python benchmarks/cpu_moe.py [--threads 1] [--reps 7] [--batch 1] [--seq 256] [--family mixtral qwen2_moe]
                                 [--cpu-time] [--profile]

For each family a medium config (compute dominates: experts' matrix products of a few hundred rows each) is
written as config.json; the HF model (`MixtralForCausalLM` / `Qwen2MoeForCausalLM`, default attention, random
weights, never downloaded) and the spec's modules at -O0 and -O2 (`nnspec.build`, HF's weights loaded through the
spec's `weights: hf:` mapping) run the same token batch under `torch.inference_mode()`, fp32, after one warm-up
call each, `--reps` calls interleaved (HF, -O0, -O2, HF, ...). It prints each median and HF time / nnspec time,
checks the logits agree, and the load averages before and after (a loaded machine moves every figure).

`--cpu-time` times the calling thread's CPU time instead of the wall clock, at 1 thread: the work each model does,
which a loaded machine moves far less than wall time (it does not show how well 2 threads scale). `--profile`
prints, for HF and -O2, the top ops of one call by self CPU time, as shares of the call, and the time in the MoE
blocks' matrix products (`aten::mm`, `aten::_grouped_mm`, `aten::bmm`, `aten::addmm`, `aten::linear`'s GEMMs):
what a faster dispatch could not change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import nnspec

ROOT = Path(__file__).resolve().parent.parent
COMMON = dict(vocab_size=4096, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
              max_position_embeddings=4096)
FAMILIES: dict[str, tuple[str, Any, Any, dict[str, Any]]] = {
    "mixtral": ("mixtral.yaml", transformers.MixtralConfig, transformers.MixtralForCausalLM,
                dict(COMMON, intermediate_size=1024, num_local_experts=8, num_experts_per_tok=2)),
    "qwen2_moe": ("qwen2_moe.yaml", transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM,
                  dict(COMMON, intermediate_size=1024, moe_intermediate_size=256, shared_expert_intermediate_size=1024,
                       num_experts=16, num_experts_per_tok=4)),
}


def run(family: str, args: argparse.Namespace, tmp: Path) -> None:
    spec, config_cls, model_cls, kw = FAMILIES[family]
    config = config_cls(**kw)
    path = tmp / f"{family}.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = model_cls(config).eval()
    models = {"HF": lambda ids: hf(ids).logits}
    for opt in (0, 2):
        ours = nnspec.build(ROOT / "examples" / spec, config=path, opt=opt).eval()
        nnspec.load_weights(ours, hf.state_dict())
        models[f"-O{opt}"] = lambda ids, m=ours: m(input_ids=ids)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    times: dict[str, list[float]] = {name: [] for name in models}
    clock = time.thread_time if args.cpu_time else time.perf_counter
    with torch.inference_mode():
        want = models["HF"](ids)
        for f in models.values():
            torch.testing.assert_close(f(ids), want, atol=1e-4, rtol=1e-4)   # also the warm-up call
        for r in range(args.reps):
            names = list(models)
            for name in names[r % len(names):] + names[:r % len(names)]:   # order rotated each round
                start = clock()
                models[name](ids)
                times[name].append(clock() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    cells = ", ".join(f"{name} {1e3 * t:.0f} ms" + ("" if name == "HF" else f" ({med['HF'] / t:.2f}x HF)")
                      for name, t in med.items())
    print(f"{family} {args.batch}x{args.seq}: {cells}")
    if args.profile:
        with torch.inference_mode():
            for name in ("HF", "-O2"):
                print(f"  {name}: {top_ops(models[name], ids)}")


GEMMS = ("aten::mm", "aten::_grouped_mm", "aten::bmm", "aten::addmm", "mkldnn::_linear_pointwise")


def top_ops(model: Any, ids: torch.Tensor, count: int = 6) -> str:
    """The top ops of one call by self CPU time, as shares of all self time, and the matrix products' share."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(ids)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMMS)
    tops = ", ".join(f"{e.key} {e.self_cpu_time_total / total:.0%}" for e in events[:count])
    return f"{tops}; matrix products {gemm / total:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--cpu-time", action="store_true", help="1 thread, the calling thread's CPU time")
    parser.add_argument("--profile", action="store_true", help="top ops of one HF and one -O2 call")
    args = parser.parse_args()
    if args.cpu_time:
        args.threads = 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), fp32, "
          f"{'CPU time' if args.cpu_time else 'wall time'}; "
          f"load average before {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.family:
            run(family, args, Path(tmp))
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
