"""The Triton target: generated modules agree with the torch target, and their work runs inside kernels.

Kernels run in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1 when there is no GPU). The torch
target's module, holding the same weights, is the reference: it is what `nnspec compile --target torch` writes
and is itself tested against the interpreter and Hugging Face models.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET", "") in ("", "0") and not torch.cuda.is_available():
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)

import hypothesis.strategies as st  # noqa: E402
from _small_models import BERT, GPT2, LLAMA, VIT  # noqa: E402
from hypothesis import given, settings  # noqa: E402

import nnspec  # noqa: E402
from nnspec.backends.torch.options import TorchOptions  # noqa: E402
from nnspec.backends.triton import runtime  # noqa: E402
from nnspec.backends.triton.lowering import MATMUL, NOT_COMPUTE, TABLE  # noqa: E402
from nnspec.compiler.ir import Model, repeat_counts  # noqa: E402
from nnspec.compiler.ops import OPS  # noqa: E402
from nnspec.compiler.passes import level_label, optimize  # noqa: E402
from nnspec.generated import cache_dir, compile_spec, load_source  # noqa: E402
from nnspec.pipeline import LEVEL_OPTIONS  # noqa: E402
from nnspec.testing import inputs_for  # noqa: E402

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
SPECS = Path(__file__).parent / "golden" / "triton"
CASES: dict[str, tuple[Path, dict[str, Any]]] = {
    "gpt2": (EXAMPLES / "gpt2.yaml", GPT2), "llama": (EXAMPLES / "llama.yaml", LLAMA),
    "bert": (EXAMPLES / "bert.yaml", BERT), "vit": (EXAMPLES / "vit.yaml", VIT),
    **{p.stem: (p, {}) for p in sorted((EXAMPLES / "small").glob("*.yaml"))},
    **{p.stem: (p, {}) for p in sorted(SPECS.glob("*.yaml"))},
}
TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float16: {"rtol": 2e-3, "atol": 2e-3},
       torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}
USED: dict[str, set[str]] = {}   # op -> how the compiled test models lowered it (checked by the last test)


@functools.cache
def pair(case: str, opt: int = 2) -> tuple[Any, Any, Any]:
    """(check result, Triton-target module, torch-target module with the same weights)."""
    from nnspec.backends.triton.codegen import TritonModuleGen
    spec, dims = CASES[case]
    result = nnspec.check(spec, **dims)
    torch.manual_seed(0)
    reference = nnspec.build(spec, opt=opt, **dims)
    model = optimize(result.model, level=opt, training=True) if opt else result.model
    gen = TritonModuleGen(model, spec_text=result.spec.source.text, doc=None, label=level_label(model, opt),
                          options=TorchOptions.from_mapping(LEVEL_OPTIONS[opt]))
    source = gen.generate()
    for op, how in gen.used.items():
        USED.setdefault(op, set()).update(how)
    module = getattr(load_source(source, result.model.name, cache_dir()), gen.model_class)()
    module.load_state_dict(reference.state_dict())
    return result, module.eval(), reference.eval()


def outputs(module: Any, names: list[str], inputs: dict[str, Any]) -> dict[str, Any]:
    out = module(**inputs)
    return out if isinstance(out, dict) else {names[0]: out}


def assert_agree(case: str, inputs: dict[str, Any]) -> None:
    result, module, reference = pair(case)
    names = list(result.model.outputs)
    with torch.no_grad():
        got, want = outputs(module, names, inputs), outputs(reference, names, inputs)
    for name in names:
        tol = TOL.get(want[name].dtype, {"rtol": 0, "atol": 0})
        torch.testing.assert_close(got[name], want[name], equal_nan=True, **tol)


# ---- the lowering table ----
def test_every_op_has_a_kernel_or_a_stated_fallback() -> None:
    assert set(TABLE) == set(OPS)
    for op, entry in TABLE.items():
        assert entry.kernel or entry.fallback, op


# ---- models through the Triton target ----
@pytest.mark.parametrize("case", list(CASES))
@settings(max_examples=2, deadline=None)
@given(data=st.data())
def test_triton_module_agrees_with_the_torch_module(case: str, data: st.DataObject) -> None:
    result, _, _ = pair(case)
    inputs = data.draw(inputs_for(result, max_size=6), label="inputs")
    assert_agree(case, inputs)


def _countable(model: Model) -> int:
    """Compute ops (not sources, structure, views or matmuls) one forward runs, iterations counted."""
    def count(graph_name: str | None) -> int:
        graph = model.graph if graph_name is None else model.templates[graph_name]
        total = 0
        for node in graph:
            if node.op in ("call", "repeat"):
                for block, n in repeat_counts(node.attrs, weights=False).items() if node.op == "repeat" else \
                        [(node.attrs["block"], 1)]:
                    total += n * count(block)
            elif node.op not in NOT_COMPUTE and node.op not in MATMUL:
                total += 1
        return total
    return count(None)


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_most_non_matmul_work_runs_inside_kernels(case: str) -> None:
    result, module, reference = pair(case)
    inputs = {"input_ids": torch.randint(0, 90, (2, 16))}
    runtime.reset()
    with torch.no_grad():
        got = module(**inputs)
    counted = sum(runtime.OPS.values())
    total = _countable(optimize(result.model, level=2, training=True))
    assert not runtime.FALLBACKS, dict(runtime.FALLBACKS)
    assert counted <= total
    assert counted / total >= 0.8, (counted, total, dict(runtime.OPS))
    with torch.no_grad():
        torch.testing.assert_close(got, reference(**inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["gpt2", "llama"])
def test_bf16_models_run_in_kernels_and_agree(case: str) -> None:
    """`--dtype bf16` (storage and compute in bf16, fp32 norms, softmax and logits) through the Triton target."""
    spec, dims = CASES[case]
    torch.manual_seed(0)
    reference = nnspec.build(spec, opt=2, transforms={"dtype": "bf16"}, **dims).eval()
    module = nnspec.build(spec, target="triton", opt=2, transforms={"dtype": "bf16"}, **dims).eval()
    module.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 90, (2, 16))
    runtime.reset()
    with torch.no_grad():
        got, want = module(input_ids=ids), reference(input_ids=ids)
    assert not runtime.FALLBACKS and sum(runtime.OPS.values()) > 0
    torch.testing.assert_close(got, want, **TOL[torch.bfloat16])


# ---- generated kernels ----
UNARY = ["-{}", "abs", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "exp({})", "sqrt(abs({}) + 0.5)",
         "log(abs({}) + 0.5)", "rsqrt(abs({}) + 0.5)"]
BINARY = ["{} + {}", "{} - {}", "{} * {}", "{} / (abs({}) + 0.5)", "max({}, {})", "min({}, {})",
          "where({} > {}, {}, {})", "clamp({}, min=-0.75, max=1.5) + {}"]


@st.composite
def chains(draw: st.DrawFn) -> tuple[str, str]:
    """A random pointwise expression over x[B, T, D], y[T, D] (broadcast) and z[D, B, T] (permuted)."""
    leaves = ["x", "y", "z"]

    def expr(depth: int) -> str:
        if depth == 0 or draw(st.integers(0, 4)) == 0:
            return draw(st.sampled_from(leaves))
        if draw(st.booleans()):
            f = draw(st.sampled_from(UNARY))
            inner = expr(depth - 1)
            return f.format(inner) if "{}" in f else f"{f}({inner})"
        f = draw(st.sampled_from(BINARY))
        a, b = expr(depth - 1), expr(depth - 1)
        return f.format(a, b, a, b) if f.count("{}") == 4 else f.format(a, b)
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    return expr(draw(st.integers(1, 4))), dtype


def chain_spec(body: str, dtype: str) -> str:
    return f"""nnspec: 1
name: chain
dims: {{D: 7}}
inputs:
  x: {dtype}[B, T, D]
  y: {dtype}[T, D]
  z: {dtype}[D, B, T]
outputs:
  out: {dtype}[B, T, D]
body: |
  out = cast(x + ({body}), "{dtype}")
"""


@settings(max_examples=15, deadline=None)
@given(chain=chains(), data=st.data())
def test_random_pointwise_chains_run_in_generated_kernels(chain: tuple[str, str], data: st.DataObject) -> None:
    body, dtype = chain
    text = chain_spec(body, dtype)
    result = nnspec.check(text)
    module = nnspec.build(text, target="triton", opt=2).eval()
    reference = nnspec.build(text, opt=0).eval()
    inputs = data.draw(inputs_for(result, max_size=5), label="inputs")
    runtime.reset()
    with torch.no_grad():
        got, want = module(**inputs), reference(**inputs)
    assert not runtime.FALLBACKS and runtime.LAUNCHES
    assert all(name.startswith("chain_") for name in runtime.LAUNCHES)   # generated, not templates
    pointwise = sum(1 for n in optimize(result.model, level=2, training=True).graph if TABLE[n.op].kernel
                    and n.op not in ("input",))
    assert sum(runtime.OPS.values()) == pointwise
    if dtype == "float32":
        torch.testing.assert_close(got, want, equal_nan=True, **TOL[want.dtype])
        return
    # In fp16/bf16 a 1-ulp difference in an intermediate (a transcendental's last fp32 bit deciding a rounding)
    # can grow through cancellation, for torch as for the kernel. So each element is within the tolerance of
    # torch's value, or no further than twice torch's own error from the same chain computed in float32.
    exact = nnspec.build(chain_spec(body, "float32"), opt=0).eval()
    with torch.no_grad():
        ref = exact(**{k: v.float() for k, v in inputs.items()})
    tol = TOL[want.dtype]
    near = (got.float() - want.float()).abs() <= tol["atol"] + tol["rtol"] * want.float().abs()
    no_worse = (got.float() - ref).abs() <= 2 * (want.float() - ref).abs() + tol["atol"] / 10
    same_nan = got.isnan() & want.isnan()
    assert bool((near | no_worse | same_nan).all()), (got, want, ref)


def test_matmul_epilogue_kernels_fuse_bias_activation_and_residual() -> None:
    text = """nnspec: 1
name: epi
dims: {D: 24, F: 40}
inputs:
  x: float32[B, T, D]
  r: float32[B, T, F]
outputs:
  y: float32[B, T, F]
body: |
  y = silu(linear(x, F, name=up)) * gelu_tanh(linear(x, F, bias=false, name=gate)) + r
"""
    compiled = compile_spec(text, target="triton", opt=2)
    assert "tl.dot(" in compiled.source and compiled.source.count("@triton.autotune") == 2
    torch.manual_seed(0)
    reference = nnspec.build(text, opt=2).eval()
    module = nnspec.build(text, target="triton", opt=2).eval()
    module.load_state_dict(reference.state_dict())
    x, r = torch.randn(2, 5, 24), torch.randn(2, 5, 40)
    runtime.reset()
    with torch.no_grad():
        torch.testing.assert_close(module(x=x, r=r), reference(x=x, r=r), **TOL[torch.float32])
    epilogues = [k for k in runtime.LAUNCHES if "epilogue" in k]
    assert len(epilogues) == 2 and not runtime.FALLBACKS


def test_dropout_in_kernels_keeps_the_expected_fraction_while_training() -> None:
    text = """nnspec: 1
name: drop
inputs:
  x: float32[N]
outputs:
  y: float32[N]
body: |
  y = dropout(x * 2, 0.25)
"""
    module = nnspec.build(text, target="triton", opt=2)
    x = torch.ones(20000)
    with torch.no_grad():
        module.eval()
        assert torch.equal(module(x=x), 2 * x)
        module.train()
        y = module(x=x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2 / 0.75))


# ---- when kernels cannot run, and training ----
def test_without_a_gpu_or_the_interpreter_the_module_runs_torch_code(monkeypatch: pytest.MonkeyPatch) -> None:
    _, module, reference = pair("gpt2")
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    inputs = {"input_ids": torch.randint(0, 90, (1, 9))}
    runtime.reset()
    with torch.no_grad():
        torch.testing.assert_close(module(**inputs), reference(**inputs), rtol=1e-5, atol=1e-5)
    assert not runtime.LAUNCHES and runtime.FALLBACKS


def test_training_step_matches_the_torch_module() -> None:
    _, module, reference = pair("llama")
    ids = torch.randint(0, 100, (2, 12))
    grads = []
    for m in (module, reference):
        m.zero_grad()
        m(input_ids=ids).logsumexp(-1).mean().backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
        m.zero_grad()
    for key in grads[1]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-5, msg=key)


# ---- files ----
def test_build_writes_the_module_to_the_cache_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNSPEC_CACHE_DIR", str(tmp_path))
    text = chain_spec("relu(y) * z", "float32").replace("name: chain", "name: cached")
    nnspec.build(text, target="triton", opt=2)
    files = list((tmp_path / "generated").glob("cached_*.py"))
    assert len(files) == 1 and "@triton.jit" in files[0].read_text()


def test_compile_command_writes_the_triton_module(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nnspec.cli import app
    runner = CliRunner()
    spec = EXAMPLES / "llama.yaml"
    sets = [a for k, v in LLAMA.items() for a in ("--set", f"{k}={v}")]
    res = runner.invoke(app, ["compile", str(spec), "--target", "triton", "-O2", "-o", str(tmp_path), *sets])
    assert res.exit_code == 0, res.output
    text = (tmp_path / "llama.py").read_text()
    assert "@triton.jit" in text and "K.rotary(" in text and "K.attention(" in text and "K.rmsnorm(" in text
    again = compile_spec(spec, target="triton", opt=2, **LLAMA).source
    assert again == text   # deterministic
    res = runner.invoke(app, ["compile", str(spec), "--target", "triton", "-O2", "--explain", "-o", str(tmp_path),
                              *sets])
    assert res.exit_code == 0, res.output
    lines = [line.strip() for line in res.output.splitlines()]
    # the fused q/k/v and gate/up weights are concatenated by torch, once; the rest has kernels
    assert "torch fallback: concat (copy into one tensor: torch.cat (fused weights: once, kept until they change))" \
        in lines
    assert "torch: mlp.gate_proj_up_proj_weight: concatenated once and kept until a part changes (while its " \
        "layers are plain nn.Linear: a wrapped layer, e.g. by PEFT, is called instead)" in lines
    assert {"template kernel: rotary", "template kernel: attention", "template kernel: rmsnorm"} <= set(lines)
    assert any(line.startswith("kernel mlp_elementwise_0: silu, mul over [B, T, intermediate_size]") for line in lines)


def test_every_lowering_entry_was_exercised() -> None:
    """Run last in this file: every op the test models contain went through its table entry."""
    for case in CASES:
        pair(case)
        pair(case, 0)
    missing = sorted(set(TABLE) - set(USED) - {"input"})
    assert not missing, f"lowering-table entries no test model executes: {missing}"
    for op, entry in TABLE.items():
        if entry.kernel and op in USED:
            assert USED[op] & {"kernel", "template"}, f"{op} never ran in a kernel: {USED[op]}"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gpt2", "llama", "bert", "pointwise", "math_and_gradients"])
def test_generated_kernels_compile_for_a_gpu(case: str, tmp_path: Path) -> None:
    """Every kernel generated for a model compiles to sm_90 machine code (no GPU needed), with its operands in
    their IR dtypes and with float operands in bf16: catches what the interpreter accepts and the GPU compiler
    does not."""
    import subprocess
    import sys
    import textwrap
    spec, dims = CASES[case]
    code = textwrap.dedent(f"""
        import warnings
        warnings.filterwarnings("ignore")
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        import nnspec
        from nnspec.backends.torch.options import TorchOptions
        from nnspec.backends.triton.codegen import TritonModuleGen
        from nnspec.compiler.passes import optimize
        from nnspec.generated import cache_dir, load_source

        result = nnspec.check({str(spec)!r}, **{dims!r})
        model = optimize(result.model, level=2, training=True)
        gen = TritonModuleGen(model, spec_text="", doc=None, label="-O2",
                              options=TorchOptions(fused_linear=True, sdpa=True))
        module = load_source(gen.generate(), result.model.name, cache_dir())
        kernels = [k for k in gen.kernels.values() if not isinstance(k, str)]
        assert kernels
        tl_type = dict(float32="fp32", float16="fp16", bfloat16="bf16", int64="i64", int32="i32", bool="i1")
        consts = dict(TRAINING=True, BLOCK=1024, UPCAST=False, BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
        for low in (None, "bf16"):
            for k in kernels:
                fn = getattr(module, k.name + "_kernel")
                fn = fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn
                c = {{a: v for a, v in consts.items() if a in fn.arg_names}}
                types = {{p: tl_type[d.value] for p, d in k.pointers.items()}}
                if low:
                    types = {{p: low if t == "fp32" else t for p, t in types.items()}}
                if "IEEE" in fn.arg_names:
                    c["IEEE"] = low is None
                sig = {{a: "constexpr" if a in c else "*" + types[a] if a in types else "i32" for a in fn.arg_names}}
                triton.compile(ASTSource(fn=fn, signature=sig, constexprs=c), target=GPUTarget("cuda", 90, 32))
        print("compiled", len(kernels))
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"NNSPEC_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True, capture_output=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled" in done.stdout
