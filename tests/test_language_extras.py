"""Language features not covered elsewhere: relative includes, cross-attention, and a torch-free spec stage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import nnspec

ROOT = Path(__file__).parent.parent

LIB = """\
nnspec: 1
blocks:
  double(x): |
    return x + x
"""

MAIN = """\
nnspec: 1
name: uses_lib
include: [lib/double.yaml]
dims:
  d: 4
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
body: |
  y = double(x)
"""


def test_relative_include_from_the_spec_directory(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "double.yaml").write_text(LIB)
    (tmp_path / "main.yaml").write_text(MAIN)
    result = nnspec.check(tmp_path / "main.yaml")
    assert [n.op for n in result.model.graph if n.op == "call"] == ["call"]


def test_library_cannot_include_its_parent_directory(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "double.yaml").write_text("nnspec: 1\ninclude: [../main_lib.yaml]\n")
    (tmp_path / "main_lib.yaml").write_text("nnspec: 1\ninclude: [lib/double.yaml]\n")
    (tmp_path / "main.yaml").write_text(MAIN.replace("[lib/double.yaml]", "[main_lib.yaml]"))
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(tmp_path / "main.yaml")
    # `..` is refused before any cycle could form: includes never leave their file's directory upwards
    assert err.value.code == "E028" and err.value.span is not None
    assert err.value.span.source.name.endswith("double.yaml")


def test_include_cycle_between_siblings(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("nnspec: 1\ninclude: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("nnspec: 1\ninclude: [a.yaml]\n")
    (tmp_path / "main.yaml").write_text(MAIN.replace("[lib/double.yaml]", "[a.yaml]"))
    with pytest.raises(nnspec.SpecError) as err:
        nnspec.check(tmp_path / "main.yaml")
    assert err.value.code == "E020" and "a.yaml -> b.yaml -> a.yaml" in err.value.message


CROSS = """\
nnspec: 1
name: cross
dims:
  d: 8
  h: 2
  hd: d / h
inputs:
  x: float32[B, T, d]        # queries from the decoder
  mem: float32[B, M, d]      # keys and values from the encoder
outputs:
  y: float32[B, T, d]
body: |
  q = linear(x, d, name=q)[B, T, (h hd)]
  k = linear(mem, d, name=k)[B, M, (h hd)]
  v = linear(mem, d, name=v)[B, M, (h hd)]
  y = linear(attention(q, k, v, key=M, dim=hd)[B, T, (h hd)], d, name=o)
"""


def test_cross_attention_reads_another_sequence() -> None:
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch import Interpreter

    interp = Interpreter(nnspec.check(CROSS).model).eval()
    x, mem = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    p = {k: v.detach() for k, v in interp.named_spec_parameters().items()}
    q = torch.nn.functional.linear(x, p["q.weight"], p["q.bias"]).view(2, 3, 2, 4).transpose(1, 2)
    k = torch.nn.functional.linear(mem, p["k.weight"], p["k.bias"]).view(2, 5, 2, 4).transpose(1, 2)
    v = torch.nn.functional.linear(mem, p["v.weight"], p["v.bias"]).view(2, 5, 2, 4).transpose(1, 2)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(interp(x=x, mem=mem)["y"],
                                   torch.nn.functional.linear(o, p["o.weight"], p["o.bias"]))


def test_checking_never_imports_torch() -> None:
    """The spec and compiler stages run where torch is not installed."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now fails
        import nnspec
        for name in ["gpt2", "bert", "vit", "llama"]:
            nnspec.check({str(ROOT)!r} + f"/examples/{{name}}.yaml")
        from nnspec.compiler.printer import print_model
        print_model(nnspec.check({str(ROOT)!r} + "/examples/gpt2.yaml").model)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_hf_config_label_count_comes_from_id2label(tmp_path: Path) -> None:
    """PretrainedConfig writes no num_labels key: the count is the size of id2label."""
    import json

    config = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 4, "intermediate_size": 48, "id2label": {str(i): f"c{i}" for i in range(7)}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = nnspec.check(ROOT / "examples" / "vit.yaml", config=tmp_path / "config.json")
    classifier = next(r for r in result.rows if r.name == "classifier")
    assert classifier.concrete == "B x 7" and classifier.params == 32 * 7 + 7
