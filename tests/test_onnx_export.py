"""`nnspec export --onnx` / `nnspec.export.onnx.export_onnx`: an ONNX file that passes `onnx.checker`, keeps the
spec's free dims dynamic, and computes (in onnxruntime) what the torch module computes, at shapes other than the
ones it was exported with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nnspec
from nnspec.export.onnx import export_onnx
from tests._small_models import GPT2

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parent.parent

MLP = """nnspec: 1
name: mlp
dims:
  d: 12
  f: 20
inputs:
  x: float32[B, T, d]
outputs:
  y: float32[B, T, d]
body: |
  h = gelu(linear(x, f, name=up))
  y = layernorm(x + linear(h, d, name=down), name=norm)
"""


def _run_ort(path: Path, feed: dict[str, torch.Tensor]) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {k: v.numpy() for k, v in feed.items()})[0])


def test_small_spec_exports_with_dynamic_batch_and_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nnspec.build(MLP, opt=2).eval()
    info = export_onnx(model, tmp_path / "mlp.onnx")
    assert info["checked"] and info["max_abs_diff"] < 1e-5
    graph_input = onnx.load(str(tmp_path / "mlp.onnx")).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, True, False] and dims[2].dim_value == 12
    x = torch.randn(5, 9, 12, generator=torch.Generator().manual_seed(3))   # not the exported shape
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(_run_ort(tmp_path / "mlp.onnx", {"x": x}), want, rtol=1e-4, atol=1e-5)


def test_export_onnx_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nnspec.cli import app

    spec = tmp_path / "mlp.yaml"
    spec.write_text(MLP)
    run = CliRunner().invoke(app, ["export", str(spec), "--onnx", str(tmp_path / "m.onnx")])
    assert run.exit_code == 0, run.output
    assert "checked" in run.stdout and (tmp_path / "m.onnx").is_file()
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


@pytest.mark.slow
def test_gpt2_exports_and_matches_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nnspec.build(ROOT / "examples" / "gpt2.yaml", **GPT2).eval()
    info = export_onnx(model, tmp_path / "gpt2.onnx")
    assert info["max_abs_diff"] < 1e-4
    ids = torch.arange(21).reshape(3, 7) % GPT2["vocab_size"]
    with torch.no_grad():
        want = model(ids)
    want = want if torch.is_tensor(want) else want["logits"]
    torch.testing.assert_close(_run_ort(tmp_path / "gpt2.onnx", {"input_ids": ids}), want, rtol=1e-4, atol=1e-4)
