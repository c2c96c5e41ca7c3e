"""`nnspec.testing.inputs_for` takes whatever a user holds: a spec path, a check result, or a built module."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings

import nnspec
from nnspec.testing import inputs_for

torch = pytest.importorskip("torch")
EXAMPLES = Path(__file__).parent.parent / "examples"
GPT2 = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
BUILT = nnspec.build(EXAMPLES / "gpt2.yaml", **GPT2).eval()


@settings(max_examples=5, deadline=None)
@given(inputs_for(BUILT))
def test_inputs_for_a_built_module(inputs: dict) -> None:
    with torch.no_grad():
        logits = BUILT(**inputs)
    assert logits.shape == (*inputs["input_ids"].shape, 50)


@settings(max_examples=5, deadline=None)
@given(inputs_for(str(EXAMPLES / "small" / "moe.yaml"), B=3))
def test_inputs_for_a_spec_path(inputs: dict) -> None:
    assert inputs["x"].shape[0] == 3 and inputs["x"].shape[-1] == 16
