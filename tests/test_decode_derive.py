"""The decoding derivation (`nnspec.compiler.decode`) and the step it drives (`backends.torch.decode`).

Cached decoding must equal recomputing the whole sequence: checked on random causal specs drawn by
`nnspec.testing.specs()` and on a retention scan, against the reference interpreter's full forward. Refusals are
located E015 errors. The static cache holds what the cost model counts, exports with torch.export and runs under
torch.compile without recompiling per step.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nnspec  # noqa: E402
from nnspec.backends.torch import Interpreter  # noqa: E402
from nnspec.backends.torch.decode import DecodeStep  # noqa: E402
from nnspec.compiler.cost import estimate  # noqa: E402
from nnspec.errors import SpecError  # noqa: E402
from nnspec.generate import decode_model  # noqa: E402
from nnspec.testing import specs  # noqa: E402

EXAMPLES = __import__("pathlib").Path(__file__).parent.parent / "examples"


def incremental(interp: Interpreter, model: Any, inputs: dict[str, torch.Tensor], prefill: int) -> torch.Tensor:
    """The first output of `model` computed by a prefill of `prefill` positions then one position per step."""
    dm, plan = decode_model(model)
    first = next(iter(model.inputs))
    seq_index = {name: [sympy_eq(a.size, plan.seq) for a in model.graph[node].tensor_type.axes].index(True)
                 for name, node in model.inputs.items()}
    batch = inputs[first].shape[0]
    length = inputs[first].shape[seq_index[first]]
    step = DecodeStep(interp, dm, plan, batch=batch, length=length)
    keys = torch.ones(batch, length, dtype=torch.int64)
    outs = []
    bounds = [(0, prefill), *((t, t + 1) for t in range(prefill, length))]
    for lo, hi in bounds:
        part = {n: x.narrow(seq_index[n], lo, hi - lo) for n, x in inputs.items()}
        outs.append(step(part.pop(first), torch.arange(lo, hi), keys, **part))
    out_t = model.graph[next(iter(model.outputs.values()))].tensor_type
    axis = [sympy_eq(a.size, plan.seq) for a in out_t.axes].index(True)
    return torch.cat(outs, dim=axis)


def sympy_eq(a: Any, b: Any) -> bool:
    import sympy
    return sympy.sympify(a) == b


CHECKS = [HealthCheck.filter_too_much, HealthCheck.too_slow]


@settings(max_examples=5, deadline=None, suppress_health_check=CHECKS)
@given(st.data())
def test_cached_decoding_equals_full_recompute_on_drawn_causal_specs(data: st.DataObject) -> None:
    cached_equals_full(data)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=CHECKS)
@given(st.data())
def test_cached_decoding_equals_full_recompute_on_many_drawn_specs(data: st.DataObject) -> None:
    cached_equals_full(data)


def cached_equals_full(data: st.DataObject) -> None:
    text = data.draw(specs(max_layers=2, max_blocks=2, max_width=16, max_chain=2, scans=True))
    assume("causal_mask" in text or "scan(" in text)     # causal attention, or a recurrence carrying a state
    result = nnspec.check(text)
    try:
        decode_model(result.model)
    except SpecError as e:
        assert e.code == "E015" and e.span is not None    # refused, and located
        assume(False)
    model = result.model
    free = sorted(model.dims.free)
    assume(len(free) == 2)
    interp = Interpreter(model, seed=1).eval()
    inputs = data.draw(nnspec.testing.inputs_for(result, min_size=2, max_size=6))
    first = next(iter(model.inputs))
    _, plan = decode_model(model)
    t_index = [sympy_eq(a.size, plan.seq) for a in model.graph[model.inputs[first]].tensor_type.axes]
    assume(any(t_index) and inputs[first].shape[t_index.index(True)] >= 3)
    with torch.no_grad():
        full = next(iter(interp(**inputs).values()))
        got = incremental(interp, model, inputs, prefill=2)
    torch.testing.assert_close(got, full, atol=2e-5, rtol=2e-5)


def test_retention_scan_state_is_the_cache() -> None:
    model = nnspec.check(EXAMPLES / "small" / "retention.yaml").model
    _, plan = decode_model(model)
    assert plan.sites == [] and len(plan.states) == 1
    interp = Interpreter(model, seed=0).eval()
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(incremental(interp, model, {"x": x}, prefill=4), interp(x=x)["y"])


def test_plan_classifies_llama() -> None:
    model = nnspec.check(EXAMPLES / "llama.yaml", num_hidden_layers=3).model
    _, plan = decode_model(model)
    assert str(plan.seq) == "T" and str(plan.batch) == "B"
    assert len(plan.sites) == 3                      # one cache entry per layer's attention
    assert sorted(plan.positions.values()) == ["positions", "rotary", "rotary"]
    assert plan.mask_input == "input_ids" or plan.mask_input is not None


def refusal(text: str) -> SpecError:
    with pytest.raises(SpecError) as e:
        decode_model(nnspec.check(text).model)
    assert e.value.code == "E015" and e.value.span is not None
    return e.value


SPEC = """nnspec: 1
name: probe
dims: {d: 8}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  attn(x): |
    q = linear(x, d, name=q)
    k = linear(x, d, name=k)[B, S, d]
    v = linear(x, d, name=v)[B, S, d]
    s[B, T, S] = q * k
    p = softmax(MASK, over=S)
    o[B, T, d] = p * v
    return o
body: |
  h = attn(x, name=a)
  y = EXTRA
"""


def probe(mask: str, extra: str = "h") -> str:
    return SPEC.replace("MASK", mask).replace("EXTRA", extra)


def test_refuses_non_causal_attention_over_the_sequence() -> None:
    text = probe("where(causal_mask(T, S), s, -inf)", "h + attn2(x, name=b)").replace(
        "body:", "  attn2(x): |\n    s[B, T, S] = x * x[B, S, d]\n    o[B, T, d] = softmax(s, over=S) * x[B, S, d]\n"
        "    return o\nbody:")
    e = refusal(text)
    assert "not causal" in str(e) and "probe" not in str(e).splitlines()[0][:1]


def test_refuses_a_sum_over_the_sequence() -> None:
    e = refusal(probe("where(causal_mask(T, S), s, -inf)", "h - mean(h, over=T)"))
    assert "mixes positions" in str(e) or "over the sequence" in str(e)


def test_refuses_an_encoder_with_no_causal_attention() -> None:
    with pytest.raises(SpecError) as e:
        decode_model(nnspec.check(EXAMPLES / "bert.yaml", num_hidden_layers=1).model)
    assert e.value.code == "E015"


def test_cache_bytes_equal_the_cost_model_and_what_is_allocated() -> None:
    model = nnspec.check(EXAMPLES / "llama.yaml", num_hidden_layers=2, hidden_size=64, intermediate_size=96,
                         num_attention_heads=8, num_key_value_heads=2, vocab_size=50).model
    dm, plan = decode_model(model)
    interp = Interpreter(model).eval()
    step = DecodeStep(interp, dm, plan, batch=3, length=20)
    # hand-derived: 2 layers x (k, v) x batch 3 x 2 kv heads x 20 positions x head_dim 8 x 4 bytes
    assert step.cache_bytes() == plan.cache_bytes(3, 20) == 2 * 2 * 3 * 2 * 20 * 8 * 4
    cost = estimate(nnspec.check(EXAMPLES / "llama.yaml", num_hidden_layers=2, hidden_size=64,
                                 intermediate_size=96, num_attention_heads=8, num_key_value_heads=2, vocab_size=50,
                                 B=3, T=20).model)
    assert int(cost.kv_bytes) == step.cache_bytes()


def test_export_and_compile_the_step_with_its_static_cache(tmp_path: Any) -> None:
    model = nnspec.check(EXAMPLES / "gpt2.yaml", n_layer=2, n_embd=32, n_head=4, vocab_size=50,
                         n_positions=32).model
    module = nnspec.build(EXAMPLES / "gpt2.yaml", n_layer=2, n_embd=32, n_head=4, vocab_size=50,
                          n_positions=32).eval()
    dm, plan = decode_model(model)
    step = DecodeStep(module, dm, plan, batch=2, length=16).eval()
    keys = torch.ones(2, 16, dtype=torch.int64)
    ids = torch.randint(0, 50, (2, 1))
    pos = torch.tensor([5])
    with torch.no_grad():
        expected = step(ids, pos, keys, position_ids=pos.expand(2, 1).clone())
        step.reset()
        exported = torch.export.export(step, (ids, pos, keys), {"position_ids": pos.expand(2, 1).clone()})
        got = exported.module()(ids, pos, keys, position_ids=pos.expand(2, 1).clone())
    torch.testing.assert_close(got, expected)
