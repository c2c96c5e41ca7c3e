"""The decoding step written into the generated file for a scan-state model (retention): the scan's state is the
cache (`ScanState`), at every -O level and with `parallel_scan`.

Expected values: RetNet's recurrence written out in plain PyTorch in this file (S_t = gamma S_(t-1) + k_t v_t^T,
o_t = q_t S_t) on the module's own weights; the node-by-node reference step (`DecodeStep`) step by step;
`torch.export` of the emitted step against its eager run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.generate import Decoder, emitted_decoder  # noqa: E402
from nnspec.pipeline import Pipeline  # noqa: E402

RETENTION = Path(__file__).parent.parent / "examples" / "small" / "retention.yaml"
GAMMA, HEADS, D = 0.9, 2, 16


def recurrence(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """RetNet's recurrent form, written from the paper, on the module's weights (q, k, v, out: nn.Linear)."""
    b, t, _ = x.shape
    dk = D // HEADS
    q = (x @ module.q.weight.T).reshape(b, t, HEADS, dk)
    k = (x @ module.k.weight.T).reshape(b, t, HEADS, dk)
    v = (x @ module.v.weight.T).reshape(b, t, HEADS, dk)
    s = torch.zeros(b, HEADS, dk, dk)
    outs = []
    for i in range(t):
        s = GAMMA * s + k[:, i, :, :, None] * v[:, i, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, i], s))
    return torch.stack(outs, 1).reshape(b, t, D) @ module.out.weight.T


def stepwise(step: torch.nn.Module, x: torch.Tensor, prefill: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A prefill of `prefill` positions, then one position per step: the outputs concatenated, and each step's."""
    b, t, _ = x.shape
    keys = torch.ones(b, t, dtype=torch.int64)
    outs = [step(x[:, :prefill], torch.arange(prefill), keys)]
    outs += [step(x[:, i:i + 1], torch.arange(i, i + 1), keys) for i in range(prefill, t)]
    return torch.cat(outs, 1), outs


@pytest.mark.parametrize(("opt", "parallel"), [(0, False), (1, False), (2, False), (2, True)])
def test_emitted_scan_step_is_the_recurrence(opt: int, parallel: bool) -> None:
    torch.manual_seed(0)
    options = {"parallel_scan": True} if parallel else None
    module = nnspec.build(RETENTION, opt=opt, backend_options=options).eval()
    assert emitted_decoder(module) is not None
    decoder = Decoder(module)
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(1))
    step = decoder.step(2, 9)
    assert type(step).__name__ == "RetentionDecoder"
    reference = decoder.reference_step(2, 9)
    with torch.no_grad():
        expected = recurrence(module, x)
        got, steps = stepwise(step, x, prefill=4)
        _, ref_steps = stepwise(reference, x, prefill=4)
        # a second pass over the same cache starts again from the initial state at position 0
        again, _ = stepwise(step, x, prefill=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
    for a, b in zip(steps, ref_steps, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # the state left behind is the recurrence's final state
    assert step.cache[0].state.abs().sum() > 0 and step.cache_bytes() == 0


def test_the_scan_step_is_readable_code_and_explained() -> None:
    artifact = Pipeline(RETENTION).artifact(opt=2)
    source = artifact.source
    step = source[source.index("    def decode_step("):source.index("\nclass RetentionDecoder(")]
    assert "carried = cache.pop(0)  # this scan's state (B, heads, dk, dv), kept between steps" in step
    assert "torch.where(cache_position[0] == 0, " in step and "carried.state.copy_(" in step
    assert "for i in range(q_1.shape[1]):" in step         # the forward's loop, over the new positions only
    assert "class ScanState(nn.Module):" in source
    assert "cache: list[nn.Module] = [ScanState(state_1, torch.float32, device)]" in source
    assert any(line.startswith("torch: decode_step emitted in the file: 1 scan state(s) and 0 causal convolution")
               for line in artifact.explain)
    assert not any("reference step" in line for line in artifact.explain)
    compile(source, "retention.py", "exec")


def test_export_of_the_emitted_scan_step_runs_and_carries_the_state() -> None:
    torch.manual_seed(0)
    module = nnspec.build(RETENTION, opt=2).eval()
    step = Decoder(module).step(2, 8)
    x = torch.randn(2, 8, D, generator=torch.Generator().manual_seed(2))
    keys = torch.ones(2, 8, dtype=torch.int64)
    with torch.no_grad():
        step(x[:, :5], torch.arange(5), keys)
        kept = step.cache[0].state.clone()
        expected = step(x[:, 5:6], torch.tensor([5]), keys)
        after = step.cache[0].state.clone()
        step.cache[0].state.copy_(kept)
        exported = torch.export.export(step, (x[:, 5:6], torch.tensor([5]), keys))
        run = exported.module()
        got = run(x[:, 5:6], torch.tensor([5]), keys)
    torch.testing.assert_close(got, expected)
    assert run.get_buffer("cache.0.state").data_ptr() == step.cache[0].state.data_ptr()
    torch.testing.assert_close(step.cache[0].state, after)
    assert not torch.equal(after, kept)


@pytest.mark.parametrize(("opt", "parallel"), [pytest.param(0, False, marks=pytest.mark.slow),
                                               pytest.param(2, False, marks=pytest.mark.slow), (2, True)])
def test_the_scan_step_compiles_once_for_every_step(opt: int, parallel: bool) -> None:
    """`torch.compile` of the emitted scan step: one graph for every one-token step (the position a tensor, the
    state a mutated buffer), no graph break, no recompile across steps or a second sequence, and the numbers
    of the recurrence written above."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    options = {"parallel_scan": True} if parallel else None
    module = nnspec.build(RETENTION, opt=opt, backend_options=options).eval()
    step = Decoder(module).step(2, 9)
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend="eager", dynamic=False)
    keys = torch.ones(2, 9, dtype=torch.int64)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        expected = recurrence(module, x)
        for prefill in (4, 2):       # a second sequence over the same state starts again at position 0
            outs = [step(x[:, :prefill], torch.arange(prefill), keys)]     # the prefill runs eagerly
            outs += [compiled(x[:, i:i + 1], torch.arange(i, i + 1), keys) for i in range(prefill, 9)]
            torch.testing.assert_close(torch.cat(outs, 1), expected, atol=1e-5, rtol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def window_spec(extra: str = "") -> str:
    """A causal depthwise convolution (a prefix of ones before the sequence: a window state) then a scan."""
    return f"""nnspec: 1
name: probe
dims: {{d: 8, pad: 3}}
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
blocks:
  step(s, u): |
    s = 0.5 * s + u
    return s, s
body: |
  padded = concat(zeros(B, pad, d) + 1.0, x, over=(pad, T), into=Tp)
  u = conv(padded, d, 4, groups=d, channel=d, over=Tp, into=T, name=c){extra}
  last, y = scan(step, zeros(B, d), u, over=T)
"""


def test_a_causal_convolutions_window_is_kept_between_steps() -> None:
    torch.manual_seed(0)
    module = nnspec.build(window_spec(), opt=2).eval()
    step = Decoder(module).step(2, 9)
    assert type(step).__name__ == "ProbeDecoder" and len(step.cache) == 2
    x = torch.randn(2, 9, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        # written from the spec: conv1d over [ones(3), x], then y_t = 0.5 y_(t-1) + u_t
        padded = torch.cat([torch.ones(2, 3, 8), x], 1).transpose(1, 2)
        u = torch.nn.functional.conv1d(padded, module.c.weight, module.c.bias, groups=8).transpose(1, 2)
        y, outs = torch.zeros(2, 8), []
        for t in range(9):
            y = 0.5 * y + u[:, t]
            outs.append(y)
        expected = torch.stack(outs, 1)
        got, _ = stepwise(step, x, prefill=2)    # a prefill shorter than the window, then one position a step
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_window_read_by_another_op_is_refused() -> None:
    from nnspec.errors import SpecError
    from nnspec.generate import decode_model
    with pytest.raises(SpecError) as e:
        decode_model(nnspec.check(window_spec("\n  u = u * sum(padded, over=Tp)")).model)
    assert e.value.code == "E015" and e.value.span is not None


def test_a_window_and_a_scan_compile_once_for_every_step() -> None:
    """`torch.compile` of a step carrying a causal convolution's window and a scan's state (Mamba's two kinds of
    state): one graph for every one-token step, no recompile, the eager step's numbers."""
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    step = Decoder(nnspec.build(window_spec(), opt=2).eval()).step(2, 8)
    x = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(5))
    keys = torch.ones(2, 8, dtype=torch.int64)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(step, backend="eager", dynamic=False)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        expected, _ = stepwise(step, x, prefill=2)
        outs = [step(x[:, :2], torch.arange(2), keys)]
        outs += [compiled(x[:, i:i + 1], torch.arange(i, i + 1), keys) for i in range(2, 8)]
    torch.testing.assert_close(torch.cat(outs, 1), expected)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
