"""causal-into-mask (+ hoist-invariant, cse): a causal attention's padding mask and its causal triangle are combined
once per forward and handed to every layer; the attention (`mask_causal`) does not and the triangle in again.

Planted: GPT-2's and Llama's shape (`visible[B, T, S]` from `attention_mask`, causal attention in repeated layers).
Near misses: a masked attention that is not causal (must not gain causality), a causal one without a mask (keeps
SDPA's causal kernel), the mask absent (`attention_mask` left out: None and `is_causal`, as before). Numbers:
-O2 against -O0, against a plain-PyTorch softmax attention written here, and against transformers' Llama. The
emitted decoding step of Llama at -O2 (whose triangle now sits in the model's graph) is tested against the full
forward in test_decode_emitted.py.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import pytest
from test_absent_masks import GPT2_KEEP, GPT2_MASK, D, assert_equal_to_reference_and_o0, build, padding, reference, spec
from test_passes_support import assert_idempotent, assert_same_outputs, optimized, state

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

LLAMA = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 48, "vocab_size": 50}


def attentions(model) -> list:
    return [n for g in model.graphs() for n in g if n.op == "attention"]


def where_op(model, op: str) -> dict[str, int]:
    found = {g.name: sum(n.op == op for n in g) for g in model.graphs()}
    return {k: v for k, v in found.items() if v}


def test_llama_mask_combined_once_before_the_layers() -> None:
    model, opt, lines = optimized("examples/llama.yaml", **LLAMA)
    (att,) = attentions(opt)
    assert att.attrs["causal"] and att.attrs["mask_causal"]
    # the triangle and the and are built where the layers are run, once; the layer only reads the result
    assert where_op(opt, "causal_mask") == {"llama": 1} and where_op(opt, "logical_and") == {"llama": 1}
    assert any("[causal-into-mask]" in line for line in lines)
    assert state(opt) == state(model)
    assert_same_outputs(model, opt, T=6)
    assert_idempotent(opt)


def test_pass_alone_rewrites_only_causal_masked_attention() -> None:
    """Run by itself after `attention`: the mask input becomes `mask & causal_mask(query, key)`; non-causal and
    unmasked attentions are left as they are."""
    for causal, masked in ((True, True), (False, True), (True, False)):
        text = spec(GPT2_MASK, GPT2_KEEP, causal=causal)
        if not masked:
            text = text.replace("s = where(visible, where(causal_mask(T, S), s, -inf), -inf)",
                                "s = where(causal_mask(T, S), s, -inf)")
        model, opt, _ = optimized(text, passes="attention,causal-into-mask", B=2, T=5)
        (att,) = attentions(opt)
        graph = next(g for g in opt.graphs() if att in list(g))
        if causal and masked:
            both = graph[att.inputs[3]]
            assert att.attrs["mask_causal"] and both.op == "logical_and"
            tri = graph[both.inputs[1]]
            assert tri.op == "causal_mask" and (tri.attrs["q"].name, tri.attrs["k"].name) == ("T", "S")
        else:
            assert "mask_causal" not in att.attrs and att.attrs["causal"] == causal
            assert where_op(opt, "logical_and") == {}
        assert_same_outputs(model, opt, exact=True, B=2, T=5)


@pytest.mark.parametrize("causal", [True, False])
def test_generated_code_builds_the_mask_once_and_computes_the_same(causal: bool) -> None:
    text = spec(GPT2_MASK, GPT2_KEEP, causal=causal)
    source = compile_spec(text, opt=2, B=2, T=5).source
    blocks, model_forward = source.split("\nclass Att(")
    # the triangle: built once in the model's forward (only for a causal attention), never in a layer
    assert "tril()" not in blocks and model_forward.count("tril()") == (1 if causal else 0)
    assert bool(re.search(r"is_causal=\w+ is None", blocks)) == causal   # no mask given: the causal kernel
    model, x = assert_equal_to_reference_and_o0(text, GPT2_KEEP, causal)
    if not causal:   # a padding mask that is not causal did not become causal: later keys change the output
        with torch.inference_mode():
            causal_want = reference(model, x, torch.ones(2, 5, 5, dtype=torch.bool), True)
            assert not torch.allclose(model(x), causal_want, atol=1e-4)


def test_llama_with_padding_equals_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**LLAMA, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config.to_dict()), encoding="utf-8")
        o2 = nnspec.build("examples/llama.yaml", config=path, opt=2).eval()
    nnspec.load_weights(o2, hf.state_dict())
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])   # right padding: real tokens compared
    with torch.inference_mode():
        want = hf(ids, attention_mask=mask).logits
        got = o2(ids, attention_mask=mask)
        torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(o2(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_mask_also_read_outside_attention_stays_a_tensor_there() -> None:
    """`visible` is read by the layer itself too: it is still passed as a tensor; the combined mask, which only the
    attention reads, may be None (no `attention_mask`), and the numbers hold with and without a mask."""
    text = spec(GPT2_MASK, GPT2_KEEP, causal=True, extra=" * sum(where(visible, mean(x, over=d)[B, S], 0.0), over=S)")
    source = compile_spec(text, opt=2, B=2, T=5).source
    call = re.search(r"layer\(x, ([^)]*)\)", source)
    assert call is not None and call.group(1).count("if mask_given else None") == 1, call
    model, plain = build(text, 2), build(text, 0)
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for args in ((x,), (x, padding())):
            torch.testing.assert_close(model(*args), plain(*args), rtol=1e-5, atol=1e-5, equal_nan=True)
