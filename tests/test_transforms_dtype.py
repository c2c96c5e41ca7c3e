"""--dtype: low-precision storage and compute with float32 islands; next-token top-1 agrees with float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _transforms_helpers import GPT2, LLAMA, checked, params_of, run, verify_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nnspec
from nnspec.backends.torch.transform_params import convert_params
from nnspec.compiler.ir import DType, TensorType
from nnspec.compiler.ops.registry import with_trait
from nnspec.compiler.transforms import TransformError, to_dtype
from nnspec.testing import inputs_for, specs

FP32_OPS = with_trait("keeps_float32")


def _bf16_exact(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in both precisions: the float32 reference gets the bfloat16-rounded values."""
    return {k: v.bfloat16().float() for k, v in params.items()}


def test_types_storage_and_islands() -> None:
    model = checked(GPT2)
    low = to_dtype(model, "bf16")
    verify_model(low)
    assert low.transforms == ["dtype bfloat16"]
    for g in low.graphs():
        for node in g:
            if node.op == "param":
                norm = all(u.op in ("layernorm", "rmsnorm") for u in g.users(node.name))
                assert node.attrs["type"].dtype == (DType.float32 if norm else DType.bfloat16), node.attrs["path"]
            if node.op in FP32_OPS:
                assert all(g[i].tensor_type.dtype == DType.float32 for i in node.inputs), node.name
                assert [u.op for u in g.users(node.name)] == ["cast"]
    # the interface is unchanged: int64 ids in, float32 logits out (computed in float32)
    assert low.graph[low.outputs["logits"]].type == model.graph[model.outputs["logits"]].type
    head = low.graph[low.outputs["logits"]]
    assert head.op == "einsum" and all(low.graph[i].tensor_type.dtype == DType.float32 for i in head.inputs)


@pytest.mark.parametrize("spec", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_bf16_next_token_top1_agrees_with_fp32(spec) -> None:
    model = checked(spec)
    params = _bf16_exact(params_of(model))
    low = to_dtype(model, "bf16")
    vocab = int(model.dims.concrete(model.dims.declared["vocab_size"]))
    x = {"input_ids": torch.randint(0, vocab, (16, 64), generator=torch.Generator().manual_seed(1))}
    want = run(model, params, x)["logits"]
    got = run(low, convert_params(model, params, dtype="bf16"), x)["logits"]
    assert got.dtype == torch.float32
    agree = (want.argmax(-1) == got.argmax(-1)).float().mean().item()
    assert agree >= 0.99, agree
    torch.testing.assert_close(got, want, atol=0.05, rtol=0.05)


def test_fp16_runs_and_low_precision_parameters_are_stored_so() -> None:
    model = checked(GPT2)
    low = to_dtype(model, "fp16")
    params = convert_params(model, params_of(model), dtype="fp16")
    assert params["h.0.attn.c_attn.weight"].dtype == torch.float16 and params["ln_f.weight"].dtype == torch.float32
    x = {"input_ids": torch.randint(0, 96, (2, 8))}
    assert torch.isfinite(run(low, params, x)["logits"]).all()


def test_refuses_a_bad_dtype() -> None:
    with pytest.raises(TransformError, match="--dtype takes bf16 or fp16, got 'int8'"):
        to_dtype(checked(GPT2), "int8")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_dtype_on_random_specs(data: st.DataObject) -> None:
    """Every drawn spec lowers: it verifies, keeps its interface, and runs to finite outputs close to float32
    (unless the spec branches on comparing float values, `where(h > 1, ...)`: rounding may cross the threshold,
    and then no tolerance holds)."""
    model = nnspec.check(data.draw(specs(max_width=16, max_layers=2))).model
    low = to_dtype(model, "bf16")
    verify_model(low)
    for name, node in low.outputs.items():
        assert low.graph[node].type == model.graph[model.outputs[name]].type
    params = _bf16_exact(params_of(model))
    inputs = data.draw(inputs_for(low))
    want = run(model, params, inputs)
    got = run(low, convert_params(model, params, dtype="bf16"), inputs)
    thresholds = _compares_floats(model)
    for name, w in want.items():
        assert got[name].dtype == w.dtype
        if w.dtype.is_floating_point and thresholds:
            assert torch.isfinite(got[name]).all() or not torch.isfinite(w).all(), name
        elif w.dtype.is_floating_point:
            scale = w.abs().max().clamp(min=1.0)
            assert ((got[name] - w).abs().max() / scale).item() < 0.1, name
    for g in low.graphs():
        for node in g:
            if node.op in FP32_OPS:
                assert all(not isinstance(g[i].type, TensorType) or not g[i].type.dtype.is_float
                           or g[i].type.dtype == DType.float32 for i in node.inputs)


def _compares_floats(model: nnspec.compiler.ir.Model) -> bool:
    """Does the model compute a bool from float values (a comparison: a threshold rounding can cross)?"""
    return any(isinstance(n.type, TensorType) and n.type.dtype == DType.bool and
               any(isinstance(g[i].type, TensorType) and g[i].type.dtype.is_float for i in n.inputs)
               for g in model.graphs() for n in g)


def test_o2_casts_a_bf16_models_float32_head_once_not_per_call() -> None:
    """The float32 LM head of a bf16 Llama reads its weight cast up: -O0 casts it on every call, -O2 once
    (`cast_weight`) until the weight changes. Expected values: the -O0 module holding the same weights."""
    dims = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=61)
    spec = Path(__file__).parent.parent / "examples" / "llama.yaml"
    plain = nnspec.build(spec, opt=0, transforms={"dtype": "bf16"}, **dims).eval()
    kept = nnspec.build(spec, opt=2, transforms={"dtype": "bf16"}, **dims).eval()
    kept.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 61, (2, 7), generator=torch.Generator().manual_seed(0))

    def head_casts(module: torch.nn.Module) -> int:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            module(ids)
        return sum(1 for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[:1] == [[61, 32]])

    with torch.no_grad():
        torch.testing.assert_close(kept(ids), plain(ids))
        assert head_casts(plain) == 1 and head_casts(kept) == 0
        new = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in plain.state_dict().items()}
        plain.load_state_dict(new)
        kept.load_state_dict(new)          # copied in place: a new version of the same tensors
        torch.testing.assert_close(kept(ids), plain(ids))
