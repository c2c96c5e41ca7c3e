"""Sampling in `nnspec.generate`: reproducible with a generator, never a token top-k/top-p excluded, filtering as
Hugging Face's logits warpers; the compiled step reuses one graph for every decoding step; the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _decode_models import left_padded, pair  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import nnspec  # noqa: E402
from nnspec.cli import app  # noqa: E402
from nnspec.generate import Decoder, filter_logits  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"
SMALL = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=64)


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    torch.manual_seed(0)
    return Decoder(nnspec.build(EXAMPLES / "gpt2.yaml", **SMALL).eval())


def test_sampling_with_a_generator_is_reproducible(decoder: Decoder) -> None:
    ids, mask = torch.randint(1, 50, (2, 4), generator=torch.Generator().manual_seed(0)), torch.ones(2, 4).long()

    def draw(seed: int) -> torch.Tensor:
        return decoder.generate(ids, mask, max_new_tokens=10, do_sample=True, temperature=1.5,
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.5), (5, 0.3)])
def test_top_k_top_p_never_emit_excluded_tokens(decoder: Decoder, top_k: int | None, top_p: float | None) -> None:
    ids, mask = torch.randint(1, 50, (3, 4), generator=torch.Generator().manual_seed(1)), torch.ones(3, 4).long()
    for seed in range(3):
        logits: list[torch.Tensor] = []
        out = decoder.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=top_k, top_p=top_p,
                               temperature=2.0, generator=torch.Generator().manual_seed(seed), output_logits=logits)
        for step, raw in enumerate(logits):
            scaled = raw.float() / 2.0
            for row in range(3):
                token = int(out[row, 4 + step])
                order = scaled[row].argsort(descending=True)
                allowed = set(order.tolist())
                if top_k is not None:     # the k best (no ties among random float logits)
                    allowed &= set(order[:top_k].tolist())
                if top_p is not None:     # the smallest prefix of the best whose probability reaches top_p
                    probs = scaled[row][order].softmax(-1)
                    before = probs.cumsum(-1) - probs
                    allowed &= set(order[before < top_p].tolist())
                assert token in allowed, (step, row, token)


def test_filtering_matches_hf_warpers() -> None:
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
    logits = torch.randn(4, 40, generator=torch.Generator().manual_seed(0))
    ids = torch.zeros(4, 1, dtype=torch.long)
    theirs = TopPLogitsWarper(0.7)(ids, TopKLogitsWarper(9)(ids, TemperatureLogitsWarper(0.8)(ids, logits.clone())))
    torch.testing.assert_close(filter_logits(logits, 0.8, 9, 0.7), theirs)


def test_compiled_step_is_one_graph_for_every_step(decoder: Decoder) -> None:
    from torch._dynamo.utils import counters
    ids, mask = torch.randint(1, 50, (2, 5), generator=torch.Generator().manual_seed(2)), torch.ones(2, 5).long()
    expected = decoder.generate(ids, mask, max_new_tokens=8)
    step = decoder.step(2, 13)
    run = decoder.compiled(step, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    first = decoder.generate(ids, mask, max_new_tokens=8, step=step, step_fn=run)
    again = decoder.generate(ids, mask, max_new_tokens=8, step=step, step_fn=run)
    assert torch.equal(first, expected) and torch.equal(again, expected)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_cli_generate_prints_hf_tokens(tmp_path: Path) -> None:
    hf, _ = pair("gpt2", tmp_path)
    hf.save_pretrained(tmp_path / "w")
    ids, mask = left_padded(seed=4, lengths=(4, 6))
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    result = CliRunner().invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--config",
                                      str(tmp_path / "w" / "config.json"), "--weights", str(tmp_path / "w"),
                                      "--prompt-ids", _cli_prompts(ids, mask), "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == _cli_rows(theirs, ids, mask)


def test_cli_generate_refuses_an_encoder_and_bad_ids() -> None:
    runner = CliRunner()
    bad = runner.invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--set", "n_layer=1", "--prompt-ids", "1,x"])
    assert bad.exit_code == 2 and "--prompt-ids" in bad.output
    enc = runner.invoke(app, ["generate", str(EXAMPLES / "bert.yaml"), "--set", "num_hidden_layers=1",
                              "--prompt-ids", "1,2"])
    assert enc.exit_code == 1 and "bert.yaml:" in enc.output and "E015" in enc.output


def _cli_prompts(ids: torch.Tensor, mask: torch.Tensor) -> str:
    return ";".join(",".join(str(t) for t in row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True))


def _cli_rows(hf_out: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [",".join(map(str, [*row[m.bool()].tolist(), *out[ids.shape[1]:].tolist()]))
            for row, m, out in zip(ids, mask, hf_out, strict=True)]


def test_cli_weight_layout_gives_hf_tokens_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nnspec.generate as gen
    hf, _ = pair("gpt2", tmp_path)
    hf.save_pretrained(tmp_path / "w")
    ids, mask = left_padded(seed=5, lengths=(3, 5))
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                             eos_token_id=None)
    copied: dict[str, int] = {}

    class Spy(gen.Decoder):      # records the copies the step kept: the flag reaches the step
        def step(self, batch: int, length: int) -> torch.nn.Module:
            made = super().step(batch, length)
            copied[self.weight_layout] = made.layout_bytes
            return made
    monkeypatch.setattr(gen, "Decoder", Spy)
    for layout in ("given", "transposed"):
        result = CliRunner().invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--config",
                                          str(tmp_path / "w" / "config.json"), "--weights", str(tmp_path / "w"),
                                          "-O", "2", "--weight-layout", layout, "--prompt-ids",
                                          _cli_prompts(ids, mask), "--max-new-tokens", "5"])
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines() == _cli_rows(theirs, ids, mask), layout
    # GPT-2's step multiplies by c_attn, c_proj, c_fc, mlp c_proj per layer and the tied head
    weights = sum(p.numel() * 4 for n, p in hf.named_parameters() if p.dim() == 2 and "wpe" not in n)
    assert copied == {"given": 0, "transposed": weights}
    bad = CliRunner().invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--weight-layout", "rows",
                                   "--prompt-ids", "1,2"])
    assert bad.exit_code == 2 and "--weight-layout" in bad.output


def test_cli_eos_stops_rows_and_pads_with_eos_as_hf(tmp_path: Path) -> None:
    hf, _ = pair("gpt2", tmp_path)
    hf.save_pretrained(tmp_path / "w")
    ids, mask = left_padded(seed=6, lengths=(4, 6, 2))
    with torch.no_grad():
        free = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
                           eos_token_id=None)
        eos = int(free[0, ids.shape[1] + 1])     # the token row 0 emits second: it stops there
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=eos,
                             pad_token_id=None)
    assert (theirs[0, ids.shape[1] + 2:] == eos).all()    # HF continues a finished row with the eos id
    result = CliRunner().invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--config",
                                      str(tmp_path / "w" / "config.json"), "--weights", str(tmp_path / "w"),
                                      "--prompt-ids", _cli_prompts(ids, mask), "--max-new-tokens", "8",
                                      "--eos-token-id", str(eos)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines() == _cli_rows(theirs, ids, mask)


def test_cli_prompt_text_is_tokenized_with_the_weights_tokenizer(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    hf, _ = pair("gpt2", tmp_path)
    hf.save_pretrained(tmp_path / "w")
    vocab = {f"w{i}": i for i in range(hf.config.vocab_size)}       # a word-level tokenizer over the model's ids
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "w" / "tokenizer.json"))
    ids = torch.tensor([[17, 5, 42, 8]])
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
    result = CliRunner().invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--config",
                                      str(tmp_path / "w" / "config.json"), "--weights", str(tmp_path / "w"),
                                      "--prompt", "w17 w5 w42 w8", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    new = theirs[0, 4:].tolist()
    assert result.output.strip().splitlines() == [",".join(map(str, theirs[0].tolist())),
                                                   " ".join(f"w{t}" for t in new)]
    missing = CliRunner().invoke(app, ["generate", str(EXAMPLES / "gpt2.yaml"), "--set", "n_layer=1",
                                       "--prompt", "hello"])
    assert missing.exit_code == 2 and "tokenizer.json" in missing.output
