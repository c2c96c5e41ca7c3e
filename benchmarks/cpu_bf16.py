"""CPU throughput of GPT-2 small in bfloat16 (`--dtype bf16`) against float32, both generated at -O2.

    python benchmarks/cpu_bf16.py [--batch 8] [--seq 512] [--threads 2] [--reps 5] [--logits fp32|bf16] [--hf]
                                  [--profile]

Both modules are generated from examples/gpt2.yaml by the torch backend after the -O2 passes (run with
`training=True`, as `nnspec compile -O2` runs them, so attention is `F.scaled_dot_product_attention` in both);
the bf16 one from the spec after `nnspec.compiler.transforms.apply(model, dtype="bf16")`, loaded with the
float32 module's weights cast to its dtypes. Runs under `torch.inference_mode()` with `--threads` intra-op
threads, one warm-up call each, then `--reps` calls each, interleaved (fp32, bf16, fp32, ...), and reports
the median tokens/s of each and their ratio, and the next-token top-1 agreement on the timed input:
- against the float32 module (the issue's measure; it includes rounding the weights to bfloat16),
- against the float32 module holding the same bfloat16-rounded weights (what low-precision compute alone
  changes; not timed),
- with `--hf`, what Hugging Face's `GPT2LMHeadModel(...).to(torch.bfloat16)` holding the same weights gives
  against the float32 module (the usual way to run GPT-2 in bf16; not timed).
The weights are a random initialisation (the spec's), so the logits are nearly flat: it also prints the
median gap between the float32 module's two best logits and the largest gap at a position where the
bf16 module's top-1 differs. Load averages before and after tell how busy the machine was. `--profile` adds
one profiled call of each module: self CPU time per op, the largest first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import nnspec
from nnspec.backends.torch.codegen import ModuleGen
from nnspec.backends.torch.options import TorchOptions
from nnspec.compiler.passes import level_label, optimize
from nnspec.compiler.transforms import apply
from nnspec.generated import load_source
from nnspec.pipeline import LEVEL_OPTIONS

SPEC = Path(__file__).resolve().parent.parent / "examples" / "gpt2.yaml"


def module(model, result, tag: str) -> torch.nn.Module:
    """The -O2 module `nnspec compile -O2` would write for `model` (passes with training=True)."""
    model = optimize(model, level=2, training=True)
    gen = ModuleGen(model, spec_text=result.spec.source.text, doc=result.spec.doc, label=level_label(model, 2),
                    options=TorchOptions.from_mapping(LEVEL_OPTIONS[2]))
    return getattr(load_source(gen.generate(), f"{model.name}_{tag}"), gen.model_class)().eval()


def agreement(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, the largest top-2 gap of `ref` where the top-1s differ; 0 if none)."""
    differ = ref.argmax(-1) != got.argmax(-1)
    top2 = ref.float().topk(2, dim=-1).values
    gap = top2[..., 0] - top2[..., 1]
    return 1 - differ.float().mean().item(), (gap[differ].max().item() if differ.any() else 0.0)


def hf_bf16(fp32: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Hugging Face's GPT-2 in bfloat16 (`model.to(torch.bfloat16)`) holding the float32 module's weights."""
    import transformers

    from nnspec.backends.torch.weights import to_source
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    missing, unexpected = hf.load_state_dict(to_source(fp32), strict=False)
    assert not unexpected and all(k.endswith(("attn.bias", "attn.masked_bias", "lm_head.weight")) for k in missing)
    hf.tie_weights()
    return hf.to(torch.bfloat16)(ids).logits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--logits", choices=["fp32", "bf16"], default="fp32",
                    help="compute the LM head in float32 (default) or bfloat16")
    ap.add_argument("--hf", action="store_true", help="also measure Hugging Face GPT-2 in bf16's agreement")
    ap.add_argument("--profile", action="store_true", help="also profile one call of each module")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    result = nnspec.check(SPEC)
    low, _ = apply(result.model, dtype="bf16", fp32_outputs=args.logits == "fp32")
    fp32, bf16 = module(result.model, result, "fp32"), module(low, result, "bf16")
    bf16.load_state_dict({k: v.to(bf16.state_dict()[k].dtype) for k, v in fp32.state_dict().items()})
    ids = torch.randint(0, 50257, (args.batch, args.seq))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with torch.inference_mode():
        outs = {name: m(ids) for name, m in (("fp32", fp32), ("bf16", bf16))}   # warm-up
        for _ in range(args.reps):
            for name, m in (("fp32", fp32), ("bf16", bf16)):
                t0 = time.perf_counter()
                m(ids)
                times[name].append(time.perf_counter() - t0)
        rounded = module(result.model, result, "fp32_rounded")
        rounded.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in fp32.state_dict().items()})
        outs["fp32, rounded weights"] = rounded(ids)
        if args.hf:
            outs["hf bf16"] = hf_bf16(fp32, ids)
    load_after = os.getloadavg()
    tokens = args.batch * args.seq
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(f"gpt2 {args.batch}x{args.seq}, {args.threads} threads, torch {torch.__version__}, logits {args.logits}, "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    for k in times:
        print(f"  {k}: median {statistics.median(times[k]):.3f} s  ({rate[k]:,.0f} tok/s)  "
              f"runs {', '.join(f'{t:.2f}' for t in times[k])}")
    print(f"  speedup bf16/fp32: {rate['bf16'] / rate['fp32']:.2f}x")
    top2 = outs["fp32"].topk(2, dim=-1).values
    print(f"  fp32 logits: std {outs['fp32'].std().item():.3f}, median top-2 gap "
          f"{(top2[..., 0] - top2[..., 1]).median().item():.4f}")
    for ref, got in [("fp32", "bf16"), ("fp32, rounded weights", "bf16"), ("fp32", "fp32, rounded weights"),
                     ("fp32", "hf bf16")]:
        if got in outs:
            agree, worst = agreement(outs[ref], outs[got])
            print(f"  top-1 agreement of {got} with {ref}: {agree:.4f} (largest {ref} top-2 gap where they "
                  f"differ: {worst:.4f})")
    if args.profile:
        for name, m in (("fp32", fp32), ("bf16", bf16)):
            profile(name, m, ids)


def profile(name: str, m: torch.nn.Module, ids: torch.Tensor, top: int = 8) -> None:
    """Self CPU time per op of one call, the `top` largest, with each op's share of the call."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as run_profiled

    with torch.inference_mode(), run_profiled(activities=[ProfilerActivity.CPU]) as prof:
        m(ids)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"  profile {name}: {total / 1e6:.2f} s of self CPU time")
    for e in events[:top]:
        print(f"    {e.key:<40} {e.self_cpu_time_total / 1e6:6.2f} s  {100 * e.self_cpu_time_total / total:4.1f}%  "
              f"x{e.count}")


if __name__ == "__main__":
    main()
