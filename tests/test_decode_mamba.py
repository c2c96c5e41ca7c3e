"""Mamba (examples/mamba.yaml) decodes through the step written into its generated file: each layer's causal
convolution keeps its last K-1 inputs and its selective scan its state, as the cache (`ScanState`).

Expected values: transformers' MambaForCausalLM from a small MambaConfig with random weights (never downloaded):
its greedy `generate` tokens and per-step logits (its own conv/SSM cache), and its full forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import nnspec  # noqa: E402
from nnspec.generate import Decoder  # noqa: E402
from nnspec.pipeline import Pipeline  # noqa: E402

SPEC = Path(__file__).parent.parent / "examples" / "mamba.yaml"
CONFIG = dict(vocab_size=97, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4,
              time_step_rank=3, use_associative_scan=False)


def pair(tmp_path: Path, opt: int) -> tuple[Any, Any]:
    config = transformers.MambaConfig(**CONFIG)
    config.to_json_file(tmp_path / "config.json")
    torch.manual_seed(0)
    hf = transformers.MambaForCausalLM(config).eval()
    with torch.no_grad():     # HF initialises A_log and D to fixed values; make them random too
        for layer in hf.backbone.layers:
            layer.mixer.A_log.add_(0.3 * torch.randn_like(layer.mixer.A_log))
            layer.mixer.D.add_(0.3 * torch.randn_like(layer.mixer.D))
    ours = nnspec.build(SPEC, config=tmp_path / "config.json", opt=opt).eval()
    nnspec.load_weights(ours, hf.state_dict())
    return hf, ours


@pytest.mark.parametrize("opt", [2, pytest.param(1, marks=pytest.mark.slow), pytest.param(0, marks=pytest.mark.slow)])
def test_mamba_generates_hf_tokens_and_logits_with_the_emitted_step(opt: int, tmp_path: Path) -> None:
    hf, ours = pair(tmp_path, opt)
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    new = 8
    decoder = Decoder(ours)
    step = decoder.step(2, ids.shape[1] + new)
    assert type(step).__name__ == "MambaDecoder"   # the generated file's step, not the reference
    logits: list[torch.Tensor] = []
    got = decoder.generate(ids, max_new_tokens=new, step=step, output_logits=logits)
    with torch.no_grad():
        theirs = hf.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
        whole = hf(got).logits          # HF's full forward over every token, decoded ones included
    assert torch.equal(got, theirs.sequences)
    for i, (a, b) in enumerate(zip(logits, theirs.logits, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, i=i: f"step {i}: {m}")
        torch.testing.assert_close(a, whole[:, ids.shape[1] - 1 + i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("opt", [0, 2])
def test_the_mamba_step_keeps_the_convolutions_window(opt: int, tmp_path: Path) -> None:
    transformers.MambaConfig(**CONFIG).to_json_file(tmp_path / "config.json")
    artifact = Pipeline(SPEC, config=tmp_path / "config.json").artifact(opt=opt)
    source = artifact.source
    assert "window = cache.pop(0)  # this convolution's last 3 inputs (B, conv_pad, intermediate_size)" in source
    assert "window.state.copy_(padded[:, -3:])" in source
    assert "for _ in range(2):   # the same entries for each layer" in source
    assert any("2 scan state(s) and 2 causal convolution window(s)" in line for line in artifact.explain)
    compile(source, "mamba.py", "exec")


@pytest.mark.slow    # ~15 s (export, then dynamo over 2 layers); a window and a scan compile by default in
@pytest.mark.parametrize("backend", ["eager", "inductor"])      # test_decode_scan_emitted.py
def test_the_compiled_mamba_step_is_one_graph_for_every_step(backend: str, tmp_path: Path) -> None:
    """Greedy decoding with the one-token step exported and `torch.compile`d once (`Decoder.compiled`): HF's
    tokens, one graph for every step, no graph break, no recompile on a second generate."""
    from torch._dynamo.utils import counters
    hf, ours = pair(tmp_path, 2)
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 5), generator=torch.Generator().manual_seed(3))
    decoder = Decoder(ours)
    step = decoder.step(2, 11)
    torch._dynamo.reset()
    counters.clear()
    run = decoder.compiled(step, backend=backend)
    with torch.no_grad(), torch._dynamo.config.patch(error_on_recompile=True):
        theirs = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
        first = decoder.generate(ids, max_new_tokens=6, step=step, step_fn=run)
        again = decoder.generate(ids, max_new_tokens=6, step=step, step_fn=run)
    assert torch.equal(first, theirs) and torch.equal(again, theirs)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


@pytest.mark.slow   # torch.export traces the whole step (~10 s); the retention step's export runs by default
def test_the_mamba_step_exports(tmp_path: Path) -> None:
    _, ours = pair(tmp_path, 2)
    step = Decoder(ours).step(2, 10)
    ids = torch.randint(3, CONFIG["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(2))
    keys = torch.ones(2, 10, dtype=torch.int64)
    with torch.no_grad():
        step(ids[:, :6], torch.arange(6), keys)
        kept = [b.clone() for b in step.buffers()]
        expected = step(ids[:, 6:7], torch.tensor([6]), keys)
        for b, k in zip(step.buffers(), kept, strict=True):
            b.copy_(k)
        run = torch.export.export(step, (ids[:, 6:7], torch.tensor([6]), keys)).module()
        got = run(ids[:, 6:7], torch.tensor([6]), keys)
        whole = ours(ids[:, :7])
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got, whole[:, 6:], atol=1e-5, rtol=1e-5)
