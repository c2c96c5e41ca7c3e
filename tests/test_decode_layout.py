"""The layouts a decoding step reads (`nnspec.backends.torch.decode_layout`): the KV cache stored as the attention
reads it, and the [in, out] weight copies the Decoder keeps for the step's matrix-vector products.

Expected values: Hugging Face `generate` (a transformers GPT-2 and Llama from small configs, random weights) for the
tokens; the same step without weight copies ("given") for the logits; hand-derived axis orders and byte counts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _decode_models import left_padded, pair  # noqa: E402

from nnspec.backends.torch.decode_layout import cache_types  # noqa: E402
from nnspec.backends.torch.decode_runtime import (  # noqa: E402
    LAYOUT_KINDS,
    _fastest_kind,
    _huge_empty,
    _layout,
    _layout_gemv,
    choose_layouts,
    step_gemv,
)
from nnspec.compiler.ir import Axis, DType, TensorType  # noqa: E402
from nnspec.generate import Decoder  # noqa: E402

NEW = 5


def _t(*names: str) -> TensorType:
    return TensorType(tuple(Axis(n, 2) for n in names), DType.float32)


def test_the_cache_is_stored_in_the_order_sdpa_reads() -> None:
    # GPT-2: keys and values [B, S, heads, d] where made; SDPA reads [B, heads, S, d]
    k, v = cache_types(_t("B", "S", "h", "d"), _t("B", "S", "h", "d"), "S", "d")
    assert k.names == v.names == ("B", "h", "S", "d")
    # already in that order (Llama's [B, kv, S, d]): unchanged; values with their own feature axis `e`
    k, v = cache_types(_t("B", "kv", "S", "d"), _t("B", "S", "kv", "e"), "S", "d")
    assert k.names == ("B", "kv", "S", "d") and v.names == ("B", "kv", "S", "e")


def _run(step: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The prefill's last logits, then NEW greedy one-token steps' logits (tokens chosen from the step itself)."""
    batch, prompt = ids.shape
    keys = torch.zeros(batch, step.length, dtype=torch.int64)
    keys[:, :prompt] = mask
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = [step(ids, torch.arange(prompt), keys, position_ids=positions, last_only=True)[:, -1]]
    position = mask.sum(-1, keepdim=True)
    for i in range(NEW):
        token = out[-1].argmax(-1, keepdim=True)
        keys[:, prompt + i] = 1
        out.append(step(token, torch.tensor([prompt + i]), keys, position_ids=position + i)[:, -1])
    return out


def _step_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """The weights GPT-2's step multiplies by, listed by hand: each layer's four linears and the tied head."""
    weights = [module.wte.weight]
    for layer in module.h:
        weights += [layer.attn.c_attn.weight, layer.attn.c_proj.weight, layer.mlp.c_fc.weight,
                    layer.mlp.c_proj.weight]
    return weights


def test_weight_copies_give_the_plain_steps_logits_and_cost_their_bytes(tmp_path: Path) -> None:
    _, ours = pair("gpt2", tmp_path, opt=2)
    ids, mask = left_padded(seed=3)
    length = ids.shape[1] + NEW + 1
    with torch.no_grad():
        plain = Decoder(ours, weight_layout="given").step(3, length)
        assert plain.layout_bytes == 0
        expected = _run(plain, ids, mask)
        copied = Decoder(ours, weight_layout="transposed").step(3, length)
        assert copied.layout_bytes == sum(w.numel() * 4 for w in _step_weights(ours))
        # each copy is the weight transposed, kept beside it (not a view of it)
        head = ours.__dict__["_step_layouts"]["wte.weight"][2]
        assert torch.equal(head, ours.wte.weight.t()) and head.data_ptr() != ours.wte.weight.data_ptr()
        got = _run(copied, ids, mask)
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"step {i}: {m}")
    # "given" drops the copies again
    assert Decoder(ours, weight_layout="given").step(3, length).layout_bytes == 0
    assert not ours.__dict__["_step_layouts"]


def test_a_copy_is_remade_when_its_weight_changes_in_place(tmp_path: Path) -> None:
    _, ours = pair("gpt2", tmp_path, opt=2)
    ids, mask = left_padded(seed=5)
    length = ids.shape[1] + NEW + 1
    with torch.no_grad():
        copied = Decoder(ours, weight_layout="transposed").step(3, length)
        _run(copied, ids, mask)
        ours.wte.weight.mul_(1.5)               # in place: the kept copy is stale
        ours.h[0].mlp.c_fc.weight.add_(0.01)
        copied.reset()
        got = _run(copied, ids, mask)
        # the reference: the node-by-node step, which reads the parameters as they are now
        reference = Decoder(ours).reference_step(3, length)
        expected = _run(reference, ids, mask)
        assert torch.equal(ours.__dict__["_step_layouts"]["wte.weight"][2], ours.wte.weight.t())
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("name", "layout"), [("gpt2", "transposed"), ("gpt2", "auto"), ("llama", "transposed")])
def test_generate_with_weight_copies_gives_hf_tokens(name: str, layout: str, tmp_path: Path) -> None:
    hf, ours = pair(name, tmp_path, opt=2)
    ids, mask = left_padded(seed=7)
    got = Decoder(ours, weight_layout=layout).generate(ids, mask, max_new_tokens=8)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    assert torch.equal(got, theirs)


def test_step_gemv_uses_the_copy_for_a_few_rows_only() -> None:
    owner = torch.nn.Linear(6, 10)
    owner.__dict__["_step_layouts"] = {}
    with torch.no_grad():
        choose_layouts(torch.nn.Sequential(), 1, "transposed")     # no STEP_WEIGHTS anywhere: nothing kept, no error
        from nnspec.backends.torch.decode_runtime import _layout
        owner.__dict__["_step_layouts"]["weight"] = (*_layout(owner.weight, "transposed", 1), False)
        owner.__dict__["_step_layouts"]["weight"][2].zero_()    # a copy that is wrong on purpose shows when used
        one = torch.randn(1, 6)
        assert torch.equal(step_gemv(owner, "weight", one, owner.weight, owner.bias), owner.bias.expand(1, 10))
        many = torch.randn(9, 6)     # a prefill's rows: the weight itself
        torch.testing.assert_close(step_gemv(owner, "weight", many, owner.weight, owner.bias), owner(many))


def test_an_unknown_weight_layout_is_refused(tmp_path: Path) -> None:
    _, ours = pair("gpt2", tmp_path, opt=2)
    with pytest.raises(ValueError, match="weight_layout must be one of auto, given, split-given, transposed, split"):
        Decoder(ours, weight_layout="rows")
    with pytest.raises(ValueError, match="auto, given, split-given, transposed, split"):
        choose_layouts(ours, 1, "rows")


@pytest.mark.parametrize("kind", sorted(LAYOUT_KINDS))
@pytest.mark.parametrize(("out", "parts", "rows"), [(10, 2, 1), (9, 2, 3), (12, 3, 2), (7, 4, 1)])
def test_each_layout_computes_the_linear(kind: str, out: int, parts: int, rows: int) -> None:
    # against F.linear on the [out, in] weight, with and without a bias; out need not divide into the parts
    g = torch.Generator().manual_seed(out * parts + rows)
    weight, bias, x = (torch.randn(out, 6, generator=g), torch.randn(out, generator=g),
                       torch.randn(rows, 6, generator=g))
    _, held, copy, made, n = _layout(weight, kind, parts)
    assert held is weight or held.data_ptr() == weight.data_ptr()
    if kind == "given" or (kind == "split-given" and out % parts):
        assert (made, copy) == ("given", None)          # the parameter as it is (a view cannot pad)
        return
    assert made == kind and n == parts and copy is not None
    for b in (None, bias):
        got = _layout_gemv(x, copy, kind, b, out)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, weight, b))
    if kind == "split-given":                           # a view of the parameter: no memory
        assert copy.data_ptr() == weight.data_ptr() and copy.shape == (parts, out // parts, 6)
    if kind == "split":                                 # [parts, in, out/parts], zero-padded to a multiple
        q = -(-out // parts)
        assert copy.shape == (parts, 6, q) and copy.data_ptr() != weight.data_ptr()


@pytest.mark.parametrize("layout", ["split", "split-given"])
def test_split_layouts_give_the_plain_steps_logits_and_cost_their_bytes(layout: str, tmp_path: Path) -> None:
    _, ours = pair("gpt2", tmp_path, opt=2)
    ids, mask = left_padded(seed=11)
    length = ids.shape[1] + NEW + 1
    with torch.no_grad():
        expected = _run(Decoder(ours, weight_layout="given").step(3, length), ids, mask)
        step = Decoder(ours, weight_layout=layout).step(3, length)
        got = _run(step, ids, mask)
    parts = max(2, torch.get_num_threads())
    kinds = [layer.__dict__["_step_layouts"]["weight"][3] for layer in
             (m for block in ours.h for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj))]
    head = ours.__dict__["_step_layouts"]["wte.weight"]
    if layout == "split":   # every weight copied, its out padded to a multiple of the parts (the head's 97 rows)
        padded = sum(-(-w.shape[0] // parts) * parts * w.shape[1] * 4 for w in _step_weights(ours))
        assert step.layout_bytes == padded and set(kinds) == {"split"} and head[3] == "split"
    else:                   # views of the parameters: no memory; the head (97 rows) cannot be split so
        assert step.layout_bytes == 0 and head[3] == "given"
        assert {k for k, w in zip(kinds, _step_weights(ours)[1:], strict=True) if w.shape[0] % parts == 0} == {
            "split-given"}
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, i=i: f"step {i}: {m}")


def test_a_split_layout_gives_hf_tokens_on_llama(tmp_path: Path) -> None:
    hf, ours = pair("llama", tmp_path, opt=2)
    ids, mask = left_padded(seed=13)
    got = Decoder(ours, weight_layout="split").generate(ids, mask, max_new_tokens=8)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    assert torch.equal(got, theirs)


def test_the_measured_choice_is_one_of_the_layouts_it_timed() -> None:
    weight = torch.randn(64, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)      # one thread: nothing to split over
        assert _fastest_kind(weight, 1, 1, streamed=False, reps=3) in ("given", "transposed")
    finally:
        torch.set_num_threads(threads)
    assert _fastest_kind(weight, 2, 2, streamed=True, reps=3) in LAYOUT_KINDS


def test_an_auto_choice_is_kept_and_a_forced_one_replaces_it(tmp_path: Path) -> None:
    _, ours = pair("gpt2", tmp_path, opt=2)
    Decoder(ours, weight_layout="auto").step(1, 16)
    first = dict(ours.h[0].mlp.c_fc.__dict__["_step_layouts"])
    Decoder(ours, weight_layout="auto").step(1, 16)          # measured before, at this thread count: kept as it is
    assert ours.h[0].mlp.c_fc.__dict__["_step_layouts"]["weight"] is first["weight"]
    Decoder(ours, weight_layout="split").step(1, 16)
    assert ours.h[0].mlp.c_fc.__dict__["_step_layouts"]["weight"][3] == "split"


def test_copies_are_made_in_huge_pages_where_linux_offers_them() -> None:
    import mmap
    like = torch.zeros(1)
    big = _huge_empty((768, 1024), like)               # 3 MB: spans a 2 MB page
    assert big.shape == (768, 1024) and big.dtype == like.dtype and big.is_contiguous()
    if hasattr(mmap, "MADV_HUGEPAGE"):
        assert big.data_ptr() % (2 * 2**20) == 0      # starts on a huge page boundary
    big.copy_(torch.arange(768 * 1024, dtype=torch.float32).view(768, 1024))
    assert big[767, 1023].item() == 768 * 1024 - 1  # writable, all of it
    small = _huge_empty((3, 4), like)                  # under one huge page: torch.empty
    assert small.shape == (3, 4)


def test_the_step_has_no_empty_row_fix_up_the_forward_has() -> None:
    from nnspec.generated import compile_spec
    source = compile_spec(Path(__file__).parent.parent / "examples" / "gpt2.yaml", opt=2).source
    forward, step = source.split("def decode_step", 1)
    # the forward fills rows that see no key with NaN (the spec's softmax); the step's cache mask shows every new
    # token its own slot, so it has none (HF's logits at left padding: test_generate_hf.py)
    assert 'float("nan")' in forward.split("class Attention", 1)[1]
    assert 'float("nan")' not in step.split("class Mlp", 1)[0]


def test_the_triton_targets_step_reads_split_layouts_and_gives_hf_tokens(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    hf, ours = pair("gpt2", tmp_path, target="triton", opt=2)
    ids, mask = left_padded(seed=17)
    new = 4     # the step's kernels run interpreted on CPU: a few tokens
    got = Decoder(ours, weight_layout="split").generate(ids, mask, max_new_tokens=new)
    # its step multiplies by c_attn and the tied head itself (the MLP is a fused Triton epilogue kernel)
    assert ours.h[0].attn.c_attn.__dict__["_step_layouts"]["weight"][3] == "split"
    assert ours.__dict__["_step_layouts"]["wte.weight"][3] == "split"
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    assert torch.equal(got, theirs)
