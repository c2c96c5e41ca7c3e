"""`nnspec import` of state-space and recurrent models, and of configs whose size keys have short names.

Round trips (spec -> generated module -> import -> spec -> build, the first model's weights loaded through the new
mapping, equal outputs at another batch and length than the traced ones): examples/mamba.yaml (its causal
depthwise convolution's zero padding and `conv`, the `x_proj` slices, the outer products feeding the scan and the
scan's matrix-vector read-out) and examples/small/retention.yaml (a state with two axes of one size, dk = dv, named
apart by where they come from). Plain-PyTorch modules plant each new lift and its near misses. The expected values
are the first model's own outputs: what is under test is that the imported spec computes the same function.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import nnspec
from nnspec.importer import ImportFailure, import_module
from nnspec.testing import inputs_for, specs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_import_round_trip import _assert_equal_models, _config_and_free  # noqa: E402

# sizes told apart by value (state 6, rank 9, kernel 4 and pad 3, inner 32, x_proj 21), so the trace's free sizes
# are small (B = 5, T = 7: the scan is unrolled T times per layer)
_MAMBA = dict(vocab_size=50, hidden_size=16, state_size=6, num_hidden_layers=2, time_step_rank=9)


def _dims_section(text: str) -> dict[str, str]:
    block = text.split("dims:", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^  (\w+): (.+)$", block, flags=re.M))


def test_round_trip_of_the_mamba_example() -> None:
    path = str(ROOT / "examples/mamba.yaml")
    config, free = _config_and_free(path, **_MAMBA)
    torch.manual_seed(0)
    first = nnspec.build(path, **_MAMBA).eval()
    imp = import_module(first, {"input_ids": torch.randint(0, 50, (free["B"], free["T"]))}, config, name="mamba")
    text = imp.text
    for piece in ("concat(zeros(B, conv_pad, intermediate_size), ", "over=(conv_pad, T), into=Tp)",
                  "conv(padded, intermediate_size, conv_kernel, groups=intermediate_size, channel=intermediate_size, "
                  "over=Tp, into=T, name=conv1d)",
                  "slice(x_proj, over=x_proj_size, stop=time_step_rank, into=time_step_rank)",
                  "start=state_size + time_step_rank", "scan(ssm, ", "repeat(num_hidden_layers, layer, "):
        assert piece in text, piece
    assert "aten" not in text and text.count("name=conv1d") == 1
    # `conv_kernel`, `conv_pad` and `expand` match no size word: they are dims because the model uses their values
    assert {"conv_kernel", "conv_pad"} <= set(_dims_section(text))
    torch.manual_seed(1)
    _assert_equal_models(first, text, {"input_ids": torch.randint(0, 50, (2, 11))})


def test_round_trip_of_the_retention_example() -> None:
    """The state `zeros(B, heads, dk, dv)` has two axes of size 8: named by provenance, not size: each projection's
    split after the dim its module's name picks (`v` -> `dv`), the outer product k v^T keeps its two axes apart, and
    the initial state is named after the value it is added to."""
    path = str(ROOT / "examples/small/retention.yaml")
    config, free = _config_and_free(path)
    torch.manual_seed(0)
    first = nnspec.build(path).eval()
    imp = import_module(first, {"x": torch.randn(free["B"], free["T"], 16)}, config, name="retention")
    assert "zeros(B, heads, dk, dv)" in imp.text and "scan(step, " in imp.text
    # each split named after the projection that made it: `v` is split into (heads, dv), `k` into (heads, dk)
    assert "name=v)[B, T, (heads dv)]" in imp.text and "name=k)[B, T, (heads dk)]" in imp.text
    assert _dims_section(imp.text)["d"] == "16"
    _assert_equal_models(first, imp.text, {"x": torch.randn(2, 7, 16)})


class _Layer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.proj(x))


class _Short(nn.Module):
    """Sizes under short keys: width `d`, `depth` layers, `k` outputs; `seed` is a number no shape uses."""

    def __init__(self, d: int = 8, k: int = 3, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(d) for _ in range(depth))
        self.head = nn.Linear(d, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_short_config_keys_are_dims_by_use() -> None:
    torch.manual_seed(0)
    model = _Short().eval()
    imp = import_module(model, {"x": torch.randn(4, 6, 8)}, {"d": 8, "k": 3, "depth": 2, "seed": 5}, name="short")
    dims = _dims_section(imp.text)
    assert dims == {"d": "8", "k": "3", "depth": "2"}, dims
    assert "x: float32[B, T, d]" in imp.text and "repeat(depth, " in imp.text
    assert re.search(r"linear\(\w+, k, name=head\)", imp.text)
    _assert_equal_models(model, imp.text, {"x": torch.randn(2, 7, 8)})


# each role's short name: one letter or a short word, none a free dim's (B T S batch seq src N L K) or a builtin's
_SHORT = {"width": "D", "heads": "H", "head_dim": "E", "ffn": "F", "vocab": "V", "types": "Y", "positions": "P",
          "layers": "depth"}


def _shorten(text: str) -> str:
    """A drawn spec with its dims renamed to short names (each pool name of a role -> the role's short name)."""
    from nnspec.testing.writer import NAME_POOLS

    for role, pool in NAME_POOLS.items():
        for name in pool:
            text = re.sub(rf"\b{name}\b", _SHORT[role], text)
    return text


def _numbered_axes(text: str) -> int:
    """How many axes of the inputs' and outputs' types are numbers rather than names."""
    head = text.split("blocks:")[0].split("body:")[0]
    return sum(len(re.findall(r"\b\d+\b", t)) for t in re.findall(r"^  \w+: \w+\[([^\]]*)\]", head, flags=re.M))


def _short_round_trip(data: st.DataObject) -> str:
    """A drawn spec under short dim names: equal with the width named `D` in the import's dims and an input or
    output type, or refused cleanly."""
    text = _shorten(data.draw(specs(max_layers=2, max_blocks=2, max_width=16), label="spec"))
    config, free = _config_and_free(text)
    inputs = data.draw(inputs_for(nnspec.check(text), **free), label="inputs")
    torch.manual_seed(0)
    first = nnspec.build(text).eval()
    try:
        imp = import_module(first, inputs, config, name="drawn")
    except ImportFailure as exc:
        assert exc.op and str(exc).startswith(f"{exc.op} in module "), str(exc)
        return "refused"
    # the width's short key is a dim, and the inputs' and outputs' axes have dims' names where the drawn spec's
    # have (where dims share a value, such as a width and a vocabulary both 8, either name is the same size)
    assert "D" in _dims_section(imp.text)
    assert _numbered_axes(imp.text) <= _numbered_axes(text), (_numbered_axes(imp.text), _numbered_axes(text))
    _assert_equal_models(first, imp.text, inputs)
    return "equal"


@settings(max_examples=2, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_specs_with_short_dim_names_import_with_those_dims(data: st.DataObject) -> None:
    _short_round_trip(data)


@pytest.mark.slow
def test_most_random_specs_with_short_dim_names_import_with_those_dims() -> None:
    outcomes: list[str] = []

    @settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        outcomes.append(_short_round_trip(data))

    run()
    assert outcomes.count("equal") >= len(outcomes) // 2, outcomes


class _Planted(nn.Module):
    """Plain PyTorch: a causal depthwise conv by zero padding, ranges of a projection, an outer product of two
    values whose axes have one size (dk = dv), and a matrix-vector product."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.conv = nn.Conv1d(8, 8, 3, groups=8)
        self.same = nn.Conv1d(8, 8, 3, padding=1)
        self.proj = nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.inp(x)
        pad = torch.zeros(x.shape[0], 2, 8)
        u = self.conv(torch.cat([pad, u], 1).transpose(1, 2)).transpose(1, 2)        # [B, T, 8]
        u = self.same(u.transpose(1, 2)).transpose(1, 2) + u
        p = self.proj(u)
        a, b, c = p[..., :4], p[..., 4:8], p[..., 8:]                                  # [B, T, 4] each
        outer = a[..., :, None] * b[..., None, :]                                      # [B, T, 4, 4]
        return (outer @ c.unsqueeze(-1)).squeeze(-1) + torch.sigmoid(u.mean(-1, keepdim=True))


def test_planted_padding_slices_and_outer_products_round_trip() -> None:
    torch.manual_seed(0)
    model = _Planted().eval()
    config = {"hidden": 8, "dk": 4, "dv": 4, "kernel": 3}      # no key for the padding: `pad = kernel - 1`
    imp = import_module(model, {"x": torch.randn(5, 6, 8)}, config, name="planted")
    text = imp.text
    assert _dims_section(text)["pad"] == "kernel - 1"
    for piece in ("concat(zeros(B, pad, hidden), ", "into=Tp)", "groups=hidden", "over=Tp, into=T, name=conv)",
                  "padding=1, channel=hidden, over=T, into=T, name=same)", "into=dk)", "[B, T, dk, dv] ="):
        assert piece in text, piece
    _assert_equal_models(model, text, {"x": torch.randn(2, 9, 8)})


class _PadOnes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([torch.ones(x.shape[0], 2, 8), x], 1).transpose(1, 2))


class _SliceSeq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)[:, :3]


class _Strided(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)


def test_near_misses_are_refused_or_get_new_axes() -> None:
    """Padding with ones is not zero padding; a slice of part of the sequence only holds at the traced length; a
    strided convolution shortens the sequence, so its output axis is a new one (and still equal)."""
    x = torch.randn(3, 5, 8)
    with pytest.raises(ImportFailure, match=r"^aten\.cat\.default in module '<root>': a concatenation with a constant"):
        import_module(_PadOnes().eval(), {"x": x}, {"hidden": 8})
    with pytest.raises(ImportFailure, match=r"^aten\.slice\.Tensor in module '<root>': a slice of part of axis T"):
        import_module(_SliceSeq().eval(), {"x": x}, {"hidden": 8})
    torch.manual_seed(0)
    model = _Strided().eval()
    imp = import_module(model, {"x": torch.randn(3, 9, 8)}, {"hidden": 8})
    assert "stride=2, channel=hidden, over=T, into=Tc" in imp.text
    _assert_equal_models(model, imp.text, {"x": torch.randn(2, 11, 8)})
