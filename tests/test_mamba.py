"""Mamba (examples/mamba.yaml) conforms to transformers' MambaForCausalLM: the HF model is built from a small
MambaConfig with random weights (never downloaded), the spec reads the same config.json and takes HF's state dict
through its `weights: hf:` mapping; logits must match HF's at -O0 (the scan as a step loop) and -O2 (all steps at
once), and -O2's gradients must match -O0's. The parameter count is the mamba-130m checkpoint's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import nnspec

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from nnspec.backends.torch.weights import to_source  # noqa: E402
from nnspec.generated import compile_spec  # noqa: E402

SPEC = Path(__file__).parent.parent / "examples" / "mamba.yaml"
CONFIG = dict(vocab_size=97, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4,
              time_step_rank=3, use_associative_scan=False)

PARALLEL = {"parallel_scan": True}   # a backend option asked for by name (not one -O2 turns on)


def pair(tmp_path: Path, opt: int, options: dict[str, bool] | None = None,
         **changes: Any) -> tuple[Any, Any, torch.Tensor]:
    config = transformers.MambaConfig(**{**CONFIG, **changes})
    path = tmp_path / "config.json"
    config.to_json_file(path)
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(config).eval()
    with torch.no_grad():     # HF initialises A_log and D to fixed values; make them random too
        for layer in hf.backbone.layers:
            layer.mixer.A_log.add_(0.3 * torch.randn_like(layer.mixer.A_log))
            layer.mixer.D.add_(0.3 * torch.randn_like(layer.mixer.D))
            layer.norm.weight.add_(0.1 * torch.randn_like(layer.norm.weight))
    ours = nnspec.build(SPEC, config=path, opt=opt, backend_options=options).eval()
    nnspec.load_weights(ours, hf.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(1))
    return hf, ours, ids


@pytest.mark.parametrize("opt", [0, 2])
def test_logits_match_hf(opt: int, tmp_path: Path) -> None:
    hf, ours, ids = pair(tmp_path, opt)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=1e-4, atol=1e-5)


def test_o2_runs_the_scan_at_once_and_its_gradients_equal_the_loops(tmp_path: Path) -> None:
    dims = {k: v for k, v in CONFIG.items() if k not in ("use_associative_scan",)}
    assert "affine_scan(" in compile_spec(SPEC, opt=2, backend_options=PARALLEL, **dims).source
    _, looped, ids = pair(tmp_path, 0)
    _, parallel, _ = pair(tmp_path, 2, PARALLEL)
    looped.train()
    parallel.train()
    probe = torch.randn(2, 13, CONFIG["vocab_size"], generator=torch.Generator().manual_seed(2))
    want = torch.autograd.grad((looped(ids) * probe).sum(), list(looped.parameters()))
    got = torch.autograd.grad((parallel(ids) * probe).sum(), list(parallel.parameters()))
    for (name, _), g, w in zip(parallel.named_parameters(), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=name)


def test_parameters_are_hf_s_one_for_one(tmp_path: Path) -> None:
    hf, ours, _ = pair(tmp_path, 0)
    theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "lm_head.weight"}   # tied
    assert {k: tuple(v.shape) for k, v in to_source(ours).items()} == theirs
    assert sum(p.numel() for p in ours.parameters()) == hf.num_parameters()
