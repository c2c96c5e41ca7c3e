"""`nnspec.load_weights` / `nnspec.save_weights`: checkpoints in Hugging Face names, through the spec's mapping.

Hugging Face models are built from small configs with random weights (never downloaded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import nnspec  # noqa: E402
from nnspec.backends.torch import Interpreter  # noqa: E402
from nnspec.backends.torch.weights import WeightError  # noqa: E402

GPT2 = Path(__file__).parent.parent / "examples" / "gpt2.yaml"
VIT = Path(__file__).parent.parent / "examples" / "vit.yaml"
SMALL = dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4)


def hf_gpt2(seed: int = 0, **overrides: Any) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**SMALL, **overrides}, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     attn_implementation="eager")
    return transformers.GPT2LMHeadModel(config).eval()


def snapshot(module: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_hf_state_dict_loads_with_its_tied_head_and_matches_hf() -> None:
    hf = hf_gpt2()
    m = nnspec.build(GPT2, **SMALL).eval()
    report = nnspec.load_weights(m, hf.state_dict())
    assert report.tied == {"lm_head.weight": "transformer.wte.weight"}
    assert report.loaded["h.1.attn.c_attn.weight"] == "transformer.h.1.attn.c_attn.weight"
    assert len(report.loaded) == len(m.state_dict())
    ids = torch.randint(0, 97, (3, 11))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), hf(input_ids=ids).logits)


def test_save_is_what_save_pretrained_writes_and_round_trips_exactly(tmp_path: Path) -> None:
    hf = hf_gpt2()
    m = nnspec.build(GPT2, **SMALL)
    nnspec.load_weights(m, hf.state_dict())
    saved = nnspec.save_weights(m, tmp_path / "model.safetensors")
    theirs = hf.state_dict()
    assert set(theirs) - set(saved) == {"lm_head.weight"}   # tied: written once, as save_pretrained does
    assert all(torch.equal(saved[k], theirs[k]) for k in saved)
    again = nnspec.build(GPT2, **SMALL)
    nnspec.load_weights(again, tmp_path / "model.safetensors")
    assert same(snapshot(again), snapshot(m))
    assert same(nnspec.save_weights(again), saved)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(_save_config(hf, tmp_path))
    assert same(reloaded.state_dict(), theirs)


def _save_config(hf: Any, path: Path) -> Path:
    hf.config.save_pretrained(path)
    return path


def test_safetensors_shards_are_read_lazily_through_the_index(tmp_path: Path, monkeypatch: Any) -> None:
    hf = hf_gpt2(seed=3)
    hf.save_pretrained(tmp_path, max_shard_size="60KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    import safetensors.torch
    monkeypatch.setattr(safetensors.torch, "load_file", _refuse)   # whole-file loading is not used
    m = nnspec.build(GPT2, **SMALL)
    nnspec.load_weights(m, tmp_path)
    assert same(nnspec.save_weights(m), {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"})


def _refuse(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("load_weights must not read a whole file")


@pytest.mark.parametrize(("change", "message"), [
    (lambda sd: sd.pop("transformer.h.1.ln_2.bias"), "missing transformer.h.1.ln_2.bias"),
    (lambda sd: sd.__setitem__("transformer.extra", torch.zeros(3)), "unexpected transformer.extra"),
    (lambda sd: sd.__setitem__("lm_head.weight", torch.zeros(97, 64)), "unexpected lm_head.weight"),
    (lambda sd: sd.__setitem__("transformer.h.0.attn.c_attn.weight", torch.zeros(192, 64)),
     r"transformer.h.0.attn.c_attn.weight: \[192, 64\] in the checkpoint, \[64, 192\] expected"),
])
def test_every_problem_is_found_before_anything_is_copied(change: Any, message: str) -> None:
    state = dict(hf_gpt2().state_dict())
    change(state)
    m = nnspec.build(GPT2, **SMALL)
    before = snapshot(m)
    with pytest.raises(WeightError, match=message):
        nnspec.load_weights(m, state)
    assert same(snapshot(m), before)


def test_untied_head_needs_an_untied_spec() -> None:
    hf = hf_gpt2(tie_word_embeddings=False)
    with pytest.raises(WeightError, match=r"unexpected lm_head\.weight"):
        nnspec.load_weights(nnspec.build(GPT2, **SMALL), hf.state_dict())


def test_interpreter_loads_the_same_way() -> None:
    hf = hf_gpt2()
    interp = Interpreter(nnspec.check(GPT2, **SMALL).model).eval()
    nnspec.load_weights(interp, hf.state_dict())
    ids = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(interp(input_ids=ids)["logits"], hf(input_ids=ids).logits)


def test_unsqueezed_checkpoint_tensors_round_trip() -> None:
    dims = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                num_attention_heads=4, intermediate_size=48, num_labels=10)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(**dims, attn_implementation="eager")).eval()
    m = nnspec.build(VIT, **dims).eval()
    nnspec.load_weights(m, hf.state_dict())
    saved = nnspec.save_weights(m)
    assert saved["vit.embeddings.cls_token"].shape == (1, 1, 32)
    assert same(saved, hf.state_dict())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(pixels), hf(pixel_values=pixels).logits)


# ---- split: separate q, k, v projections loaded from GPT-2's fused c_attn ----
FUSED = """\
    qkv = linear(x, 3 * n_embd, name=c_attn)
    q, k, v = split(qkv[B, T, (3 n_head head_dim)], over=3)
"""
SEPARATE = """\
    q = linear(x, n_embd, name=q_attn)[B, T, (n_head head_dim)]
    k = linear(x, n_embd, name=k_attn)[B, T, (n_head head_dim)]
    v = linear(x, n_embd, name=v_attn)[B, T, (n_head head_dim)]
"""


def separate_qkv(pieces: tuple[int, ...] = (0, 1, 2)) -> str:
    """examples/gpt2.yaml with q, k and v as three linears, mapped onto HF's c_attn as its three pieces."""
    text = GPT2.read_text(encoding="utf-8")
    rules = [f"    h.{{i}}.attn.{name}_attn.{leaf}: transformer.h.{{i}}.attn.c_attn.{leaf}"
             f"{' | transpose' if leaf == 'weight' else ''} | split(0, 3, {piece})"
             for name, piece in zip("qkv", pieces, strict=True) for leaf in ("weight", "bias")]
    old = ["    h.{i}.attn.c_attn.weight: transformer.h.{i}.attn.c_attn.weight | transpose",
           "    h.{i}.attn.c_attn.bias: transformer.h.{i}.attn.c_attn.bias"]
    assert FUSED in text and all(line in text for line in old)
    text = text.replace(FUSED, SEPARATE).replace(old[0] + "\n", "\n".join(rules) + "\n").replace(old[1] + "\n", "")
    return text


def test_split_pieces_load_from_one_fused_tensor_and_save_back_to_it_exactly(tmp_path: Path) -> None:
    hf = hf_gpt2()
    m = nnspec.build(separate_qkv(), **SMALL).eval()
    report = nnspec.load_weights(m, hf.state_dict())
    assert report.loaded["h.0.attn.k_attn.weight"] == "transformer.h.0.attn.c_attn.weight"
    w = hf.state_dict()["transformer.h.0.attn.c_attn.weight"]            # Conv1D: [in, 3 * out]
    assert torch.equal(m.state_dict()["h.0.attn.v_attn.weight"], w[:, 128:].t())
    ids = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(m(ids), hf(input_ids=ids).logits)
    saved = nnspec.save_weights(m, tmp_path / "model.safetensors")
    assert same(saved, {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"})
    again = nnspec.build(separate_qkv(), **SMALL)
    nnspec.load_weights(again, tmp_path / "model.safetensors")
    assert same(snapshot(again), snapshot(m))


@pytest.mark.parametrize("text", [separate_qkv((0, 1, 1)),                     # piece 2 missing, piece 1 twice
                                  separate_qkv().replace("split(0, 3, 2)", "split(0, 4, 2)")])   # 3 or 4 pieces?
def test_split_pieces_must_cover_the_tensor_once(text: str) -> None:
    m = nnspec.build(text, **SMALL)     # checking the spec does not look at the pieces; loading does
    before = snapshot(m)
    with pytest.raises(WeightError, match=r"split\(D, N, I\) pieces.*transformer.h.0.attn.c_attn.weight"):
        nnspec.load_weights(m, hf_gpt2().state_dict())
    assert same(snapshot(m), before)


def test_transforms_apply_in_the_order_written() -> None:
    """A rule's transforms are a pipe from the checkpoint's tensor to the parameter: `squeeze(0) | transpose`
    takes a [1, in, out] tensor to [in, out] and then to the parameter's [out, in]; saving runs the pipe back."""
    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight_maps = {"hf": [("w", "their.w", ("squeeze(0)", "transpose"))]}
            self.w = torch.nn.Parameter(torch.zeros(3, 5))

    theirs = torch.arange(15.0).reshape(1, 5, 3)
    m = Tiny()
    nnspec.load_weights(m, {"their.w": theirs})
    assert torch.equal(m.w.detach(), theirs[0].t())
    assert same(nnspec.save_weights(m), {"their.w": theirs})
    with pytest.raises(WeightError, match=r"their.w: \[5, 3\] in the checkpoint, \[1, 5, 3\] expected"):
        nnspec.load_weights(m, {"their.w": theirs[0]})


def test_unsqueeze_inserts_the_axes_the_checkpoint_lacks() -> None:
    """`unsqueeze(0, 2)` takes a checkpoint's [3, 5] to the parameter's [1, 3, 1, 5] (torch.unsqueeze(0), then
    (2)), the inverse of `squeeze(0, 2)`; saving removes the axes again. It used to remove axes instead."""
    class Tiny(torch.nn.Module):
        def __init__(self, rule: str, shape: tuple[int, ...]) -> None:
            super().__init__()
            self.weight_maps = {"hf": [("w", "their.w", (rule,))]}
            self.w = torch.nn.Parameter(torch.zeros(shape))

    theirs = torch.arange(15.0).reshape(3, 5)
    m = Tiny("unsqueeze(0, 2)", (1, 3, 1, 5))
    nnspec.load_weights(m, {"their.w": theirs})
    assert torch.equal(m.w.detach(), theirs[None, :, None, :])
    assert same(nnspec.save_weights(m), {"their.w": theirs})
    squeezed = Tiny("squeeze(0, 2)", (3, 5))
    nnspec.load_weights(squeezed, {"their.w": theirs[None, :, None, :]})
    assert torch.equal(squeezed.w.detach(), theirs)
    with pytest.raises(WeightError, match=r"their.w: \[1, 3, 5\] in the checkpoint, \[3, 5\] expected"):
        nnspec.load_weights(m, {"their.w": theirs[None]})
