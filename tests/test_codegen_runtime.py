"""Generated modules at run time: train/eval behaviour, frozen parameters, initial padding rows, and export of the
conformance models with their dynamic dims and bounds.

Expected values are computed here by hand (batch statistics, dropout's keep rate) or come from the interpreter,
never from the generated module itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from _small_models import BERT, GPT2, LLAMA, VIT  # noqa: E402

import nnspec  # noqa: E402
from nnspec.backends.torch import Interpreter  # noqa: E402

EXAMPLES = Path(__file__).parent.parent / "examples"


# ---- dropout and batch norm follow train() / eval() ----
@pytest.mark.parametrize("opt", [0, 2])
def test_dropout_is_random_in_training_and_off_in_eval(opt: int) -> None:
    m = nnspec.build(EXAMPLES / "gpt2.yaml", opt=opt, **GPT2)
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        m.eval()
        a, b = m(ids), m(ids)
        m.train()
        torch.manual_seed(1)
        c = m(ids)
        torch.manual_seed(1)
        d = m(ids)
        e = m(ids)
    assert torch.equal(a, b)                      # eval: deterministic
    assert torch.equal(c, d)                      # train: the global seed decides the mask
    assert not torch.allclose(c, e) and not torch.allclose(a, c)
    h = m.wte(ids) + m.wpe(torch.arange(9))       # the embedding dropout alone: p = 0.1 of the values zeroed,
    m.train()                                     # the rest scaled by 1 / 0.9
    torch.manual_seed(2)
    with torch.no_grad():
        dropped = torch.nn.functional.dropout(h.repeat(50, 1, 1), 0.1, True)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.01
    torch.testing.assert_close(dropped[kept], (h.repeat(50, 1, 1) / 0.9)[kept])


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval() -> None:
    """The graph transformer's BatchNorm over `hidden`, checked against the textbook formulas: in training,
    normalise by the batch's mean and biased variance and move the running statistics by momentum 0.1 (with
    the unbiased variance); in eval, normalise by the running statistics alone."""
    m = nnspec.build(EXAMPLES / "small" / "graph_transformer.yaml")
    seen: list[Any] = []
    m.bn1.register_forward_hook(lambda mod, args, out: seen.append((args[0].detach(), out.detach())))
    gen = torch.Generator().manual_seed(0)
    b, n = 3, 5
    inputs = dict(x=torch.randn(b, n, 16, generator=gen), adj=torch.ones(b, n, n, dtype=torch.bool),
                  edges=torch.randn(b, n, n, 4, generator=gen), lap_pe=torch.randn(b, n, 6, generator=gen))
    with torch.no_grad():
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-0.5, 0.5)
        m.train()
        m(**inputs)
        x, y = seen.pop()                                   # [B * N, hidden] per channel, as BatchNorm1d sees it
        flat = x.transpose(1, 2).reshape(-1, x.shape[1]) if x.dim() == 3 else x
        mean, var = flat.mean(0), flat.var(0, unbiased=False)
        want = (flat - mean) / torch.sqrt(var + 1e-5) * m.bn1.weight + m.bn1.bias
        got = y.transpose(1, 2).reshape(-1, y.shape[1]) if y.dim() == 3 else y
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(m.bn1.running_mean, 0.1 * mean)
        torch.testing.assert_close(m.bn1.running_var, 0.9 + 0.1 * flat.var(0, unbiased=True))
        assert int(m.bn1.num_batches_tracked) == 1
        m.eval()
        m(**inputs)
        x, y = seen.pop()
        flat = x.transpose(1, 2).reshape(-1, x.shape[1]) if x.dim() == 3 else x
        want = (flat - m.bn1.running_mean) / torch.sqrt(m.bn1.running_var + 1e-5) * m.bn1.weight + m.bn1.bias
        got = y.transpose(1, 2).reshape(-1, y.shape[1]) if y.dim() == 3 else y
        torch.testing.assert_close(got, want)
        assert int(m.bn1.num_batches_tracked) == 1          # eval leaves the statistics alone


# ---- parameters: frozen ones stay frozen, padding rows start at zero ----
def test_parameters_a_transform_froze_need_no_gradient_as_in_the_interpreter() -> None:
    lora = {"lora": ["h.*.attn.c_attn:2"]}
    m = nnspec.build(EXAMPLES / "gpt2.yaml", transforms=lora, **GPT2)
    from nnspec.compiler.transforms import apply
    model, _ = apply(nnspec.check(EXAMPLES / "gpt2.yaml", **GPT2).model, **lora)
    interp = Interpreter(model)
    want = sorted(k for k, p in interp.named_spec_parameters().items() if p.requires_grad)
    assert want == ["h.0.attn.c_attn.lora_A", "h.0.attn.c_attn.lora_B", "h.1.attn.c_attn.lora_A",
                    "h.1.attn.c_attn.lora_B"]
    assert sorted(k for k, p in m.named_parameters() if p.requires_grad) == want
    m.load_state_dict(interp.root.state_dict())
    m.train()
    m(torch.randint(0, 97, (2, 5))).sum().backward()
    assert all((p.grad is not None) == p.requires_grad for p in m.parameters())


def test_padding_rows_start_at_zero() -> None:
    built = nnspec.build(EXAMPLES / "bert.yaml", **BERT)
    interp = Interpreter(nnspec.check(EXAMPLES / "bert.yaml", **BERT).model)
    for table in (built.embeddings.word_embeddings.weight,
                  interp.root.get_parameter("embeddings.word_embeddings.weight")):
        assert not table[0].any() and table[1:].abs().sum(1).gt(0).all()


# ---- torch.export: batch and sequence as dynamic Dims, with the bounds the guards imply ----
def _bert_inputs(b: int, t: int) -> dict[str, Any]:
    mask = torch.ones(b, t, dtype=torch.long)
    mask[0, t // 2:] = 0
    return {"input_ids": torch.randint(0, 99, (b, t)), "attention_mask": mask,
            "token_type_ids": (torch.arange(t) >= t // 3).long().expand(b, t).contiguous()}


EXPORTS = {
    "bert": ("bert.yaml", BERT, _bert_inputs, 64),
    "llama": ("llama.yaml", LLAMA, lambda b, t: {"input_ids": torch.randint(0, 101, (b, t))}, 64),
}


@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_with_dynamic_dims_and_bounds(name: str, opt: int) -> None:
    """-O2 included: its `linear` and `cat_weights` helpers step aside under tracing, so the exported program
    holds plain aten ops (no oneDNN call, no kept tensor), even for a frozen model."""
    example, dims, make, max_t = EXPORTS[name]
    m = nnspec.build(EXAMPLES / example, opt=opt, **dims).eval().requires_grad_(opt == 0)
    if opt == 2:
        with torch.no_grad():
            m(**make(2, 7))     # a kept concatenation of fused weights must not leak into the trace
    shapes = {k: v for k, v in m.dynamic_shapes().items() if k in make(2, 7)}   # the inputs given
    b_dim, t_dim = shapes["input_ids"][0], shapes["input_ids"][1]
    assert t_dim.max == max_t and all(s[1] is t_dim for s in shapes.values() if s)
    exported = torch.export.export(m, (), make(2, 7), dynamic_shapes=shapes)
    assert not any("mkldnn" in str(n.target) for n in exported.graph.nodes)
    ep = exported.module()
    for b, t in [(3, 5), (1, max_t), (4, 17)]:
        inputs = make(b, t)
        with torch.no_grad():
            want, got = m(**inputs), ep(**inputs)
        for w, g in zip(*(x.values() if isinstance(x, dict) else [x] for x in (want, got)), strict=True):
            torch.testing.assert_close(g, w)
    with pytest.raises(Exception, match=rf"input_ids.*\[1\] <= {max_t}"):    # the exported program's guard
        ep(**make(2, max_t + 1))
    assert b_dim.max > max_t                            # the batch is not bounded


@pytest.mark.slow
def test_vit_exports_with_a_dynamic_batch() -> None:
    m = nnspec.build(EXAMPLES / "vit.yaml", **VIT).eval()
    ep = torch.export.export(m, (), {"pixel_values": torch.randn(2, 3, 32, 32)},
                             dynamic_shapes=m.dynamic_shapes()).module()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ep(pixel_values=x), m(x))
