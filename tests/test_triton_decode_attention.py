"""The Triton target's attention over the static KV cache in a decoding step (`kernels/decode_attention.py`,
flash-decoding: GQA, split cache, the cache mask), under TRITON_INTERPRET=1 at tiny sizes.

Expected values: plain torch attention written in this test (softmax over the visible slots), and Hugging Face
`generate`'s greedy tokens and per-step logits for a tiny Llama (GQA, rotary) with random weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("transformers")

from _decode_models import left_padded, pair  # noqa: E402

from nnspec.backends.triton import lib as K  # noqa: E402
from nnspec.backends.triton.kernels.decode_attention import decode_attention  # noqa: E402
from nnspec.generate import Decoder  # noqa: E402
from nnspec.pipeline import Pipeline  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """softmax(q k^T * scale where visible, -inf elsewhere) v, each query head h reading kv head h // group."""
    group = q.shape[1] // k.shape[1]
    heads = torch.arange(q.shape[1]) // group
    scores = torch.einsum("bhtd,bhsd->bhts", q, k[:, heads]) * scale
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhts,bhsd->bhtd", scores.softmax(-1), v[:, heads])


# (batch, heads, kv heads, new tokens, cache length, head dim, first position): one new token (decoding), a few
# (a prefill chunk); the cache split in 3 and 4 parts merged by the combine kernel (the interpreter splits when
# batch x kv heads < 4), or one part normalised in place; GQA groups of 1, 2 and 4
CASES = [(1, 4, 2, 1, 40, 8, 20), (3, 4, 1, 3, 64, 16, 7), (1, 2, 2, 5, 16, 8, 0),
         pytest.param((2, 6, 3, 2, 100, 12, 97), marks=pytest.mark.slow)]


@pytest.mark.parametrize("case", CASES)
def test_decode_attention_is_attention_over_the_visible_slots(case: tuple[int, ...]) -> None:
    b, h, hk, t, s, d, first = case
    g = torch.Generator().manual_seed(sum(case))
    q = torch.randn(b, h, t, d, generator=g)
    # the cache as the step holds it, [B, S, Hkv, D], read through a transposed view (strides, not a copy)
    k = torch.randn(b, s, hk, d, generator=g).transpose(1, 2)
    v = torch.randn(b, s, hk, d, generator=g).transpose(1, 2)
    positions = torch.arange(first, first + t)
    padding = torch.rand(b, t, s, generator=g) > 0.3
    padding[:, torch.arange(t), positions] = True                       # a token sees its own slot
    # slots after a token's position hold garbage (not written yet): they must not count
    visible = (torch.arange(s) <= positions[:, None])[None] & padding     # [B, T, S]
    K.reset()
    got = decode_attention(q, k, v, positions, scale=0.3, mask=padding)
    assert K.LAUNCHES["decode_attention"] == 1 and not K.FALLBACKS
    torch.testing.assert_close(got, plain_attention(q, k, v, visible[:, None], 0.3), atol=2e-6, rtol=2e-6)
    if b * hk > 3:
        return
    # without a mask: causal by position over the cache only
    got = decode_attention(q, k, v, positions, scale=0.3)
    causal = (torch.arange(s) <= positions[:, None])[None, None]
    torch.testing.assert_close(got, plain_attention(q, k, v, causal, 0.3), atol=2e-6, rtol=2e-6)


def test_bad_arguments_are_refused_plainly() -> None:
    q, k = torch.zeros(1, 4, 1, 8), torch.zeros(1, 3, 16, 8)
    with pytest.raises(ValueError, match="Hkv dividing"):
        decode_attention(q, k, k, torch.tensor([0]), scale=1.0)
    with pytest.raises(ValueError, match="positions must be an integer"):
        decode_attention(q, k[:, :2], k[:, :2], torch.tensor([0.0]), scale=1.0)
    with pytest.raises(ValueError, match="mask must be bool"):
        decode_attention(q, k[:, :2], k[:, :2], torch.tensor([0]), scale=1.0, mask=torch.ones(1, 1, 16))


# slow: every op of the step runs interpreted (~20 s); the default run covers the triton target's generate with
# this kernel in tests/test_generate_hf.py (GPT-2), and the kernel's GQA here above
@pytest.mark.slow
@pytest.mark.parametrize("new", [2, 8])
def test_triton_llama_decodes_as_hf_with_the_kernel_over_the_cache(new: int, tmp_path: Path) -> None:
    hf, ours = pair("llama", tmp_path, target="triton", opt=2)
    source = Pipeline(EXAMPLES / "llama.yaml").artifact(target="triton", opt=2).source
    assert "K.decode_attention(q_heads, k_heads, v_heads, cache_position, " in source
    ids, mask = left_padded(seed=3)
    decoder = Decoder(ours)
    step = decoder.step(3, ids.shape[1] + new)
    assert type(step).__name__ == "LlamaDecoder"
    logits: list[torch.Tensor] = []
    K.reset()
    got = decoder.generate(ids, mask, max_new_tokens=new, step=step, output_logits=logits)
    # one launch per layer per step (prefill included), none fell back to torch
    assert K.LAUNCHES["decode_attention"] == 2 * new and not K.FALLBACKS.get("decode_attention")
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                             eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(got, theirs.sequences)
    for i, (a, b) in enumerate(zip(logits, theirs.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, i=i: f"step {i}: {m}")


def test_explain_says_the_cache_attention_is_a_kernel() -> None:
    explain = Pipeline(EXAMPLES / "llama.yaml").artifact(target="triton", opt=2).explain
    lines = [line for line in explain if "decode_step attention over the KV cache" in line]
    assert len(lines) == 1 and lines[0].startswith("template kernel:") and "flash-decoding" in lines[0]
    assert not any(line.startswith("torch fallback: attention") for line in explain)
