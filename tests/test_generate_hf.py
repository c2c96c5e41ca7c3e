"""`nnspec.generate` gives Hugging Face `generate`'s tokens and logits, and the padded forward HF's logits.

Expected values come from transformers models built from small configs with random weights: greedy decoding of
32 new tokens for a batch of 3 left-padded prompts of different lengths, per-step logits within assert_close.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from _decode_models import left_padded, pair  # noqa: E402

import nnspec.generate as G  # noqa: E402

NEW = 32


def hf_generate(hf: object, ids: torch.Tensor, mask: torch.Tensor, **kwargs: object) -> object:
    with torch.no_grad():
        return hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, return_dict_in_generate=True,  # type: ignore
                           output_logits=True, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("name", ["gpt2", "llama", "mixtral"])
def test_greedy_generate_matches_hf(name: str, tmp_path: Path) -> None:
    hf, ours = pair(name, tmp_path)
    ids, mask = left_padded()
    theirs = hf_generate(hf, ids, mask, do_sample=False, eos_token_id=None)
    logits: list[torch.Tensor] = []
    got = G.generate(ours, ids, mask, max_new_tokens=NEW, output_logits=logits)
    assert got.shape == (3, ids.shape[1] + NEW)
    assert torch.equal(got, theirs.sequences)
    assert len(logits) == NEW
    for step, (a, b) in enumerate(zip(logits, theirs.logits, strict=True)):
        torch.testing.assert_close(a, b, msg=lambda m, s=step: f"step {s}: {m}")


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_left_padded_forward_matches_hf_at_every_token(name: str, tmp_path: Path) -> None:
    hf, ours = pair(name, tmp_path, opt=2)
    ids, mask = left_padded(seed=3)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask, position_ids=positions)
        plain = ours(ids)           # the defaults: no padding, positions 0, 1, ...
        hf_plain = hf(input_ids=ids).logits
    keep = mask.bool()
    assert not got.isnan().any()
    torch.testing.assert_close(got[keep], theirs[keep])
    torch.testing.assert_close(plain, hf_plain)


@pytest.mark.parametrize("opt", [pytest.param(1, marks=pytest.mark.slow), 2])
def test_every_level_and_triton_generate_the_same(opt: int, tmp_path: Path) -> None:
    hf, ours = pair("llama", tmp_path, opt=opt)
    ids, mask = left_padded(seed=1)
    theirs = hf_generate(hf, ids, mask, do_sample=False, eos_token_id=None)
    assert torch.equal(G.generate(ours, ids, mask, max_new_tokens=NEW), theirs.sequences)


def test_triton_target_generates_as_hf(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    hf, ours = pair("gpt2", tmp_path / "t", target="triton", opt=2)
    ids, mask = left_padded(seed=2)
    theirs = hf_generate(hf, ids, mask, do_sample=False, eos_token_id=None)
    # the generated file's step runs the Triton kernels (interpreted on CPU: slow), so 8 of HF's 32 greedy tokens
    new = 8
    assert type(G.Decoder(ours).step(3, ids.shape[1] + new)).__name__ == "Gpt2Decoder"
    from nnspec.backends.triton import lib as K
    K.reset()
    assert torch.equal(G.generate(ours, ids, mask, max_new_tokens=new), theirs.sequences[:, :ids.shape[1] + new])
    # attention over the cache ran the flash-decoding kernel: once per layer per step, prefill included
    assert K.LAUNCHES["decode_attention"] == 2 * new and not K.FALLBACKS.get("decode_attention")


def test_eos_stops_and_pads_as_hf(tmp_path: Path) -> None:
    hf, ours = pair("gpt2", tmp_path)
    ids, mask = left_padded(seed=5)
    free = G.generate(ours, ids, mask, max_new_tokens=12)
    eos = int(free[0, ids.shape[1] + 2])         # what row 0 emits third: it ends there
    theirs = hf_generate(hf, ids, mask, do_sample=False, eos_token_id=eos)
    got = G.generate(ours, ids, mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, theirs.sequences)
    assert (got[0, ids.shape[1] + 3:] == 0).all()
