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
from nnspec.backends.torch.decode_runtime import choose_layouts, step_gemv  # noqa: E402
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
        from nnspec.backends.torch.decode_runtime import _transposed
        owner.__dict__["_step_layouts"]["weight"] = _transposed(owner.weight)
        owner.__dict__["_step_layouts"]["weight"][2].zero_()    # a copy that is wrong on purpose shows when used
        one = torch.randn(1, 6)
        assert torch.equal(step_gemv(owner, "weight", one, owner.weight, owner.bias), owner.bias.expand(1, 10))
        many = torch.randn(9, 6)     # a prefill's rows: the weight itself
        torch.testing.assert_close(step_gemv(owner, "weight", many, owner.weight, owner.bias), owner(many))


def test_an_unknown_weight_layout_is_refused(tmp_path: Path) -> None:
    _, ours = pair("gpt2", tmp_path, opt=2)
    with pytest.raises(ValueError, match="weight_layout must be auto, given or transposed"):
        Decoder(ours, weight_layout="rows")
    with pytest.raises(ValueError, match="auto, given or transposed"):
        choose_layouts(ours, 1, "rows")
