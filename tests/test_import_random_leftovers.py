"""Round trips of the last random specs `nnspec import` refused (seeded draws of `nnspec.testing.specs()`), written
out by hand: spec -> `nnspec.build` -> import -> spec -> build, equal numbers with the first model's weights, at a
batch and length other than the trace's.

- A sequence cut in two halves, `x[N, (2 c1), d]`, traced at a length of 4: both pieces have size 2, and only the
  model's view (`reshape(N, 2, L // 2, d)`) says the fixed piece comes first (`provenance.py`); a width of 2 beside
  it (a classifier) is not named after that piece.
- A layer of a `repeat` that cuts the sequence so and returns it merged (`boundary.py`: merged back to `T` where it
  leaves the layer, so that every layer reads and returns `[B, T, d]`), followed by a shared repeat named
  `layers_1`: the layers render alike and are one `repeat`, not unrolled into a name the shared repeat holds.
"""

from __future__ import annotations

import pytest
import torch
from test_import_round_trip import _assert_equal_models
from torch import nn

import nnspec
from nnspec.importer import import_module

_HALVES = """\
nnspec: 1
name: halves
dims:
  n_embd: 9
inputs:
  x: float32[N, L, n_embd]
outputs:
  classes: float32[N, L, 2]
  pooled: float32[N, n_embd]
body: |
  z = x[N, (2 c1), n_embd]
  z = z * sigmoid(mean(z, over=c1))
  z = z[N, (2 c1), n_embd]
  z = z - max(z, over=n_embd)
  h = linear(z, n_embd, name=proj)
  classes = linear(h, 2, name=classifier)
  pooled = max(h, over=L)
"""

_LAYERS = """\
nnspec: 1
name: halves_layers
dims:
  hidden_size: n_heads * head_dim
  n_layer: 2
  d_ff: 10
  n_heads: 3
  head_dim: 5
  vocab_size: 17
inputs:
  ids: int64[B, T]
outputs:
  stream: float32[B, T, hidden_size]
blocks:
  mix(x): |
    z = x[B, (2 c1), hidden_size]
    z = z * sigmoid(mean(z, over=c1))
    z = z[B, (2 c1), hidden_size]
    z1 = z[B, T, (n_heads c2)]
    z1 = softmax(z1, over=n_heads) * z1
    z1 = z1[B, T, (n_heads c2)]
    z2 = mean(z1, over=T) + z1
    return linear(z2[B, T, hidden_size], hidden_size, bias=true, name=proj)
  mlp(x[B, T, hidden_size], width=d_ff): |
    h = silu(linear(x, width, bias=true, name=up))
    return linear(h, hidden_size, name=down)
body: |
  h = embedding(ids, vocab_size, hidden_size, name=wte)
  h = repeat(n_layer, mix, h, name=layers)
  stream = repeat(n_layer, mlp, h, name=layers_1, shared=true)
"""


def _config(text: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in nnspec.check(text).model.dims.values.items()}


def test_halves_of_a_sequence_traced_where_both_pieces_have_one_size() -> None:
    torch.manual_seed(0)
    first = nnspec.build(_HALVES).eval()
    imp = import_module(first, {"x": torch.randn(5, 4, 9)}, _config(_HALVES), name="halves")
    # the fixed piece first, the count (its size follows the length) second, and the mean over the count
    assert "(wt nt)" in imp.text and "over=nt" in imp.text
    _assert_equal_models(first, imp.text, {"x": torch.randn(2, 6, 9)}, min_magnitude=0.1)
    _assert_equal_models(first, imp.text, {"x": torch.randn(3, 10, 9)}, min_magnitude=0.1)


class _Halves(nn.Module):
    """The same cut in plain PyTorch (no `dynamic_shapes()`): the free sizes are found from the example inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.cls = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        z = x.reshape(b, 2, n // 2, c)
        z = z * torch.sigmoid(z.mean(dim=2))[:, :, None]
        return self.cls(self.proj(z.reshape(b, n, c)))


def test_halves_of_a_sequence_in_a_plain_torch_module() -> None:
    torch.manual_seed(0)
    first = _Halves().eval()
    imp = import_module(first, {"x": torch.randn(3, 4, 8)}, {"hidden_size": 8}, name="halves")
    assert "(wt nt)" in imp.text
    _assert_equal_models(first, imp.text, {"x": torch.randn(2, 10, 8)}, min_magnitude=0.1)


@pytest.mark.parametrize("length", [4, 6], ids=["pieces-of-one-size", "pieces-of-two-sizes"])
def test_a_repeat_whose_layers_cut_the_sequence_in_halves(length: int) -> None:
    torch.manual_seed(0)
    first = nnspec.build(_LAYERS).eval()
    imp = import_module(first, {"ids": torch.randint(0, 17, (7, length))}, _config(_LAYERS), name="halves_layers")
    assert "repeat(n_layer, " in imp.text and "shared=true" in imp.text and "layers_0" not in imp.text
    _assert_equal_models(first, imp.text, {"ids": torch.randint(0, 17, (2, 8))}, min_magnitude=0.1)
