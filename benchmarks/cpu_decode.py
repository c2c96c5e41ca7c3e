"""CPU decoding: nnspec's `generate` (KV cache derived by the compiler) against Hugging Face `generate`.

    python benchmarks/cpu_decode.py [--quick] [--models gpt2,llama1b] [--dtypes fp32,bf16] [--batches 1,8]
                                    [--prompt 128] [--new 128] [--reps 3] [--threads N] [--compile]
                                    [--reference] [--weight-layout auto|given|split-given|transposed|split]
                                    [--given]

For each model (GPT-2 small; a ~1B Llama-shaped spec with TinyLlama-1.1B's dims), dtype and batch, with random
weights (the HF model's, loaded into the module `nnspec.build` makes at -O2), greedy decoding of `--new` tokens
after a `--prompt`-token prompt, timed end to end (prefill included), interleaved in one run:
- `nnspec`: `nnspec.generate.Decoder.generate` (the step the generated file holds, `<Model>Decoder`, run
  eagerly, its weights' layout chosen by `--weight-layout`, default auto: docs/generate.md); `nnspec given` (with
  `--given`): the same without weight copies; `nnspec reference` (with `--reference`): the node-by-node
  `DecodeStep` it replaced;
- `nnspec+compile` (with `--compile`): the same with the one-token step `torch.export`ed and `torch.compile`d;
- `hf dynamic`: `generate` with its default dynamic cache; `hf static`: `cache_implementation="static"`;
- `hf static+compile` (with `--compile`): `generate` with a static cache and a `torch.compile`d forward.
Medians of `--reps` runs: tokens/s (batch x new / seconds), and for batch 1 the fraction of the memory-bandwidth
limit: (weight bytes + the KV bytes read per token, at the mean cache length) per generated token over the
measured copy bandwidth of this machine (a large `copy_`, read + write). It checks nnspec's tokens equal HF's.
`--quick`: GPT-2 small and a 4-layer Llama of width 512, fp32, batch 1 and 8, prompt 32, 16 new, 2 reps.
Load averages before and after say how busy the machine was; each row first prints the layout `auto` chose per
weight shape (docs/generate.md) and the bytes of its copies, and each compiled contender its first call's time
(compilation included; the timed runs exclude it).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

import nnspec
from nnspec.generate import WEIGHT_LAYOUTS, Decoder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS: dict[str, tuple[str, Any, dict[str, Any]]] = {
    "gpt2": ("gpt2", transformers.GPT2Config, dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama1b": ("llama", transformers.LlamaConfig,
                dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                     num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)),
    "llama_small": ("llama", transformers.LlamaConfig,
                    dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=2048)),
}
HF_CLASSES = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM}


def copy_bandwidth() -> float:
    """Bytes per second of a large copy (read + write), the best of 5."""
    src = torch.empty(64 * 2**20, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


def pair(name: str, dtype: torch.dtype, tmp: Path, layout: str = "auto") -> tuple[Any, Any, Decoder]:
    spec, config_cls, kwargs = MODELS[name]
    torch.manual_seed(0)
    config = config_cls(**kwargs, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    hf = HF_CLASSES[spec](config).eval()
    config.save_pretrained(tmp)
    ours = nnspec.build(EXAMPLES / f"{spec}.yaml", opt=2, config=tmp / "config.json",
                        transforms={"dtype": "bf16"} if dtype == torch.bfloat16 else None).eval()
    nnspec.load_weights(ours, hf.state_dict())
    return hf.to(dtype), ours, Decoder(ours, weight_layout=layout)


def layout_summary(module: torch.nn.Module) -> str:
    """The layout the step reads each weight shape in ([out, in] -> kind, as `choose_layouts` kept them)."""
    kinds: dict[str, set[str]] = {}
    for m in module.modules():
        for key, entry in m.__dict__.get("_step_layouts", {}).items():
            if entry is not None:
                w = m.get_parameter(key)
                kinds.setdefault(f"{tuple(w.shape)}", set()).add(entry[3])
    return ", ".join(f"{shape} {'/'.join(sorted(k))}" for shape, k in kinds.items()) or "none kept"


def kv_bytes_per_position(decoder: Decoder, batch: int) -> int:
    return decoder.plan.cache_bytes(batch, 1)


def one(args: argparse.Namespace, name: str, dname: str, dtype: torch.dtype, hf: Any, decoder: Decoder,
        weight_bytes: int, bandwidth: float, batch: int) -> None:
    """One model x dtype x batch: every contender, interleaved; prints one line each."""
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, hf.config.vocab_size, (batch, args.prompt), generator=g)
    mask = torch.ones_like(ids)
    length = args.prompt + args.new
    step = decoder.step(batch, length)
    print(f"{name:11s} {dname} batch {batch:2d}  weight layouts: {layout_summary(decoder.module)}; "
          f"{getattr(step, 'layout_bytes', 0) / 1e6:.0f} MB of copies")
    contenders: dict[str, Callable[[], torch.Tensor]] = {
        "nnspec": lambda: decoder.generate(ids, mask, max_new_tokens=args.new, step=step),
        "hf dynamic": lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=args.new,
                                          do_sample=False, pad_token_id=0, eos_token_id=None),
        "hf static": lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=args.new,
                                         do_sample=False, pad_token_id=0, eos_token_id=None,
                                         cache_implementation="static"),
    }
    if args.given:   # the same step reading the weights as given, on a copy of the module (copies live on it)
        given = Decoder(copy.deepcopy(decoder.module), weight_layout="given")
        step_g = given.step(batch, length)
        contenders["nnspec given"] = lambda: given.generate(ids, mask, max_new_tokens=args.new, step=step_g)
    if args.reference:
        ref = decoder.reference_step(batch, length)
        contenders["nnspec reference"] = lambda: decoder.generate(ids, mask, max_new_tokens=args.new, step=ref)
    if args.compile:
        step_c = decoder.step(batch, length)
        run_c = decoder.compiled(step_c)
        contenders["nnspec+compile"] = lambda: decoder.generate(ids, mask, max_new_tokens=args.new,
                                                                step=step_c, step_fn=run_c)
        hf_c = HF_CLASSES[MODELS[name][0]](hf.config).eval().to(dtype)
        hf_c.load_state_dict(hf.state_dict())
        hf_c.forward = torch.compile(hf_c.forward)
        contenders["hf static+compile"] = lambda: hf_c.generate(
            ids, attention_mask=mask, max_new_tokens=args.new, do_sample=False, pad_token_id=0,
            eos_token_id=None, cache_implementation="static")
    times: dict[str, list[float]] = {k: [] for k in contenders}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        warmup: dict[str, float] = {}
        for k, fn in contenders.items():       # warm-up (and compilation: its time is reported, not counted)
            t = time.perf_counter()
            outs[k] = fn()
            warmup[k] = time.perf_counter() - t
        for _ in range(args.reps):
            for k, fn in contenders.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    same = torch.equal(outs["nnspec"], outs["hf dynamic"])
    kv = kv_bytes_per_position(decoder, batch) * (args.prompt + args.new / 2)
    base = statistics.median(times["hf dynamic"])
    for k, ts in times.items():
        sec = statistics.median(ts)
        tps = batch * args.new / sec
        frac = ""
        if batch == 1:
            frac = f"  {(weight_bytes + kv) * args.new / sec / bandwidth:5.1%} of bandwidth limit"
        print(f"{name:11s} {dname} batch {batch:2d}  {k:18s} {tps:9.1f} tok/s  "
              f"x{base / sec:4.2f} vs hf dynamic{frac}")
    print(f"{name:11s} {dname} batch {batch:2d}  nnspec tokens == hf tokens: {same}")
    for k, sec in warmup.items():
        if "compile" in k:
            print(f"{name:11s} {dname} batch {batch:2d}  {k}: first call (compilation included) {sec:.1f} s")


def run(args: argparse.Namespace) -> None:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"cpu_decode_{os.getpid()}"
    bandwidth = copy_bandwidth()
    print(f"load average before: {os.getloadavg()}; threads {torch.get_num_threads()}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    for name in args.models:
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            hf, ours, decoder = pair(name, dtype, tmp / f"{name}_{dname}", args.weight_layout)
            weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
            for batch in args.batches:
                one(args, name, dname, dtype, hf, decoder, weight_bytes, bandwidth, batch)
    print(f"load average after: {os.getloadavg()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", default="gpt2,llama1b")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--reference", action="store_true", help="also time the node-by-node reference step")
    p.add_argument("--weight-layout", default="auto", choices=list(WEIGHT_LAYOUTS),
                   help="the layout of the weights nnspec's step reads (docs/generate.md)")
    p.add_argument("--given", action="store_true", help="also time nnspec's step without weight copies")
    args = p.parse_args()
    if args.quick:
        args.models, args.dtypes, args.prompt, args.new, args.reps = "gpt2,llama_small", "fp32", 32, 16, 2
    args.models = args.models.split(",")
    args.dtypes = args.dtypes.split(",")
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
