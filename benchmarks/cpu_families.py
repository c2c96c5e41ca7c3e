"""CPU inference speed of every model family nnspec's examples write, against the Hugging Face model each conforms to.

    python benchmarks/cpu_families.py [--families gpt2,mamba] [--repeats 5] [--threads 2] [--no-compile]
                                      [--output benchmarks/RESULTS.md]
    python benchmarks/cpu_families.py --quick       # tiny sizes, 1 repeat, no torch.compile: a check that all runs

Families: GPT-2, Llama, Mixtral-style MoE, Qwen2-MoE-style MoE (shared expert), Mamba, ViT, Swin, PVT-v2 and BERT,
each the example spec in examples/ at a medium size where compute dominates (`--quick`: tiny). For each, a randomly
initialised Hugging Face model (nothing is downloaded) is built from a config, its config.json given to the spec
(`nnspec.build(spec, config=...)`) and its weights loaded through the spec's `weights: hf:` mapping. Variants:

- HF: the transformers model with its default attention implementation;
- nnspec -O0, nnspec -O2: the code `nnspec compile` writes at each level;
- HF + compile, nnspec -O2 + compile: `torch.compile` (inductor, default mode) of each (`--no-compile` drops them).

Method: float32, `torch.set_num_threads(--threads)`, `torch.inference_mode()`, eval mode; every variant's output is
compared with HF's before anything is timed (a mismatch is reported in the table, not timed); warm-up calls
(torch.compile compiles during them), then `--repeats` rounds in which every variant of a family runs once, in an
order rotated each round (interleaved, so drift in the machine's speed hits all alike); the median time of each.
Ratios are HF time / variant time (above 1: faster than HF). For each family, the profile of three nnspec -O2 calls
after a warm-up call: the top ops by self CPU time, as shares of those calls; and, for HF and -O2, the share in the
library kernels both call (BLAS products, convolutions, fused attention) with the ratio -O2 would reach if every other
op took no time (HF time / -O2's time in those kernels): the ceiling for code that calls the same kernels.

Control: the HF model is built first, then nnspec's, then the same HF model again ("HF, built last": a second
instance loaded from the first's state dict). Where the same code runs at two speeds depending on when its weights
were allocated, the two HF rows differ: a 2-core AMD EPYC ran Llama's first HF instance at 241 ms and the one built
after nnspec's at 252 ms, nnspec -O2 at 253 ms (benchmarks/RESULTS.md). Both ratios are reported.

Heap: before anything runs, glibc is told to keep freed memory for reuse (`keep_heap`; `--no-keep-heap` leaves its
defaults). By default each allocation above glibc's mmap threshold (at most 32 MiB) is a fresh mapping the kernel
zeroes page by page at first touch and unmaps at free; HF's CPU Mamba path allocates [B, inner, T, state] tensors
of 64 MiB at this size several times per layer, about 300k page faults per call, a kernel cost that follows the
machine's memory traffic and moved that row 1087-2473 ms between runs (warm-up does not help: every call faults
as much as the first). With the heap kept, every variant of every family reuses pages it already touched.

A `spellings` row times four ways of writing one contraction (`y[B, T, e, f] = x * w`, `matmul(x, w, over=h)`,
`x @ w`, a split linear), built at -O2, against `torch.einsum` of the same operands.

It prints the tables and, with `--output`, writes (atomically) its own section of that file, keeping the others.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import nnspec
from nnspec.atomic import write_atomic

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
HEADING = "## `cpu_families.py`"
HF = "HF"
HF_LAST = "HF, built last"


@dataclass
class Family:
    spec: str
    model: str                          # transformers class
    config: str                         # transformers config class
    quick: dict[str, Any]
    full: dict[str, Any]
    inputs: Callable[[Any, bool], dict[str, torch.Tensor]]
    output: str                         # the output compared (HF attribute, nnspec output name)
    shape: Callable[[bool], str]
    prepare: Callable[[Any], None] = lambda hf: None


def keep_heap() -> str:
    """Ask glibc to serve large allocations from the heap and not to give freed memory back (M_MMAP_THRESHOLD 1 GiB,
    M_TRIM_THRESHOLD 2 GiB), so a tensor freed and allocated again each call reuses faulted-in pages. Returns what
    was done, for the report's header."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        if libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1:
            return "glibc heap kept (mallopt: no mmap per large tensor)"
    except (OSError, AttributeError):
        pass
    return "allocator defaults (mallopt unavailable)"


def tokens(batch: int, length: int) -> Callable[[Any, bool], dict[str, torch.Tensor]]:
    def make(config: Any, quick: bool) -> dict[str, torch.Tensor]:
        b, t = (2, 16) if quick else (batch, length)
        return {"input_ids": torch.randint(0, config.vocab_size, (b, t), generator=torch.Generator().manual_seed(1))}
    return make


def pixels(batch: int) -> Callable[[Any, bool], dict[str, torch.Tensor]]:
    def make(config: Any, quick: bool) -> dict[str, torch.Tensor]:
        size = config.image_size
        h, w = (size, size) if isinstance(size, int) else size
        return {"pixel_values": torch.randn(2 if quick else batch, config.num_channels, h, w,
                                            generator=torch.Generator().manual_seed(1))}
    return make


def _random_tables(hf: Any) -> None:
    """Relative position tables start at zero in HF; random ones make the bias lookup count."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_()


LM = dict(vocab_size=8192, max_position_embeddings=512)
FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2.yaml", "GPT2LMHeadModel", "GPT2Config",
                   dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4),
                   dict(vocab_size=8192, n_positions=512, n_embd=512, n_layer=4, n_head=8),
                   tokens(4, 256), "logits", lambda q: "2x16" if q else "4x256"),
    "llama": Family("llama.yaml", "LlamaForCausalLM", "LlamaConfig",
                    dict(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64),
                    dict(**LM, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2), tokens(4, 256), "logits", lambda q: "2x16" if q else "4x256"),
    "mixtral": Family("mixtral.yaml", "MixtralForCausalLM", "MixtralConfig",
                      dict(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=64),
                      dict(**LM, hidden_size=512, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                           num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2),
                      tokens(4, 256), "logits", lambda q: "2x16" if q else "4x256"),
    "qwen2_moe": Family("qwen2_moe.yaml", "Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                        dict(vocab_size=64, hidden_size=16, intermediate_size=24, moe_intermediate_size=8,
                             shared_expert_intermediate_size=20, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, num_experts=4, num_experts_per_tok=2, max_position_embeddings=64),
                        dict(**LM, hidden_size=512, intermediate_size=1376, moe_intermediate_size=256,
                             shared_expert_intermediate_size=1024, num_hidden_layers=2, num_attention_heads=8,
                             num_key_value_heads=2, num_experts=16, num_experts_per_tok=4),
                        tokens(4, 256), "logits", lambda q: "2x16" if q else "4x256"),
    "mamba": Family("mamba.yaml", "MambaForCausalLM", "MambaConfig",
                    dict(vocab_size=97, hidden_size=16, state_size=4, num_hidden_layers=2, time_step_rank=3,
                         use_associative_scan=False),
                    dict(vocab_size=8192, hidden_size=512, state_size=16, num_hidden_layers=4, time_step_rank=32,
                         use_associative_scan=False),
                    tokens(4, 256), "logits", lambda q: "2x16" if q else "4x256"),
    "vit": Family("vit.yaml", "ViTForImageClassification", "ViTConfig",
                  dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=4, intermediate_size=48, num_labels=10),
                  dict(image_size=224, patch_size=16, num_channels=3, hidden_size=384, num_hidden_layers=4,
                       num_attention_heads=6, intermediate_size=1536, num_labels=1000),
                  pixels(8), "logits", lambda q: "2x3x32x32" if q else "8x3x224x224"),
    "swin": Family("swin.yaml", "SwinModel", "SwinConfig",
                   dict(image_size=64, patch_size=2, num_channels=3, window_size=4, embed_dim=16, depths=[2, 2, 2, 2],
                        num_heads=[2, 2, 4, 4], mlp_ratio=2.0, drop_path_rate=0.0),
                   dict(image_size=224, patch_size=4, num_channels=3, window_size=7, embed_dim=64,
                        depths=[2, 2, 2, 2], num_heads=[2, 4, 8, 16], drop_path_rate=0.0),
                   pixels(4), "last_hidden_state", lambda q: "2x3x64x64" if q else "4x3x224x224", _random_tables),
    "pvt_v2": Family("pvt_v2.yaml", "PvtV2Model", "PvtV2Config",
                     dict(image_size=32, depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                          num_attention_heads=[1, 2, 3, 4], sr_ratios=[2, 2, 1, 1], mlp_ratios=[2, 2, 4, 4],
                          patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2]),
                     dict(image_size=224, depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256]),
                     pixels(4), "last_hidden_state", lambda q: "2x3x32x32" if q else "4x3x224x224"),
    "bert": Family("bert.yaml", "BertModel", "BertConfig",
                   dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2),
                   dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                        intermediate_size=2048, max_position_embeddings=512),
                   tokens(4, 256), "last_hidden_state", lambda q: "2x16" if q else "4x256"),
}


@dataclass
class Variant:
    name: str
    run: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    note: str = ""


def output_of(out: Any, key: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return out[key]
    return getattr(out, key)


def build_family(name: str, quick: bool, compile_: bool, workdir: Path) -> tuple[list[Variant], Any, str]:
    """The family's variants, (the HF model, nnspec -O2, the inputs) for the profiles, and the input's shape."""
    import transformers
    fam = FAMILIES[name]
    config = getattr(transformers, fam.config)(**(fam.quick if quick else fam.full))
    path = workdir / f"{name}.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = getattr(transformers, fam.model)(config).eval()
    fam.prepare(hf)
    inputs = fam.inputs(config, quick)
    models: dict[str, Any] = {HF: hf}
    for opt in (0, 2):
        m = nnspec.build(EXAMPLES / fam.spec, config=path, opt=opt).eval()
        nnspec.load_weights(m, hf.state_dict())
        models[f"nnspec -O{opt}"] = m
    # the control: the same HF model again, built after nnspec's (see the module's docstring)
    later = getattr(transformers, fam.model)(config).eval()
    later.load_state_dict(hf.state_dict())
    models[HF_LAST] = later
    variants = [Variant(k, (lambda m=m: m(**inputs))) for k, m in models.items()]
    if compile_:
        for k in (HF, "nnspec -O2"):
            compiled = torch.compile(models[k])
            variants.append(Variant(f"{k} + compile", (lambda m=compiled: m(**inputs))))
    with torch.inference_mode():
        want = output_of(hf(**inputs), fam.output)
        for v in variants[1:]:
            try:
                torch.testing.assert_close(output_of(v.run(), fam.output), want, rtol=1e-3, atol=1e-3)
            except AssertionError as e:
                v.note = "MISMATCH: " + str(e).splitlines()[0]
    return variants, (hf, models["nnspec -O2"], inputs), fam.shape(quick)


def measure(variants: list[Variant], repeats: int, warmup: int) -> None:
    live = [v for v in variants if not v.note]
    with torch.inference_mode():
        for v in live:
            for _ in range(warmup):
                v.run()
        for r in range(repeats):
            for v in live[r % len(live):] + live[:r % len(live)]:
                start = time.perf_counter()
                v.run()
                v.times.append(time.perf_counter() - start)


# The library kernels HF and nnspec both call (BLAS/oneDNN products, convolutions, torch's fused attention), by
# profiler name: what is left to win is the time outside them.
LIBRARY = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_grouped_mm", "aten::_mkl_linear",
           "mkldnn::_linear_pointwise", "convolution", "scaled_dot_product")


@dataclass
class Profile:
    """Self CPU time of a few calls, by op: the top ops' shares and the share in library kernels (`LIBRARY`)."""

    top: str
    library: float


def profile_shares(model: Any, inputs: dict[str, torch.Tensor], top: int = 5, calls: int = 3) -> Profile:
    """The top ops' shares of self CPU time over `calls` calls (after a warm-up call: a first call builds caches,
    such as the fused linears' concatenated weights; several calls, so one stall on a loaded machine weighs less)."""
    with torch.inference_mode():
        model(**inputs)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model(**inputs)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: -e.self_cpu_time_total)
    library = sum(e.self_cpu_time_total for e in events if any(k in e.key for k in LIBRARY)) / total
    return Profile(", ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.0f}%" for e in events[:top]), library)


def ceiling_table(rows: list[tuple[str, str, list[Variant], Profile, Profile]]) -> list[str]:
    """Where each family's time goes on both sides, and the HF / -O2 ratio nnspec would reach if everything outside
    the library kernels took no time at all (HF time / -O2's library time): above it, only faster kernels help."""
    lines = ["| family | library kernels, HF | library kernels, -O2 | HF / -O2 | HF / -O2, nothing but library "
             "kernels (ceiling) |", "|---|---|---|---|---|"]
    ceilings = []
    for fam, _, variants, prof_hf, prof_o2 in rows:
        by = {v.name: v for v in variants}
        o2 = by.get("nnspec -O2")
        if o2 is None or o2.note or not o2.times or not prof_o2.library:
            continue
        hf, ours = statistics.median(by[HF].times), statistics.median(o2.times)
        ceiling = hf / (ours * prof_o2.library)
        ceilings.append(ceiling)
        lines.append(f"| {fam} | {100 * prof_hf.library:.0f}% | {100 * prof_o2.library:.0f}% | {hf / ours:.2f}x | "
                     f"{ceiling:.2f}x |")
    if ceilings:
        lines += ["", f"Geometric mean of the ceilings: {statistics.geometric_mean(ceilings):.2f}x over "
                  f"{len(ceilings)} families."]
    return lines


SPELLINGS = {
    "x * w (annotated)": "y[B, T, e, f] = x * param(e, f, h, name=w)",
    "matmul()": "y = matmul(x, param(e, f, h, name=w), over=h)",
    "x @ w": "y = x @ param(h, e, f, name=w)",
    "linear, split": "y = linear(x, e * f, bias=false, name=w)[B, T, (e f)]",
}


def spelling_variants(quick: bool) -> list[Variant]:
    h, e, f, b, t = (16, 4, 8, 2, 16) if quick else (512, 8, 256, 8, 256)
    x = torch.randn(b, t, h, generator=torch.Generator().manual_seed(0))
    variants = []
    w = None
    for label, body in SPELLINGS.items():
        text = (f"nnspec: 1\nname: spelling\ndims: {{h: {h}, e: {e}, f: {f}}}\ninputs:\n  x: float32[B, T, h]\n"
                f"outputs:\n  y: float32[B, T, e, f]\nbody: |\n  {body}\n")
        m = nnspec.build(text, opt=2).eval()
        if w is None:
            w = next(m.parameters()).detach().reshape(e, f, h)
        variants.append(Variant(label, (lambda m=m: m(x))))
    variants.append(Variant("torch.einsum", lambda: torch.einsum("bth,efh->btef", x, w)))
    return variants


# ---- report ----
def git_commit() -> str:
    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return head + (" with uncommitted changes" if dirty else "")


def machine() -> str:
    name, flags = "unknown CPU", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    amx = "AMX" if " amx_tile" in flags else "no AMX"
    avx512 = "AVX-512" if " avx512f" in flags else "no AVX-512"
    return f"{name} ({avx512}, {amx})"


def ms(v: Variant) -> str:
    return v.note if v.note else f"{1000 * statistics.median(v.times):.1f}"


def ratio(hf: float, v: Variant | None) -> str:
    if v is None or v.note or not v.times:
        return "-"
    return f"{hf / statistics.median(v.times):.2f}x"


def family_table(rows: list[tuple[str, str, list[Variant], Profile, Profile]]) -> list[str]:
    names = [v.name for v in rows[0][2]] if rows else []
    lines = ["| family | input | " + " | ".join(f"{n} (ms)" for n in names) + " | HF / -O0 | HF / -O2 | "
             "HF built last / -O2 | HF / -O2 + compile |", "|" + "---|" * (len(names) + 6)]
    ratios: dict[str, list[float]] = {HF: [], HF_LAST: []}
    for fam, shape, variants, _, _ in rows:
        by = {v.name: v for v in variants}
        hf = statistics.median(by[HF].times)
        cells = " | ".join(ms(by[n]) if n in by else "-" for n in names)
        o2 = by.get("nnspec -O2")
        cols = [ratio(hf, by.get("nnspec -O0")), ratio(hf, o2)]
        last = by.get(HF_LAST)
        cols.append(ratio(statistics.median(last.times), o2) if last is not None and last.times else "-")
        cols.append(ratio(hf, by.get("nnspec -O2 + compile")))
        lines.append(f"| {fam} | {shape} | {cells} | {' | '.join(cols)} |")
        if o2 is not None and not o2.note:
            for key in ratios:
                if key in by and by[key].times:
                    ratios[key].append(statistics.median(by[key].times) / statistics.median(o2.times))
    for key, values in ratios.items():
        if values:
            lines += ["", f"Geometric mean of {key} / nnspec -O2: {statistics.geometric_mean(values):.2f}x over "
                      f"{len(values)} families."]
    lines.append("")
    lines.append("Top ops of one nnspec -O2 call (self CPU time):")
    lines.append("")
    lines += [f"- {fam}: {prof.top}" for fam, _, _, _, prof in rows]
    lines += ["", "Share of self CPU time in the library kernels both sides call (BLAS products, convolutions, fused "
              "attention), and the ratio -O2 would reach with every other op free:", ""]
    lines += ceiling_table(rows)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: " + ", ".join(FAMILIES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-spellings", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat, 1 warm-up, no torch.compile")
    parser.add_argument("--output", type=Path, help="write this script's section of this Markdown file")
    parser.add_argument("--no-keep-heap", action="store_true",
                        help="leave glibc's allocator at its defaults (a fresh mmap, zeroed by page faults, for "
                             "each tensor over its threshold: HF's Mamba row then varies 2x between runs)")
    args = parser.parse_args()
    heap = "allocator defaults" if args.no_keep_heap else keep_heap()
    chosen = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in chosen if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown families {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    compile_ = not (args.no_compile or args.quick)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            start = time.perf_counter()
            variants, (hf, o2, inputs), shape = build_family(name, args.quick, compile_, Path(tmp))
            measure(variants, repeats, warmup)
            rows.append((name, shape, variants, profile_shares(hf, inputs), profile_shares(o2, inputs)))
            print(f"{name}: {', '.join(f'{v.name} {ms(v)}' for v in variants)} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    spellings: list[Variant] = []
    if not args.no_spellings:
        spellings = spelling_variants(args.quick)
        measure(spellings, max(repeats, 3), warmup)
    load_after = os.getloadavg()
    lines = [HEADING, "", f"Commit {git_commit()}; {machine()}; {torch.get_num_threads()} threads; torch "
             f"{torch.__version__}; {heap}; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
             + (" (machine loaded: figures are indicative only)" if max(load_before[0], load_after[0]) >
                0.5 * (os.cpu_count() or 1) else "") + ".",
             f"Command: `python benchmarks/cpu_families.py {' '.join(sys.argv[1:])}`"
             f"; medians of {repeats} interleaved rounds.", ""]
    lines += family_table(rows)
    if spellings:
        einsum = statistics.median(spellings[-1].times)
        lines += ["", "One contraction, four spellings (-O2), against torch.einsum of the same operands:", "",
                  "| spelling | ms | einsum / spelling |", "|---|---|---|"]
        lines += [f"| {v.name} | {ms(v)} | {einsum / statistics.median(v.times):.2f}x |" for v in spellings]
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_section(args.output, HEADING, text)


def replace_section(document: str, heading: str, text: str) -> str:
    """`document` with the section under the line `heading` replaced by `text`, up to the next `## ` heading or the
    end; everything else kept as it is. Only that exact line starts it: a longer heading that begins the same (a dated
    section after a quiet run) is another section. Without the section, `text` is appended."""
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)|^{re.escape(heading)}[ \t]*\Z", re.S | re.M)
    match = pattern.search(document)
    if match is None:
        return document.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    rest = document[match.end():]
    return document[:match.start()] + text.rstrip("\n") + ("\n\n" + rest if rest else "\n")


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace (or append) this script's section of the Markdown file `path`, atomically: a reader sees the old file
    or the new one, never half of it."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    write_atomic(path, replace_section(old, heading, text).encode("utf-8"))


if __name__ == "__main__":
    main()
