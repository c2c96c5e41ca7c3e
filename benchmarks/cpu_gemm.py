"""Which CPU route for a linear's matrix product is fastest at the shapes the families run (issue 17).

    python benchmarks/cpu_gemm.py [--threads 2] [--rounds 9] [--calls 3] [--only gpt2,llama] [--moe] [--cpu-time]
    python benchmarks/cpu_gemm.py --gemv [--cpu-time]

For each shape `x [M, K] @ W[N, K]^T + b` (M = B*T of `cpu_families.py`'s medium sizes; the experts' M is the
mean number of tokens routed to one expert) it times, interleaved in rounds (every route once per round, in an
order rotated each round, so drift in the machine's speed hits all alike), the median of `--rounds`:

- `F.linear`: what Hugging Face calls (MKL's sgemm, W transposed);
- `x @ Wt`: `torch.addmm(b, x, Wt)` with `Wt = W.t().contiguous()` made once ([in, out] layout);
- `mkl packed`: `torch.ops.mkl._mkl_linear` on `_mkl_reorder_linear_weight(W)` (MKL's `sgemm_pack`, made once;
  what inductor uses for fp32 linears);
- `onednn`: `torch.ops.mkldnn._linear_pointwise` on W itself (what -O2's `linear` runs on AVX-512 CPUs);
- `onednn packed`: the same on `mkldnn._reorder_linear_weight(W)` (prepacked oneDNN weight, made once).
- `aligned rows`: `runtime.aligned_linear`, F.linear's product written into rows padded to 64 bytes (a view),
  what -O2's `linear` runs for a wide output whose rows would not be aligned (the `odd heads` shapes).

Splitting M across threads (each half by one thread, single-threaded GEMMs) is not among them: from Python it
needs `torch.set_num_threads(1)` in the workers, which sets the whole process's intra-op threads (the main
thread's included: measured), so every later op would run on one thread.

`--cpu-time` times the calling thread's CPU time at 1 thread: the work of each route, which a loaded machine
moves far less than wall time; it says nothing of how well 2 threads scale.

`--gemv` times one row (a decoding step; M = 1) by the weights of GPT-2 small and a ~1B Llama (its LM head cut to
32000 rows), as weight bytes read per second: `F.linear` against `x @ Wt` and MKL's packed weight (the decoding
step's per-weight layout choice, `decode_layout`, is about this).

`--moe` adds one MoE layer's per-expert products: a loop of `F.linear` per expert (what `moe_swiglu` and HF's
grouped_mm path do on CPU), the same loop on packed weights, padded `bmm` over all experts, and `torch._grouped_mm`.
Each route's output is compared with F.linear's before anything is timed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nnspec.backends.torch import runtime

# family -> [(name, M, K, N)]; M = 4 x 256 tokens (ViT: 8 x 197), experts: M = tokens * k / E
SHAPES: dict[str, list[tuple[str, int, int, int]]] = {
    "gpt2": [("c_attn", 1024, 512, 1536), ("attn c_proj", 1024, 512, 512), ("c_fc", 1024, 512, 2048),
             ("mlp c_proj", 1024, 2048, 512), ("lm head", 1024, 512, 8192)],
    "llama": [("qkv", 1024, 512, 768), ("gate+up", 1024, 512, 2752), ("down", 1024, 1376, 512)],
    "vit": [("qkv", 1576, 384, 1152), ("proj", 1576, 384, 384), ("fc1", 1576, 384, 1536), ("fc2", 1576, 1536, 384)],
    "mixtral experts": [("gate+up", 256, 512, 2048), ("down", 256, 1024, 512)],
    "qwen2_moe experts": [("gate+up", 256, 512, 512), ("down", 256, 256, 512), ("shared gate+up", 1024, 512, 2048)],
    # output rows not 64-byte aligned (-O2's `linear` writes them into padded rows: `aligned rows`)
    "odd heads": [("gpt2 small LM head", 512, 768, 50257), ("32001-token head", 512, 768, 32001),
                  ("4099 wide", 1024, 512, 4099)],
}


def routes(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict[str, Callable]:
    wt = w.t().contiguous()
    mkl = torch.ops.mkl._mkl_reorder_linear_weight(w, x.shape[0])
    dnn = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
    return {
        "F.linear": lambda: F.linear(x, w, b),
        "x @ Wt": lambda: torch.addmm(b, x, wt),
        "mkl packed": lambda: torch.ops.mkl._mkl_linear(x, mkl, w, b, x.shape[0]),
        "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
        "onednn packed": lambda: torch.ops.mkldnn._linear_pointwise(x, dnn, b, "none", [], ""),
        "aligned rows": lambda: runtime.aligned_linear(x, w, b),
    }


def moe_operands(m: int, e: int, k: int, hidden: int, inter: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The (token, choice) rows of m tokens routed to k of e experts at random, sorted by expert ([m*k, hidden]),
    one expert projection's weights (gate+up fused, [e, 2*inter, hidden]) and each expert's number of rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m * k, hidden, generator=g)
    w = torch.randn(e, 2 * inter, hidden, generator=g) / hidden ** 0.5
    choice = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(m)]).reshape(-1)
    return x, w, torch.bincount(choice, minlength=e).tolist()


def moe_routes(x: torch.Tensor, w: torch.Tensor, sizes: list[int]) -> dict[str, Callable]:
    """Expert i's rows of x (`sizes[i]` of them, in expert order) times w[i]^T, concatenated, by each route."""
    e, hidden = w.shape[0], w.shape[2]
    offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
    packed = [torch.ops.mkl._mkl_reorder_linear_weight(w[i].contiguous(), max(sizes)) for i in range(e)]
    cap = max(sizes)
    starts = [0, *offs.tolist()[:-1]]

    def loop() -> torch.Tensor:
        return torch.cat([F.linear(p, w[i]) for i, p in enumerate(x.split(sizes))])

    def loop_packed() -> torch.Tensor:
        parts = x.split(sizes)
        return torch.cat([torch.ops.mkl._mkl_linear(p, packed[i], w[i], None, cap) for i, p in enumerate(parts)])

    def padded() -> torch.Tensor:
        buf = x.new_zeros(e, cap, hidden)
        for i, (s, n) in enumerate(zip(starts, sizes, strict=True)):
            buf[i, :n] = x[s:s + n]
        y = torch.bmm(buf, w.transpose(1, 2))
        return torch.cat([y[i, :n] for i, n in enumerate(sizes)])

    out = {"loop F.linear": loop, "loop mkl packed": loop_packed, "padded bmm": padded}
    if hasattr(torch, "_grouped_mm"):
        wt = w.transpose(1, 2)
        out["torch._grouped_mm"] = lambda: torch._grouped_mm(x, wt, offs=offs)
    return out


# (out, in) of GPT-2 small (qkv, proj, fc, mlp proj, LM head) and a ~1B Llama (qkv, o, gate+up, down, LM head cut)
GEMV_WEIGHTS = [(2304, 768), (768, 768), (3072, 768), (768, 3072), (50257, 768),
                (3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (32000, 2048)]


def gemv_rows(args: argparse.Namespace) -> None:
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print("| weight [out, in] | F.linear GB/s | x @ Wt GB/s | mkl packed GB/s | F.linear / x @ Wt |")
    print("|---" * 5 + "|")
    g = torch.Generator().manual_seed(0)
    for n, k in GEMV_WEIGHTS:
        w, x, b = torch.randn(n, k, generator=g), torch.randn(1, k, generator=g), torch.randn(n, generator=g)
        wt, packed = w.t().contiguous(), torch.ops.mkl._mkl_reorder_linear_weight(w, 1)
        calls = max(1, int(2e7 // (n * k)))    # about 80 MB read per timing
        fns = {"F.linear": lambda x=x, w=w, b=b: F.linear(x, w, b),
               "x @ Wt": lambda x=x, wt=wt, b=b: torch.addmm(b, x, wt),
               "mkl": lambda x=x, p=packed, w=w, b=b: torch.ops.mkl._mkl_linear(x, p, w, b, 1)}
        med, _ = timed(fns, args.rounds, calls, clock)
        rate = {name: n * k * 4 / 1e9 / t for name, t in med.items()}
        print(f"| [{n}, {k}] | {rate['F.linear']:.1f} | {rate['x @ Wt']:.1f} | {rate['mkl']:.1f} | "
              f"{med['F.linear'] / med['x @ Wt']:.2f} |", flush=True)


def timed(fns: dict[str, Callable], rounds: int, calls: int, clock: Callable[[], float] = time.perf_counter
          ) -> tuple[dict[str, float], dict[str, float]]:
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for f in fns.values():
        f()
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = clock()
            for _ in range(calls):
                fns[n]()
            times[n].append((clock() - start) / calls)
    return {n: statistics.median(t) for n, t in times.items()}, {n: min(t) for n, t in times.items()}


def row(label: str, fns: dict[str, Callable], args: argparse.Namespace) -> None:
    want = next(iter(fns.values()))()
    for n, f in fns.items():
        torch.testing.assert_close(f(), want, rtol=1e-4, atol=1e-3, msg=lambda s, n=n: f"{label} {n}: {s}")
    med, low = timed(fns, args.rounds, args.calls, time.thread_time if args.cpu_time else time.perf_counter)
    base, base_low = next(iter(med.values())), next(iter(low.values()))
    cells = " | ".join(f"{1e3 * t:.2f} ({base / t:.2f}x; min {base_low / low[n]:.2f}x)" for n, t in med.items())
    print(f"| {label} | {cells} |", flush=True)


def header(first: str, fns: dict[str, Callable]) -> str:
    return f"| {first} | " + " | ".join(fns) + " |\n" + "|---" * (len(fns) + 1) + "|"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated families of SHAPES")
    parser.add_argument("--moe", action="store_true")
    parser.add_argument("--gemv", action="store_true", help="only the one-row products (decoding)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="1 thread, the calling thread's CPU time: work done, robust to a loaded machine")
    args = parser.parse_args()
    if args.cpu_time:
        args.threads = 1
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, fp32, "
          f"load average before {os.getloadavg()[0]:.1f}; median ms "
          "(F.linear time / route time, of medians; of minimums)")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        if args.gemv:
            gemv_rows(args)
            print(f"load average after {os.getloadavg()[0]:.1f}")
            return
        first = True
        for fam, shapes in SHAPES.items():
            if args.only and fam not in args.only.split(","):
                continue
            for name, m, k, n in shapes:
                x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g) / k ** 0.5, torch.randn(n)
                fns = routes(x, w, b)
                if first:
                    print(header("shape (M, K, N)", fns))
                    first = False
                row(f"{fam} {name} ({m}, {k}, {n})", fns, args)
        if args.moe:
            for label, dims in {"mixtral gate+up": (1024, 8, 2, 512, 1024),
                                "qwen2_moe gate+up": (1024, 16, 4, 512, 256)}.items():
                fns = moe_routes(*moe_operands(*dims))
                print(header("MoE layer", fns))
                row(label, fns, args)
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
