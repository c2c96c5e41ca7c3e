"""The reference interpreter computes what Hugging Face's GPT2LMHeadModel computes.

The HF model is built from a small config with random weights (never downloaded); its weights are copied into
the interpreter by spec path, so the only thing under test is the meaning nnspec gives examples/gpt2.yaml.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nnspec  # noqa: E402
from nnspec.backends.torch import Interpreter, RuntimeShapeError  # noqa: E402

GPT2 = Path(__file__).parent.parent / "examples" / "gpt2.yaml"
SMALL = dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4)


def hf_gpt2(**dims: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(**dims, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     attn_implementation="eager")
    return transformers.GPT2LMHeadModel(config).eval()


def hf_key(path: str) -> tuple[str, bool]:
    """Spec path -> (HF state-dict key, whether HF's Conv1D stores it transposed)."""
    conv1d = any(f".{n}.weight" in f".{path}" for n in ("c_attn", "c_proj", "c_fc"))
    return "transformer." + path, conv1d


def load_from_hf(interp: Interpreter, hf: torch.nn.Module) -> None:
    state = hf.state_dict()
    with torch.no_grad():
        for path, p in interp.named_spec_parameters().items():
            key, transposed = hf_key(path)
            src = state[key].t() if transposed else state[key]
            assert src.shape == p.shape, (path, src.shape, p.shape)
            p.copy_(src)


def test_interpreter_matches_hf_gpt2_logits() -> None:
    model = nnspec.check(GPT2, **SMALL).model
    interp = Interpreter(model).eval()
    hf = hf_gpt2(**SMALL)
    load_from_hf(interp, hf)
    ids = torch.randint(0, SMALL["vocab_size"], (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = interp(input_ids=ids)["logits"]
        theirs = hf(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs)


def test_parameter_count_matches_hf() -> None:
    result = nnspec.check(GPT2, **SMALL)
    hf = hf_gpt2(**SMALL)
    assert result.params == sum(p.numel() for p in hf.parameters())  # HF dedups the tied head
    assert result.params == sum(p.numel() for p in Interpreter(result.model).parameters())


def test_sequence_longer_than_positions_is_refused_at_run_time() -> None:
    interp = Interpreter(nnspec.check(GPT2, **SMALL).model)
    with pytest.raises(RuntimeShapeError, match="T <= n_positions"):
        interp(input_ids=torch.zeros(1, SMALL["n_positions"] + 1, dtype=torch.long))


def test_wrong_input_dtype_is_refused() -> None:
    interp = Interpreter(nnspec.check(GPT2, **SMALL).model)
    with pytest.raises(RuntimeShapeError, match="int64"):
        interp(input_ids=torch.zeros(1, 4))
