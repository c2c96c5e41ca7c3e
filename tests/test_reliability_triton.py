"""Issue 22, items 6-8: the Triton target's generated file runs for every example, at every level, in inference
and in a training step, with kernels (TRITON_INTERPRET) and without (the torch fallbacks); generated names never
collide with a spec's names; odd text in a spec never breaks the generated file.

Expected values come from the torch target's module (its own tests compare it with transformers and plain torch)
given the same weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from _small_models import BERT, GPT2, LLAMA, VIT  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

import nnspec  # noqa: E402
from nnspec.backends.triton import runtime  # noqa: E402
from nnspec.compiler.analysis import estimate_parameter_bytes  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402
from nnspec.pipeline import LEVEL_OPTIONS  # noqa: E402
from nnspec.testing import inputs_for  # noqa: E402
from tools.fuzz import shrink_dims  # noqa: E402

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
SMALL = {"gpt2": GPT2, "llama": LLAMA, "bert": BERT, "vit": VIT,
         "mixtral": {**LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2}}
CASES = {p.stem: (p, SMALL.get(p.stem, {})) for p in [*sorted(EXAMPLES.glob("*.yaml")),
                                                      *sorted((EXAMPLES / "small").glob("*.yaml"))]}
LEVELS = sorted(LEVEL_OPTIONS)
# the examples item 6 named, in the default run (a few seconds); every example at every level is marked slow
QUICK = ["graph_transformer", "llama", "moe", "recursive", "vit"]


def _pair(case: str, opt: int) -> tuple[Any, Any, dict[str, Any]]:
    spec, dims = CASES[case]
    dims = dims or shrink_dims(spec.read_text()) or {}
    result = nnspec.check(spec, **dims)
    if estimate_parameter_bytes(result.model) > 64 << 20:
        pytest.skip(f"{case}: no small configuration here yet (an example added since)")
    torch.manual_seed(0)
    reference = nnspec.build(spec, opt=opt, **dims)
    module = nnspec.build(spec, target="triton", opt=opt, **dims)
    module.load_state_dict(reference.state_dict())
    drawn: list[dict[str, Any]] = []

    @settings(max_examples=1, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(inputs_for(result, min_size=2, max_size=8))
    def draw(x: dict[str, Any]) -> None:
        drawn.append(x)
    draw()
    return module, reference, drawn[0]


def _outputs(module: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    out = module(**inputs)
    return out if isinstance(out, dict) else {"out": out}


def _loss(out: dict[str, Any]) -> Any:
    return sum(v.float().sum() for v in out.values() if v.is_floating_point())


def _agree(case: str, opt: int) -> None:
    """Inference, then one training step: the Triton-target module computes the torch module's outputs and
    gradients."""
    module, reference, inputs = _pair(case, opt)
    with torch.no_grad():
        got, want = _outputs(module.eval(), inputs), _outputs(reference.eval(), inputs)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4, equal_nan=True)
    grads = []
    for m in (module, reference):
        m.train().zero_grad()
        torch.manual_seed(1)   # the same dropout masks, where the fallback draws them as torch does
        loss = _loss(_outputs(m, inputs))
        if not loss.requires_grad:
            return
        loss.backward()
        grads.append({k: p.grad for k, p in m.named_parameters() if p.grad is not None})
    assert sorted(grads[0]) == sorted(grads[1])


@pytest.mark.parametrize("case", QUICK)
def test_every_example_runs_on_the_torch_fallbacks_at_O0(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU and no interpreter at -O0 (where only the fallbacks called F): the `F` NameError of item 6."""
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    _agree(case, 0)


@pytest.mark.slow
@pytest.mark.parametrize("opt", LEVELS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_example_runs_on_the_torch_fallbacks(case: str, opt: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU and no interpreter: every launcher runs its `*_torch` fallback (the `F` NameError of item 6)."""
    monkeypatch.setattr(runtime, "interpreting", lambda: False)
    _agree(case, opt)


@pytest.mark.slow
@pytest.mark.parametrize("opt", LEVELS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_example_runs_in_the_interpreter(case: str, opt: int) -> None:
    """With TRITON_INTERPRET (tests/conftest.py sets it): kernels in inference, fallbacks under autograd."""
    assert runtime.interpreting()
    _agree(case, opt)


def test_the_fallback_only_file_imports_functional() -> None:
    """A model whose only `F.` calls are in a kernel's torch fallback (gelu in a fused chain) still imports F."""
    text = """
nnspec: 1
name: only_fallback
dims:
  d: 8
inputs:
  x: float32[n, d]
outputs:
  y: float32[n, d]
body: |
  y = gelu(x) * 2.0 + x
"""
    src = compile_spec(text, target="triton", opt=0).source
    if "F." in src.split("class ", 1)[0]:
        assert "import torch.nn.functional as F" in src
    module = nnspec.build(text, target="triton", opt=0)
    x = torch.randn(3, 8)
    runtime_interp = runtime.interpreting
    try:
        runtime.interpreting = lambda: False  # type: ignore[assignment]
        got = module(x=x)
    finally:
        runtime.interpreting = runtime_interp  # type: ignore[assignment]
    torch.testing.assert_close(got, torch.nn.functional.gelu(x) * 2.0 + x)



# ---- item 7: generated names never collide with a spec's ----
NAMED = """nnspec: 1
name: NAME
dims:
  d: 4
inputs:
  IN: float32[B, d]
outputs:
  OUT: float32[B, d]
body: |
  VAR = gelu(IN) * 2.0 + IN
  h_kernel = relu(VAR) + 1.0
  h = exp(h_kernel) * 3.0
  OUT = h + VAR
"""
COLLIDING = {
    "output K": {"OUT": "K"}, "output torch": {"OUT": "torch"}, "output shape": {"OUT": "shape"},
    "input shape": {"IN": "shape"}, "input block": {"IN": "block"}, "variable block": {"VAR": "block"},
    "variable like a launcher": {"VAR": "m_h"}, "variable like a fallback": {"VAR": "m_elementwise_0_torch"},
    "model named _": {"NAME": "_"}, "model name of 300 characters": {"NAME": "m" * 300},
}


@pytest.mark.parametrize("interpret", [True, False], ids=["kernels", "fallbacks"])
@pytest.mark.parametrize("case", sorted(COLLIDING))
def test_spec_names_never_shadow_generated_names(case: str, interpret: bool, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("NNSPEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "interpreting", lambda: interpret)
    names = {"NAME": "m", "IN": "x", "OUT": "y", "VAR": "v", **COLLIDING[case]}
    text = NAMED
    for key, value in names.items():
        text = text.replace(key, value)
    module = nnspec.build(text, target="triton", opt=2)
    x = torch.randn(3, 4)
    got = module(**{names["IN"]: x})
    v = torch.nn.functional.gelu(x) * 2.0 + x         # the spec, in plain torch
    want = torch.exp(torch.relu(v) + 1.0) * 3.0 + v
    torch.testing.assert_close(got, want)


def test_a_reserved_input_name_is_a_located_error() -> None:
    """Inputs are forward()'s keyword arguments and cannot be renamed: `K` (the kernel library) is refused."""
    text = NAMED.replace("NAME", "m").replace("IN", "K").replace("OUT", "y").replace("VAR", "v")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.build(text, target="triton", opt=2)
    assert info.value.code == "E004" and info.value.span is not None and info.value.span.line == 6


# ---- item 8: a lone surrogate cannot reach the generated class ----
def test_a_lone_surrogate_in_doc_is_refused_where_it_is_written() -> None:
    text = NAMED.replace("NAME", "m\ndoc: \"\\ud800 model\"").replace("IN", "x").replace("OUT", "y")
    text = text.replace("VAR", "v")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text)
    assert info.value.code == "E004" and info.value.span is not None and info.value.span.line == 3
