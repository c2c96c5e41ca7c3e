"""CPU throughput of GPT-2 small in bfloat16 (`--dtype bf16`) against float32, both generated at -O2.

    python benchmarks/cpu_bf16.py [--batch 8] [--seq 512] [--threads 2] [--reps 5] [--logits fp32|bf16]

Both modules are generated from examples/gpt2.yaml by the torch backend (ModuleGen, opt=2); the bf16 one
from the spec after `nnspec.compiler.transforms.apply(model, dtype="bf16")`, loaded with the float32 module's
weights cast to its dtypes. Runs under `torch.inference_mode()` with `--threads` intra-op threads, one
warm-up call each, then `--reps` calls each, interleaved (fp32, bf16, fp32, ...), and reports the median
tokens/s of each, their ratio and the next-token top-1 agreement of the two on the timed input.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import nnspec
from nnspec.backends.torch.codegen import ModuleGen
from nnspec.compiler.transforms import apply
from nnspec.generated import load_source

SPEC = Path(__file__).resolve().parent.parent / "examples" / "gpt2.yaml"


def module(model, result, tag: str) -> torch.nn.Module:
    gen = ModuleGen(model, spec_text=result.spec.source.text, doc=result.spec.doc, opt=2)
    return getattr(load_source(gen.generate(), f"{model.name}_{tag}"), gen.model_class)().eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--logits", choices=["fp32", "bf16"], default="fp32",
                    help="compute the LM head in float32 (default) or bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
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
    tokens = args.batch * args.seq
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    agree = (outs["fp32"].argmax(-1) == outs["bf16"].argmax(-1)).float().mean().item()
    print(f"gpt2 {args.batch}x{args.seq}, {args.threads} threads, torch {torch.__version__}, logits {args.logits}")
    for k in times:
        print(f"  {k}: median {statistics.median(times[k]):.3f} s  ({rate[k]:,.0f} tok/s)  "
              f"runs {', '.join(f'{t:.2f}' for t in times[k])}")
    print(f"  speedup bf16/fp32: {rate['bf16'] / rate['fp32']:.2f}x   top-1 agreement: {agree:.4f}")


if __name__ == "__main__":
    main()
