"""`nnspec.save_pretrained` / `nnspec export --hf`: the directory Hugging Face's `from_pretrained` loads.

Expected values: the transformers class the spec's `hf_config.export` names, loaded from the directory (config
and weights both read by transformers), computes what the nnspec module computes on the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nnspec
from nnspec.export.hf import parse_size
from tests._small_models import BERT, GPT2, LLAMA, VIT

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parent.parent


def _build(name: str, dims: dict, opt: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    return nnspec.build(ROOT / "examples" / f"{name}.yaml", opt=opt, **dims).eval()


def _out(y: object, key: str) -> torch.Tensor:
    return y if torch.is_tensor(y) else y[key]   # type: ignore[index]


@pytest.mark.parametrize(("name", "dims", "opt"), [("gpt2", GPT2, 0), ("llama", LLAMA, 2)])
def test_causal_lm_round_trip_through_from_pretrained(tmp_path: Path, name: str, dims: dict, opt: int) -> None:
    model = _build(name, dims, opt)
    files = nnspec.save_pretrained(model, tmp_path, max_shard_size="40KB")   # several shards and an index
    assert (tmp_path / "model.safetensors.index.json") in files and len(files) > 3
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files if f.name.startswith("model-")}
    config = json.loads((tmp_path / "config.json").read_text())
    assert {k: config[k] for k in dims} == dims   # the bound dims, under Hugging Face's names
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == config["architectures"][0]
    ids = torch.arange(14).reshape(2, 7) * 5 % dims["vocab_size"]
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, _out(model(ids), "logits"), rtol=1e-4, atol=1e-5)


def test_one_file_below_the_shard_size_and_a_rewrite_drops_stale_shards(tmp_path: Path) -> None:
    model = _build("llama", LLAMA)
    nnspec.save_pretrained(model, tmp_path, max_shard_size="40KB")
    files = nnspec.save_pretrained(model, tmp_path)
    assert sorted(f.name for f in files) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(hf.model.layers[1].mlp.up_proj.weight, model.layers[1].mlp.up_proj.weight)


def test_bert_and_vit_load_in_their_classes(tmp_path: Path) -> None:
    bert = _build("bert", BERT)
    nnspec.save_pretrained(bert, tmp_path / "bert")
    hf_bert = transformers.AutoModel.from_pretrained(tmp_path / "bert").eval()
    ids = torch.arange(12).reshape(2, 6) * 7 % BERT["vocab_size"]
    with torch.no_grad():
        torch.testing.assert_close(hf_bert(ids).last_hidden_state, _out(bert(ids), "last_hidden_state"),
                                   rtol=1e-4, atol=1e-5)
    vit = _build("vit", VIT)
    nnspec.save_pretrained(vit, tmp_path / "vit")
    hf_vit = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "vit").eval()
    pixels = torch.randn(2, 3, VIT["image_size"], VIT["image_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_vit(pixels).logits, _out(vit(pixel_values=pixels), "logits"),
                                   rtol=1e-4, atol=1e-5)


def test_parse_size() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size("200MiB") == 200 * 2**20 and parse_size(1000) == 1000
    with pytest.raises(nnspec.UsageError):
        parse_size("lots")


def test_export_hf_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nnspec.cli import app

    sets = [f"--set={k}={v}" for k, v in GPT2.items()]
    run = CliRunner().invoke(app, ["export", str(ROOT / "examples" / "gpt2.yaml"), "--hf", str(tmp_path / "out"),
                                   "--json", *sets])
    assert run.exit_code == 0, run.output
    written = json.loads(run.stdout)["hf"]
    assert sorted(Path(f).name for f in written) == ["config.json", "model.safetensors"]
    config = transformers.AutoConfig.from_pretrained(tmp_path / "out")
    assert (config.model_type, config.n_layer, config.n_embd) == ("gpt2", GPT2["n_layer"], GPT2["n_embd"])
    none = CliRunner().invoke(app, ["export", str(ROOT / "examples" / "gpt2.yaml")])
    assert none.exit_code == 2 and "--hf DIR" in none.stderr


@pytest.mark.slow
def test_export_hf_cli_subprocess(tmp_path: Path) -> None:
    """The installed command, as a user runs it: no traceback on a usage mistake."""
    run = subprocess.run([sys.executable, "-m", "nnspec.cli", "export", str(ROOT / "examples" / "gpt2.yaml"),
                          "--hf", str(tmp_path / "out"), *[f"--set={k}={v}" for k, v in GPT2.items()]],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote" in run.stdout and (tmp_path / "out" / "config.json").is_file()
    none = subprocess.run([sys.executable, "-m", "nnspec.cli", "export", str(ROOT / "examples" / "gpt2.yaml")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert none.returncode == 2 and "--hf DIR" in none.stderr and "Traceback" not in none.stderr
