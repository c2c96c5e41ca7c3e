"""hoist-invariant: work a repeated block does alike in every iteration runs once, where the repeat is run.

Planted: a table computed from an argument every iteration receives unchanged (inside a block the repeated block
calls, so it leaves two levels). Near misses that must stay: an op reading a per-layer parameter, a random op
(dropout), a value computed from the carried state. Numbers: -O2 against -O0 and against the reference interpreter,
in the generated code and the interpreter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_passes_support import assert_idempotent, assert_same_outputs, inputs_for, optimized, state

import nnspec
from nnspec.backends.torch.interpreter import Interpreter

torch = pytest.importorskip("torch")

SPEC = """
nnspec: 1
name: hoist
dims: {d: 8}
inputs:
  x: float32[B, T, d]
  pos: int64[B, T]
outputs:
  y: float32[B, T, d]
blocks:
  angles(p): |
    return cos(cast(p, "float32") * 0.5) + 1.0
  layer(h, p): |
    table = angles(p, name=angles)
    kept = dropout(cast(p, "float32") * 0.25, 0.1)
    gain = exp(param(d, name=g) * 0.1)
    state = exp(h * 0.01)
    return linear(h, d, name=fc) * table + kept + gain + state
body: |
  y = repeat(COUNT, layer, x, pos, name=layers)
"""


def ops_in(graph) -> list[str]:
    return [n.op for n in graph if n.op not in ("input", "const")]


def test_invariant_work_leaves_the_repeat_and_near_misses_stay() -> None:
    model, opt, lines = optimized(SPEC.replace("COUNT", "3"), passes="hoist-invariant,cse,dce")
    body, layer = opt.graph, opt.templates["layer"]
    assert "cos" in ops_in(body) and "cos" not in ops_in(layer)            # the planted table: once per forward
    assert "angles" not in opt.templates                                   # its block was left returning its argument
    assert "dropout" in ops_in(layer) and "dropout" not in ops_in(body)     # random: one draw per iteration
    assert ops_in(layer).count("exp") == 2 and "exp" not in ops_in(body)    # per-layer parameter; carried state
    assert "param" not in ops_in(body) and "linear" in ops_in(layer)
    assert state(opt) == state(model)
    assert any("hoist-invariant" in line and "cos" not in line for line in lines)
    assert_same_outputs(model, opt, T=5)
    assert_idempotent(opt, passes="hoist-invariant,cse,dce")


def test_blocks_run_once_are_left_alone() -> None:
    _, opt, _ = optimized(SPEC.replace("COUNT", "1"), passes="hoist-invariant")
    assert "cos" in ops_in(opt.templates["angles"]) and "cos" not in ops_in(opt.graph)


def test_generated_code_at_O2_matches_O0_and_the_interpreter() -> None:
    text = SPEC.replace("COUNT", "3")
    o0, o2 = nnspec.build(text, opt=0).eval(), nnspec.build(text, opt=2).eval()
    o2.load_state_dict(o0.state_dict())
    model = nnspec.check(text).model
    ins = inputs_for(model, T=5)
    ins["pos"] = torch.arange(5).repeat(2, 1) * 3
    reference = Interpreter(model).eval()   # the reference interpreter, on the checked graph, same weights
    reference.root.load_state_dict(o0.state_dict())
    with torch.no_grad():
        want = reference(**ins)["y"]
        got0, got2 = o0(**ins), o2(**ins)
    assert not torch.equal(ins["pos"], torch.zeros_like(ins["pos"]))
    torch.testing.assert_close(got0, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got2, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow   # elaborating Swin takes ~10 s; the planted tests above cover the pass in the default run
def test_swin_builds_its_shifted_window_mask_once_per_stage(tmp_path) -> None:
    """Numbers at -O2 against Hugging Face with a repeated stage: tests/test_swin.py (depths 2-4-2-2)."""
    transformers = pytest.importorskip("transformers")
    from nnspec.pipeline import Pipeline
    config = transformers.SwinConfig(image_size=32, patch_size=2, num_channels=3, window_size=2, embed_dim=8,
                                     num_heads=[2, 2, 2, 2], depths=[2, 4, 2, 2], drop_path_rate=0.0)
    path = tmp_path / "config.json"
    config.to_json_file(path)
    pipe = Pipeline(Path(__file__).parent.parent / "examples" / "swin.yaml", config=path)
    model = pipe.optimized(2).model
    assert any(n.op == "repeat" and n.attrs["count"] > 1 for n in model.graph), "the 4-layer stage repeats a pair"
    mask_lines = {n.span.line for n in pipe.checked.model.templates["shift_mask"] if n.op == "where"}
    assert mask_lines and mask_lines <= {n.span.line for n in model.graph if n.op == "where" and n.span is not None}
