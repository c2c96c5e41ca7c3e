"""-O2's linears on CPU: the `linear` helper runs oneDNN's fused linear (activation applied by the same call)
when autograd records nothing, and fuse-linear's concatenated weights are made once, not on every call.

Expected values come from the -O0 module (plain `F.linear` / `torch.cat`, the spec as written) holding the same
weights, or from the textbook formula; whether oneDNN ran is read from the profiler, not from our code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from _small_models import BERT, GPT2, LLAMA  # noqa: E402

import nnspec  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"
ONEDNN = "mkldnn::_linear_pointwise"
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
MODELS = {"gpt2": ("gpt2.yaml", GPT2, 97), "bert": ("bert.yaml", BERT, 97), "llama": ("llama.yaml", LLAMA, 97)}
# linears per layer that fuse-linear merges away: q/k/v -> one (BERT, Llama), gate/up -> one (Llama)
MERGED = {"gpt2": 0, "bert": 2 * BERT["num_hidden_layers"], "llama": 3 * LLAMA["num_hidden_layers"]}


@pytest.fixture(autouse=True)
def avx512(monkeypatch: pytest.MonkeyPatch) -> None:
    """oneDNN's linear runs only where the CPU has AVX-512 (see `runtime.runs_onednn`); these tests are about that
    path, so they run it on every machine (oneDNN has AVX2 kernels too, only slower than BLAS there)."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")


def pair(name: str) -> tuple[Any, Any, torch.Tensor]:
    example, dims, vocab = MODELS[name]
    plain = nnspec.build(EXAMPLES / example, opt=0, **dims).eval()
    fused = nnspec.build(EXAMPLES / example, opt=2, **dims).eval()
    fused.load_state_dict(plain.state_dict())
    return plain, fused, torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(0))


def ops_run(fn: Any) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events()]


# ---- oneDNN linears ----
@needs_onednn
@pytest.mark.parametrize("name", list(MODELS))
def test_o2_inference_runs_every_linear_in_onednn_and_matches_o0(name: str) -> None:
    plain, fused, ids = pair(name)
    with torch.inference_mode():
        want = plain(ids)
        plain_names = ops_run(lambda: plain(ids))
        names = ops_run(lambda: fused(ids))
        got = fused(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert ONEDNN not in plain_names                      # -O0 is the spec as written
    # every projection, each merged q/k/v and gate/up, and the LM head: no BLAS linear left
    assert names.count(ONEDNN) == plain_names.count("aten::linear") - MERGED[name] > 0
    assert "aten::linear" not in names and "aten::addmm" not in names


@needs_onednn
def test_gelu_epilogue_is_applied_by_the_linear() -> None:
    plain, fused, ids = pair("gpt2")
    with torch.no_grad():
        names = ops_run(lambda: fused(ids))
    assert "aten::gelu" not in names        # GPT-2's tanh GELU went into oneDNN's post-op
    with torch.no_grad():
        assert "aten::gelu" in ops_run(lambda: plain(ids))


@pytest.mark.parametrize("act", ["relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh"])
def test_each_activation_epilogue_matches_the_formula_nan_and_inf_included(act: str) -> None:
    spec = f"""nnspec: 1
name: epilogue_{act}
dims:
  d: 24
  f: 40
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, f]
body: |
  h = {act}(linear(x, f, name=proj))
  y = h * 2.0
"""
    # relu stays out of the linear: oneDNN's relu post-op makes NaN 0, torch.relu keeps it
    assert (f'activation="{act}"' in compile_spec(spec, opt=2).source) == (act != "relu")
    m = nnspec.build(spec, opt=2).eval()
    x = torch.randn(3, 5, 24, generator=torch.Generator().manual_seed(1))
    x[0, 0, 3], x[1, 2, 0], x[2, 4, 7] = float("nan"), float("inf"), -float("inf")
    w, b = m.proj.weight, m.proj.bias
    formulas = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
                "gelu_tanh": lambda v: torch.nn.functional.gelu(v, approximate="tanh"), "sigmoid": torch.sigmoid,
                "tanh": torch.tanh}
    with torch.no_grad():
        want = formulas[act](x @ w.T + b) * 2.0
        pre = x @ w.T + b        # one row of NaN, two rows of +-inf before the activation
        assert pre.isnan().all(dim=-1).sum() == 1 and pre.isinf().all(dim=-1).sum() == 2
        torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-5, equal_nan=True)
        if torch.backends.mkldnn.is_available():
            names = ops_run(lambda: m(x))
            assert ONEDNN in names and (f"aten::{act}" in names) == (act == "relu")


def test_activation_is_not_absorbed_when_the_linear_has_other_uses() -> None:
    spec = """nnspec: 1
name: shared
dims:
  d: 16
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
body: |
  pre = linear(x, d, name=proj)
  y = gelu(pre) + pre
"""
    m = nnspec.build(spec, opt=2).eval()
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pre = x @ m.proj.weight.T + m.proj.bias
        torch.testing.assert_close(m(x), torch.nn.functional.gelu(pre) + pre, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_training_and_disabled_onednn_fall_back_to_f_linear_with_the_same_gradients() -> None:
    plain, fused, ids = pair("gpt2")
    plain.train(), fused.train()
    outs = []
    for m in (plain, fused):
        torch.manual_seed(3)        # the same dropout masks
        names = ops_run(lambda m=m: outs.append(m(ids).square().mean()))
        assert ONEDNN not in names  # autograd records: oneDNN's linear has no backward
        outs[-1].backward()
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for n, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-3, atol=1e-6, msg=n)
    fused.eval()
    with torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        assert ONEDNN not in ops_run(lambda: fused(ids))


# ---- fused weights are concatenated once ----
def attention_of(bert: Any) -> Any:
    return next(m for m in bert.modules() if hasattr(m, "query") and hasattr(m, "key"))


def test_fused_qkv_weights_are_concatenated_once_in_inference() -> None:
    plain, fused, ids = pair("bert")
    with torch.inference_mode():
        fused(ids)
        cats = ops_run(lambda: fused(ids)).count("aten::cat")
    with torch.inference_mode():
        cats_o0 = ops_run(lambda: plain(ids)).count("aten::cat")
    assert cats == cats_o0           # none per call beyond what the spec itself concatenates
    att = attention_of(fused)
    weight = att.query.weight
    with torch.no_grad():
        fused(ids)
        kept = dict(att._fused_weights)
        fused(ids)
    assert all(att._fused_weights[k][2] is kept[k][2] for k in kept) and kept
    torch.testing.assert_close(next(v[2] for k, v in kept.items() if k.endswith("weight"))[: weight.shape[0]],
                               weight.detach())


def test_fused_weights_follow_loaded_and_modified_parameters() -> None:
    plain, fused, ids = pair("bert")
    with torch.no_grad():
        fused(ids)                                   # fill the cache with the old weights
        new = {k: torch.randn_like(v) * 0.02 if v.is_floating_point() else v
               for k, v in plain.state_dict().items()}
        plain.load_state_dict(new)
        fused.load_state_dict(new)                   # copies in place: the same tensors, new versions
        torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-5)
        for m in (plain, fused):
            attention_of(m).value.weight.mul_(3.0)   # an in-place edit of one part
        torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-5)
        for m in (plain, fused):
            att = attention_of(m)
            att.key.weight = torch.nn.Parameter(att.key.weight * -1.0)   # a replaced parameter
        torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-5)


def test_fused_weights_train_and_the_step_shows_in_inference() -> None:
    plain, fused, ids = pair("llama")
    for m in (plain, fused):
        with torch.no_grad():
            m(ids)                                   # a cached concatenation that training must not reuse
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=0.5)
        m(ids).square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters()
                   if n.endswith(("q_proj.weight", "gate_proj.weight", "up_proj.weight")))
        opt.step()
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-5)


def test_frozen_fused_weights_with_a_trainable_input_keep_autograd_working() -> None:
    """Frozen weights (as under LoRA) use the kept concatenation while autograd records the input; one made in
    inference mode must still be usable there."""
    spec = """nnspec: 1
name: frozen
dims:
  d: 12
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
body: |
  q = linear(x, d, name=q)
  k = linear(x, d, name=k)
  y = q * k
"""
    assert "cat_weights" in compile_spec(spec, opt=2).source      # q and k became one linear
    m = nnspec.build(spec, opt=2).eval().requires_grad_(False)
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        m(x)
    x.requires_grad_(True)
    m(x).sum().backward()
    q, k = x @ m.q.weight.T + m.q.bias, x @ m.k.weight.T + m.k.bias
    want = k @ m.q.weight + q @ m.k.weight          # d/dx sum(q * k)
    torch.testing.assert_close(x.grad, want, rtol=1e-4, atol=1e-5)


def test_o2_helpers_compile_whole_under_torch_compile() -> None:
    """Under tracing the helpers take F.linear and torch.cat: one graph, no break, the eager module's numbers."""
    plain, fused, ids = pair("bert")
    with torch.no_grad():
        want = plain(ids)
        fused(ids)                                   # a kept concatenation exists before compiling
        got = torch.compile(fused, fullgraph=True)(ids)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_explain_names_the_fused_activations_and_kept_concatenations() -> None:
    gpt2 = compile_spec(EXAMPLES / "gpt2.yaml", opt=2, **GPT2).explain
    llama = compile_spec(EXAMPLES / "llama.yaml", opt=2, **LLAMA).explain
    assert any(line.startswith("torch: mlp.c_fc: gelu_tanh applied by the linear") for line in gpt2)
    assert {line.split(":")[1].strip() for line in llama if "concatenated once" in line} == \
        {"self_attn.q_proj_k_proj_v_proj_weight", "mlp.gate_proj_up_proj_weight"}
    assert not [line for line in compile_spec(EXAMPLES / "gpt2.yaml", opt=0, **GPT2).explain if "torch:" in line]


def test_the_helper_table_covers_exactly_the_activations_the_emitter_fuses() -> None:
    from nnspec.backends.torch.helpers import LINEAR_ACTIVATIONS, source
    namespace: dict[str, Any] = {"torch": torch, "F": torch.nn.functional}
    exec(source("LINEAR_ACTIVATIONS"), namespace)
    assert set(namespace["LINEAR_ACTIVATIONS"]) == {"none", *LINEAR_ACTIVATIONS}


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_without_avx512_o2_runs_blas_linears_and_activations_apart(capability: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    plain, fused, ids = pair("gpt2")
    with torch.inference_mode():
        names = ops_run(lambda: fused(ids))
        torch.testing.assert_close(fused(ids), plain(ids), rtol=1e-4, atol=1e-5)
    assert ONEDNN not in names and "aten::linear" in names
    assert "aten::gelu" in names         # the epilogue runs after the BLAS product
