"""The decoding step written into the generated file (`decode_step` methods and `<Model>Decoder`) at every -O level.

Expected values: Hugging Face `generate` (transformers models from small configs, random weights) for the tokens,
and the node-by-node reference step (`DecodeStep`) for every step's logits; `torch.export` of the emitted step
against its eager run; the Triton target's explain output names the cache attention's kernel.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _decode_models import left_padded, pair  # noqa: E402

import nnspec  # noqa: E402
import nnspec.testing  # noqa: E402
from nnspec.cli import app  # noqa: E402
from nnspec.errors import SpecError  # noqa: E402
from nnspec.generate import Decoder, decode_model, emitted_decoder  # noqa: E402
from nnspec.pipeline import Pipeline  # noqa: E402
from nnspec.testing import specs  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"
NEW = 6


@pytest.mark.parametrize(("name", "opt"), [("gpt2", 0), ("gpt2", 1), ("gpt2", 2), ("llama", 0), ("llama", 2),
                                           ("mixtral", 2)])
def test_emitted_step_gives_hf_tokens_and_the_reference_logits(name: str, opt: int, tmp_path: Path) -> None:
    hf, ours = pair(name, tmp_path, opt=opt)
    decoder = Decoder(ours)
    ids, mask = left_padded(seed=4)
    length = ids.shape[1] + NEW
    step = decoder.step(3, length)
    assert type(step).__name__ == type(ours).__name__ + "Decoder"    # the generated file's, not the reference
    emitted: list[torch.Tensor] = []
    reference: list[torch.Tensor] = []
    got = decoder.generate(ids, mask, max_new_tokens=NEW, step=step, output_logits=emitted)
    ref = decoder.generate(ids, mask, max_new_tokens=NEW, step=decoder.reference_step(3, length),
                           output_logits=reference)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    assert torch.equal(got, theirs)
    assert torch.equal(ref, theirs)
    assert len(emitted) == len(reference) == NEW
    for i, (a, b) in enumerate(zip(emitted, reference, strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"step {i}: {m}")


def _source(opt: int, target: str = "torch") -> str:
    return Pipeline(EXAMPLES / "gpt2.yaml").artifact(target=target, opt=opt).source


def _method(source: str, cls: str, name: str = "decode_step") -> str:
    """The text of `cls.name` in a generated file."""
    body = source[source.index(f"\nclass {cls}("):]
    body = body[:body.index("\nclass ", 1)] if "\nclass " in body[1:] else body
    start = body.index(f"    def {name}(")
    end = body.find("\n    def ", start + 1)
    return body[start:end if end > 0 else None]


@pytest.mark.parametrize("opt", [0, 2])
def test_the_step_is_readable_code_with_the_forwards_lowering(opt: int) -> None:
    source = _source(opt)
    attention = _method(source, "Attention")
    assert "kv = cache.pop(0)" in attention
    # the cache is stored as the attention reads it, [B, heads, S, d]: the new keys are transposed in, not the
    # whole cache out: SDPA reads the cache contiguous
    assert "kv.keys.index_copy_(2, cache_position, k.transpose(1, 2))" in attention
    assert "kv.values.index_copy_(2, cache_position, v.transpose(1, 2))" in attention
    forward = _method(source, "Attention", "forward")
    # the level's attention lowering in both: SDPA at -O2, spelled out (softmax of the scores) at -O0
    sdpa = "F.scaled_dot_product_attention(" in attention
    assert sdpa == (opt == 2) == ("F.scaled_dot_product_attention(" in forward)
    assert ("kv.keys.transpose(" not in attention) == sdpa   # SDPA reads the cache as stored
    assert "shape = (batch, N_HEAD, length, HEAD_DIM)" in source
    # the mask handed to the layers (at -O2 with the causal triangle and-ed in, `causal-into-mask`)
    assert re.search(r"layer\.decode_step\(h, (visible|allowed), cache, cache_position, cache_mask\)",
                     _method(source, "Gpt2"))
    # -O2: the step's linears read the weight layout the Decoder chose (`decode_layout`); the MLP gets a step for
    # it. -O0 keeps the plainest code: the step's linears are the forward's nn.Linear calls, no layouts
    assert ("step_linear(" in source) == ("step_gemv(" in source) == ("def linear(" in source) == (opt == 2)
    if opt == 2:
        mlp = _method(source, "Mlp")
        assert "step_linear(self.c_fc, x" in mlp and "step_linear(self.c_proj, h)" in mlp
        assert 'STEP_WEIGHTS = (("c_fc", "weight"), ("c_proj", "weight"))' in source
        assert 'logits = step_gemv(self, "wte.weight", self.ln_f(h), self.wte.weight)' in _method(source, "Gpt2")
        assert "self.mlp.decode_step(" in _method(source, "Layer")
        assert "step_" not in _method(source, "Mlp", "forward")
    else:
        assert "class Gpt2Decoder(nn.Module):" in source and "weight_layout" not in source
    assert "class Gpt2Decoder(nn.Module):" in source
    compile(source, "gpt2.py", "exec")


def test_export_of_the_emitted_step_runs_and_mutates_its_cache() -> None:
    module = nnspec.build(EXAMPLES / "gpt2.yaml", n_layer=2, n_embd=32, n_head=4, vocab_size=50,
                          n_positions=32).eval()
    decoder = Decoder(module)
    step = decoder.step(2, 16)
    assert type(step).__name__ == "Gpt2Decoder"
    keys = torch.ones(2, 16, dtype=torch.int64)
    ids = torch.randint(0, 50, (2, 1), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([5])
    positions = pos.expand(2, 1).clone()
    with torch.no_grad():
        expected = step(ids, pos, keys, position_ids=positions)
        written = step.cache[0].keys[:, :, 5].clone()
        step.reset()
        assert not step.cache[0].keys.any()
        exported = torch.export.export(step, (ids, pos, keys), {"position_ids": positions})
        run = exported.module()
        got = run(ids, pos, keys, position_ids=positions)
    torch.testing.assert_close(got, expected)
    # the exported program writes the same buffers: the step's cache holds the new token's keys again
    assert run.get_buffer("cache.0.keys").data_ptr() == step.cache[0].keys.data_ptr()
    torch.testing.assert_close(step.cache[0].keys[:, :, 5], written)
    assert written.abs().sum() > 0


@pytest.mark.parametrize("spec", ["gpt2", "llama"])
def test_a_prefill_for_the_last_position_only_cuts_before_the_head(spec: str) -> None:
    dims = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=50) if spec == "gpt2" else \
        dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=50)
    module = nnspec.build(EXAMPLES / f"{spec}.yaml", opt=2, **dims).eval()
    source = Pipeline(EXAMPLES / f"{spec}.yaml").artifact(opt=2).source
    assert "        if last_only:  # only the last position's outputs are wanted" in source
    decoder = Decoder(module)
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    keys = torch.ones(2, 9, dtype=torch.int64)
    with torch.no_grad():
        full = decoder.step(2, 9)(ids, torch.arange(7), keys)
        last = decoder.step(2, 9)(ids, torch.arange(7), keys, last_only=True)
        whole = module(ids)
    assert last.shape == (2, 1, 50)
    torch.testing.assert_close(full, whole)
    torch.testing.assert_close(last, whole[:, -1:])


def test_cache_bytes_are_the_plans() -> None:
    module = nnspec.build(EXAMPLES / "llama.yaml", num_hidden_layers=2, hidden_size=32, intermediate_size=48,
                          num_attention_heads=4, num_key_value_heads=2, vocab_size=50).eval()
    decoder = Decoder(module)
    step = decoder.step(3, 20)
    assert type(step).__name__ == "LlamaDecoder"
    assert step.cache_bytes() == decoder.plan.cache_bytes(3, 20) == decoder.reference_step(3, 20).cache_bytes()


LLAMA_GQA = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=50)


@pytest.mark.parametrize(("opt", "dtype"), [(0, None), pytest.param(1, None, marks=pytest.mark.slow),
                                           pytest.param(2, None, marks=pytest.mark.slow), (2, "bf16")])
def test_the_cost_models_kv_bytes_are_what_the_emitted_step_allocates(opt: int, dtype: str | None) -> None:
    from nnspec.compiler.cost import estimate
    from nnspec.compiler.passes import optimize
    from nnspec.compiler.transforms import apply
    transforms = {"dtype": dtype} if dtype else None
    module = nnspec.build(EXAMPLES / "llama.yaml", opt=opt, transforms=transforms, **LLAMA_GQA).eval()
    step = Decoder(module).step(3, 20)
    allocated = sum(b.numel() * b.element_size() for kv in step.cache for b in kv.buffers())
    # hand-derived: 2 layers x (k, v) x batch 3 x 2 kv heads (GQA: 4 query heads) x 20 positions x head_dim 8 x
    # 4 bytes; with --dtype bf16, 2 bytes: the attention reads keys and values cast up to float32, the cache holds
    # them before the cast, in the model's dtype, as Hugging Face's does (what the cost model counts too, below)
    assert allocated == 2 * 2 * 3 * 2 * 20 * 8 * (2 if dtype else 4)
    assert {b.dtype for kv in step.cache for b in kv.buffers()} == {torch.bfloat16 if dtype else torch.float32}
    model = nnspec.check(EXAMPLES / "llama.yaml", B=3, T=20, **LLAMA_GQA).model
    if dtype:
        model = apply(model, dtype=dtype)[0]
    assert int(estimate(model, optimized=optimize(model, opt)).kv_bytes) == allocated == step.cache_bytes()


@pytest.mark.parametrize("opt", [0, 2])
def test_a_bf16_rotary_step_caches_bf16_and_gives_the_full_forwards_logits(opt: int) -> None:
    """Llama at --dtype bf16: its attention reads float32 keys and values (cast up after the bf16 rotary); the cache
    holds them in bf16 and widens on read. Expected values: the same module's full forward over the whole
    generated sequence (no cache), at each new token's position."""
    module = nnspec.build(EXAMPLES / "llama.yaml", opt=opt, transforms={"dtype": "bf16"}, **LLAMA_GQA).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # weights lively enough that a wrong key or value moves the logits (std ~1.6, not 0.1)
        for p in module.parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    decoder = Decoder(module)
    ids, mask = left_padded(seed=5, lengths=(4, 7, 6))
    ids = ids % LLAMA_GQA["vocab_size"]    # pads stay 0
    step = decoder.step(3, ids.shape[1] + NEW)
    assert {b.dtype for kv in step.cache for b in kv.buffers()} == {torch.bfloat16}
    source = Pipeline(EXAMPLES / "llama.yaml", transforms={"dtype": "bf16"}).artifact(opt=opt).source
    assert "kv.keys.to(torch.float32)" in source and "kv.values.to(torch.float32)" in source
    logits: list[torch.Tensor] = []
    out = decoder.generate(ids, mask, max_new_tokens=NEW, step=step, output_logits=logits)
    full_mask = torch.cat([mask, torch.ones(3, NEW, dtype=mask.dtype)], dim=1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    with torch.no_grad():
        full = module(out, attention_mask=full_mask, position_ids=positions)
    for i, got in enumerate(logits):
        at = ids.shape[1] - 1 + i    # the logits that chose the token at position at + 1
        assert full[:, at].std() > 1.0
        # the same bf16 products on fewer rows: equal up to rounding (5e-7 on an AVX2 CPU)
        torch.testing.assert_close(got.float(), full[:, at].float(), atol=2e-2, rtol=1e-2,
                                   msg=lambda m, i=i: f"step {i}: {m}")


def test_triton_explain_names_the_cache_attentions_kernel(tmp_path: Path) -> None:
    artifact = Pipeline(EXAMPLES / "gpt2.yaml").artifact(target="triton", opt=2)
    lines = [line for line in artifact.explain if line.startswith("template kernel: decode_step attention over the "
                                                                   "KV cache")]
    assert len(lines) == 1 and "12 call(s) per step" in lines[0] and "flash-decoding kernel" in lines[0]
    assert "K.decode_attention(" in artifact.source
    run = CliRunner().invoke(app, ["compile", str(EXAMPLES / "gpt2.yaml"), "--target", "triton", "-O2", "--explain",
                                   "-o", str(tmp_path)])
    assert run.exit_code == 0, run.output
    assert f"  {lines[0]}" in run.output.splitlines()
    # the torch target has nothing to fall back from
    assert not any("decode_step" in line for line in Pipeline(EXAMPLES / "gpt2.yaml").artifact(opt=2).explain)


def test_a_model_the_derivation_refuses_has_no_step() -> None:
    source = Pipeline(EXAMPLES / "bert.yaml").artifact(opt=2).source
    assert "decode_step" not in source and "KVCache" not in source


CHECKS = [HealthCheck.filter_too_much, HealthCheck.too_slow]


@settings(max_examples=2, deadline=None, suppress_health_check=CHECKS)
@given(st.data())
def test_emitted_step_equals_full_recompute_on_drawn_causal_specs(data: st.DataObject) -> None:
    emitted_equals_full(data)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=CHECKS)
@given(st.data())
def test_emitted_step_equals_full_recompute_on_many_drawn_specs(data: st.DataObject) -> None:
    emitted_equals_full(data)


# the step block each kind of recurrence `specs(scans=True)` draws writes (nnspec/testing/blocks.py)
SCANS = {"retention": "kv[", "diagonal": "s = a * s + u", "selective": "h = decay * h + drive"}


@settings(max_examples=1, deadline=None, suppress_health_check=CHECKS)
@pytest.mark.parametrize("kind", sorted(SCANS))
@given(data=st.data())
def test_emitted_step_carries_each_kind_of_drawn_scan_state(kind: str, data: st.DataObject) -> None:
    emitted_equals_full(data, SCANS[kind])


def emitted_equals_full(data: st.DataObject, scan: str | None = None) -> None:
    """A drawn causal spec's generated module: a prefill of 2 positions then one position per emitted step gives
    the full forward's output (the spec's own semantics, not the step's). `scan`: only specs whose text has it
    (a kind of recurrence), their step carrying its state."""
    text = data.draw(specs(max_layers=2, max_blocks=2, max_width=16, max_chain=2, scans=True))
    assume("causal_mask" in text or "scan(" in text)     # causal attention, or a recurrence carrying a state
    assume(scan is None or scan in text)
    result = nnspec.check(text)
    model = result.model
    assume(len(model.dims.free) == 2)
    try:
        _, plan = decode_model(model)
    except SpecError:
        assume(False)
    first = next(iter(model.inputs))
    # what the emitted step needs, checked before building (a build is the costly part)
    assume(all("default" in model.graph[n].attrs for k, n in model.inputs.items() if k != first))
    assume(scan is None or bool(plan.states))
    axes = {name: [sympy.sympify(a.size) for a in model.graph[node].tensor_type.axes]
            for name, node in model.inputs.items()}
    assume(all(plan.seq in sizes for sizes in axes.values()) and plan.batch in axes[first])
    inputs = data.draw(nnspec.testing.inputs_for(result, min_size=2, max_size=6))
    seq = {name: sizes.index(plan.seq) for name, sizes in axes.items()}
    length = inputs[first].shape[seq[first]]
    batch = inputs[first].shape[axes[first].index(plan.batch)]
    assume(length >= 3)
    opt = data.draw(st.sampled_from([0, 2]), label="opt")
    torch.manual_seed(1)
    module = nnspec.build(text, opt=opt).eval()
    decoder = Decoder(module)
    step_class = emitted_decoder(module)
    assert step_class is not None
    plan = decoder.plan
    step = decoder.step(batch, length)
    assert isinstance(step, step_class)
    keys = torch.ones(batch, length, dtype=torch.int64)
    outs = []
    with torch.no_grad():
        full = module(**inputs)
        full = full if isinstance(full, torch.Tensor) else next(iter(full.values()))
        for lo, hi in [(0, 2), *((t, t + 1) for t in range(2, length))]:
            part = {n: x.narrow(seq[n], lo, hi - lo) for n, x in inputs.items()}
            outs.append(step(part.pop(first), torch.arange(lo, hi), keys, **part))
    out_t = model.graph[next(iter(model.outputs.values()))].tensor_type
    axis = [sympy.sympify(a.size) for a in out_t.axes].index(plan.seq)
    torch.testing.assert_close(torch.cat(outs, dim=axis), full, atol=2e-5, rtol=2e-5)
