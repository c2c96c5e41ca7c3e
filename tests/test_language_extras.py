"""Language features not covered elsewhere: relative includes, cross-attention, and a torch-free spec stage."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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


# ---- every op the language promises, against PyTorch written here independently ---------------------------
# Each spec below is checked, run by the reference interpreter on random inputs, and compared with the same
# computation written directly in torch.nn.functional (or by hand where torch has no one call for it).

def _spec_text(name: str, dims: str, inputs: str, outputs: str, body: str) -> str:
    def block(text: str) -> str:
        return "".join(f"  {line.strip()}\n" for line in text.strip().splitlines())
    return (f"nnspec: 1\nname: {name}\ndims: {{{dims}}}\ninputs:\n{block(inputs)}outputs:\n{block(outputs)}"
            f"body: |\n{block(body)}")


def _run(text: str, train: bool = False, **inputs: Any) -> tuple[dict[str, Any], dict[str, Any], nnspec.CheckResult]:
    """Outputs, parameters (by spec path) and the check result; asserts params == numel, and that the output shapes
    are those check inferred, on the CPU and on the meta device."""
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch import Interpreter

    result = nnspec.check(text)
    interp = Interpreter(result.model, seed=0).train(train)
    params = {k: v.detach() for k, v in interp.named_spec_parameters().items()}
    assert result.params == sum(p.numel() for p in params.values())
    with torch.no_grad():
        out = interp(**inputs)
        meta = Interpreter(result.model, device="meta").train(train)(**{k: v.to("meta") for k, v in inputs.items()})
    sizes = interp.bind_sizes(inputs)
    for name, node in result.model.outputs.items():   # the shape check inferred is the shape computed
        t = result.model.graph[node].tensor_type
        shape = tuple(int(result.model.dims.concrete(s).xreplace(sizes)) for s in t.sizes)
        assert tuple(out[name].shape) == tuple(meta[name].shape) == shape, name
        assert out[name].dtype == meta[name].dtype, name
    return out, params, result


ELEMENTWISE = _spec_text(
    "elementwise", "d: 6", "x: float32[B, d]\ny: float32[B, d]",
    "\n".join(f"o_{n}: float32[B, d]" for n in ["relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "exp",
                                                 "log", "abs", "sqrt", "rsqrt", "pow", "clamp", "max", "min",
                                                 "arith", "floordiv", "mod", "neg"]),
    """
    o_relu = relu(x)
    o_gelu = gelu(x)
    o_gelu_tanh = gelu_tanh(x)
    o_silu = silu(x)
    o_sigmoid = sigmoid(x)
    o_tanh = tanh(x)
    o_exp = exp(x)
    o_log = log(abs(x) + 1)
    o_abs = abs(x)
    o_sqrt = sqrt(abs(x))
    o_rsqrt = rsqrt(abs(x) + 1)
    o_pow = x ** 3 + 2 ** x
    o_clamp = clamp(x, min=-0.5, max=0.25)
    o_max = max(x, y)
    o_min = min(x, y, 0.1)
    o_arith = (x + y) * x - y / (abs(y) + 1)
    o_floordiv = x // 0.5
    o_mod = x % 0.75
    o_neg = -x
    """)


def test_elementwise_ops_match_torch() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    out, _, _ = _run(ELEMENTWISE, x=x, y=y)
    want = {
        "relu": torch.relu(x), "gelu": F.gelu(x), "gelu_tanh": F.gelu(x, approximate="tanh"), "silu": F.silu(x),
        "sigmoid": torch.sigmoid(x), "tanh": torch.tanh(x), "exp": torch.exp(x), "log": torch.log1p(x.abs()),
        "abs": x.abs(), "sqrt": x.abs().sqrt(), "rsqrt": 1 / (x.abs() + 1).sqrt(), "pow": x ** 3 + 2 ** x,
        "clamp": x.clamp(-0.5, 0.25), "max": torch.maximum(x, y), "min": torch.minimum(torch.minimum(x, y),
                                                                                        torch.tensor(0.1)),
        "arith": (x + y) * x - y / (y.abs() + 1), "floordiv": torch.floor(x / 0.5),
        "mod": x - 0.75 * torch.floor(x / 0.75), "neg": -x,   # % takes the divisor's sign, as Python's
    }
    for name, value in want.items():
        torch.testing.assert_close(out[f"o_{name}"], value, msg=name)


REDUCE = _spec_text(
    "reduce", "d: 6", "x: float32[B, T, d]",
    """o_softmax: float32[B, T, d]
    o_sum: float32[B, T]
    o_mean: float32[B, d]
    o_max: float32[B, T]
    o_min: float32[B, d]
    o_cumsum: float32[B, T, d]""",
    """
    o_softmax = softmax(x, over=d)
    o_sum = sum(x, over=d)
    o_mean = mean(x, over=T)
    o_max = max(x, over=d)
    o_min = min(x, over=T)
    o_cumsum = cumsum(x, over=T)
    """)


def test_reductions_and_cumsum_match_torch() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 5, 6)
    out, _, _ = _run(REDUCE, x=x)
    running = torch.stack([x[:, : t + 1].sum(1) for t in range(5)], dim=1)   # cumsum by its definition
    want = {"softmax": torch.softmax(x, -1), "sum": x.sum(-1), "mean": x.mean(1), "max": x.amax(-1),
            "min": x.amin(1), "cumsum": running}
    for name, value in want.items():
        torch.testing.assert_close(out[f"o_{name}"], value, msg=name)


INDEXING = _spec_text(
    "indexing", "d: 6, k: 3", "x: float32[B, d]\nidx: int64[B, J]\nsrc: float32[B, J]",
    """o_sorted: float32[B, d]
    o_order: int64[B, d]
    o_top: float32[B, k]
    o_top_idx: int64[B, k]
    o_gather: float32[B, J]
    o_scatter: float32[B, d]
    o_scatter_add: float32[B, d]
    o_slice: float32[B, U]
    o_take: float32[B]
    o_concat: float32[B, e]
    o_half: float32[B, h]""",
    """
    o_sorted, o_order = sort(x, over=d, descending=true)
    o_top, o_top_idx = topk(x, k, over=d, into=k)
    o_gather = gather(x, idx, over=d)
    o_scatter = scatter(x, idx, src, over=d)
    o_scatter_add = scatter(x, idx, src, over=d, reduce="add")
    o_slice = slice(x, over=d, start=1, stop=6, step=2, into=U)
    o_take = take(x, over=d, index=4)
    o_concat = concat(x, o_top, over=(d, k), into=e)
    a, b = split(x[B, (2 h)], over=2)
    o_half = a - b
    """)


def test_sort_topk_gather_scatter_and_slicing_match_torch() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 6)
    idx = torch.stack([torch.randperm(6)[:4] for _ in range(3)])      # distinct per row: 'set' is deterministic
    src = torch.randn(3, 4)
    out, _, _ = _run(INDEXING, x=x, idx=idx, src=src)
    values, order = torch.sort(x, dim=1, descending=True)
    torch.testing.assert_close(out["o_sorted"], values)
    torch.testing.assert_close(out["o_order"], order)
    torch.testing.assert_close(out["o_top"], values[:, :3])
    torch.testing.assert_close(out["o_top_idx"], order[:, :3])
    gathered = torch.stack([x[b, idx[b]] for b in range(3)])
    torch.testing.assert_close(out["o_gather"], gathered)
    scattered, added = x.clone(), x.clone()
    for b in range(3):
        for j in range(4):
            scattered[b, idx[b, j]] = src[b, j]
            added[b, idx[b, j]] += src[b, j]
    torch.testing.assert_close(out["o_scatter"], scattered)
    torch.testing.assert_close(out["o_scatter_add"], added)
    torch.testing.assert_close(out["o_slice"], x[:, 1:6:2])
    torch.testing.assert_close(out["o_take"], x[:, 4])
    torch.testing.assert_close(out["o_concat"], torch.cat([x, values[:, :3]], dim=1))
    torch.testing.assert_close(out["o_half"], x[:, :3] - x[:, 3:])


SPATIAL = _spec_text(
    "spatial", "C: 3, O: 4, L: 10, H: 8, W: 6, L2: 5, H2: 4, W2: 3",
    "x1: float32[B, C, L]\nx2: float32[B, C, H, W]",
    """o_conv1: float32[B, O, L2]
    o_conv2: float32[B, O, H, W2]
    o_maxpool: float32[B, C, H2, W2]
    o_avgpool: float32[B, C, L2]
    o_bn: float32[B, C, H, W]
    o_drop: float32[B, C, L]
    o_ln: float32[B, C, L]
    o_rms: float32[B, C, L]""",
    """
    o_conv1 = conv(x1, O, 3, stride=2, padding=1, channel=C, over=L, into=L2, name=c1)
    o_conv2 = conv(x2, O, (3, 2), stride=(1, 2), padding=(1, 0), channel=C, over=(H, W), into=(H, W2),
                   bias=false, name=c2)
    o_maxpool = maxpool(x2, 2, over=(H, W), into=(H2, W2))
    o_avgpool = avgpool(x1, 2, over=L, into=L2)
    o_bn = batchnorm(x2, over=C, name=bn)
    o_drop = dropout(x1, 0.5)
    o_ln = layernorm(x1, over=C, eps=1e-5, name=ln)
    o_rms = rmsnorm(x1, over=C, eps=1e-6, name=rms)
    """)


@pytest.mark.parametrize("train", [False, True])
def test_conv_pooling_and_normalisation_match_torch(train: bool) -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x1, x2 = torch.randn(2, 3, 10), torch.randn(2, 3, 8, 6)
    out, p, result = _run(SPATIAL, train=train, x1=x1, x2=x2)
    assert result.params == (4 * 3 * 3 + 4) + (4 * 3 * 3 * 2) + 2 * 3 + 2 * 3 + 3   # conv1, conv2, bn, ln, rms
    torch.testing.assert_close(out["o_conv1"], F.conv1d(x1, p["c1.weight"], p["c1.bias"], stride=2, padding=1))
    torch.testing.assert_close(out["o_conv2"], F.conv2d(x2, p["c2.weight"], None, stride=(1, 2), padding=(1, 0)))
    torch.testing.assert_close(out["o_maxpool"], F.max_pool2d(x2, 2))
    torch.testing.assert_close(out["o_avgpool"], F.avg_pool1d(x1, 2))
    if train:   # batch statistics over every axis but C (biased variance)
        mean = x2.mean(dim=(0, 2, 3), keepdim=True)
        var = x2.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    else:       # the initial running statistics: mean 0, variance 1
        mean, var = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    bn = (x2 - mean) / torch.sqrt(var + 1e-5) * p["bn.weight"].view(1, 3, 1, 1) + p["bn.bias"].view(1, 3, 1, 1)
    torch.testing.assert_close(out["o_bn"], bn)
    if train:   # each element is dropped or scaled by 1/(1-p)
        kept = out["o_drop"] != 0
        torch.testing.assert_close(out["o_drop"][kept], 2 * x1[kept])
        assert 0 < kept.sum() < x1.numel()
    else:
        torch.testing.assert_close(out["o_drop"], x1)
    xt = x1.transpose(1, 2)   # the normalised axis C last
    ln = F.layer_norm(xt, (3,), p["ln.weight"], p["ln.bias"], eps=1e-5).transpose(1, 2)
    torch.testing.assert_close(out["o_ln"], ln)
    rms = (xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + 1e-6) * p["rms.weight"]).transpose(1, 2)
    torch.testing.assert_close(out["o_rms"], rms)


ATTENTION = _spec_text(
    "attention_variants", "h: 4, hd: 8",
    """q: float32[B, T, h, hd]
    k: float32[B, S, h, hd]
    v: float32[B, S, h, hd]
    k1: float32[B, S, hd]
    v1: float32[B, S, hd]
    keep: bool[B, S]
    bias: float32[h, T, S]""",
    "\n".join(f"o_{n}: float32[B, T, h, hd]" for n in ["full", "causal", "masked", "bias", "mqa", "scale", "matmul"]),
    """
    o_full = attention(q, k, v, key=S, dim=hd)
    o_causal = attention(q, k, v, key=S, dim=hd, query=T, causal=true)
    o_masked = attention(q, k, v, key=S, dim=hd, mask=keep)
    o_bias = attention(q, k, v, key=S, dim=hd, bias=bias)
    o_mqa = attention(q, k1, v1, key=S, dim=hd)
    o_scale = attention(q, k, v, key=S, dim=hd, scale=0.1)
    s = matmul(q, k, over=hd) / sqrt(hd)
    o_matmul = softmax(s, over=S) @ v
    """)


def test_attention_variants_match_sdpa() -> None:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    B, T, h, hd = 2, 5, 4, 8
    q, k, v = torch.randn(B, T, h, hd), torch.randn(B, T, h, hd), torch.randn(B, T, h, hd)
    k1, v1 = torch.randn(B, T, hd), torch.randn(B, T, hd)
    keep = torch.ones(B, T, dtype=torch.bool)
    keep[1, 3:] = False
    bias = torch.randn(h, T, T)
    out, _, result = _run(ATTENTION, q=q, k=k, v=v, k1=k1, v1=v1, keep=keep, bias=bias)
    assert result.params == 0

    def sdpa(key: Any, value: Any, **kw: Any) -> Any:   # torch wants [B, h, T, hd]
        return F.scaled_dot_product_attention(q.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                              **kw).transpose(1, 2)

    torch.testing.assert_close(out["o_full"], sdpa(k, v))
    torch.testing.assert_close(out["o_causal"], sdpa(k, v, is_causal=True))
    torch.testing.assert_close(out["o_masked"], sdpa(k, v, attn_mask=keep[:, None, None, :]))
    torch.testing.assert_close(out["o_bias"], sdpa(k, v, attn_mask=bias[None]))
    one_head = (k1[:, :, None].expand(B, T, h, hd), v1[:, :, None].expand(B, T, h, hd))   # MQA: one shared head
    torch.testing.assert_close(out["o_mqa"], sdpa(*one_head))
    torch.testing.assert_close(out["o_scale"], sdpa(k, v, scale=0.1))
    torch.testing.assert_close(out["o_matmul"], sdpa(k, v))


POSITIONS = _spec_text(
    "positions", "P: 8, d: 6, half: d / 2", "x: float32[B, T, d]",
    """o_table: float32[P, d]
    o_half: float32[B, T, d]
    o_interleaved: float32[B, T, d]
    o_learned: float32[T, d]""",
    """
    o_table = sinusoidal(P, d, base=100)
    o_half = rotary(x, pos=T, dim=d)
    o_interleaved = rotary(x, pos=T, dim=d, base=100, style="interleaved")
    o_learned = embedding(arange(T), P, d, name=wpe)
    """)


def test_positional_encodings_match_their_formulas() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 5, 6)
    out, p, result = _run(POSITIONS, x=x)
    assert result.params == 8 * 6
    pos = torch.arange(8.0)[:, None]
    i = torch.arange(3.0)[None, :]                      # frequency index: pairs (2i, 2i+1)
    table = torch.empty(8, 6)
    table[:, 0::2] = torch.sin(pos / 100 ** (2 * i / 6))
    table[:, 1::2] = torch.cos(pos / 100 ** (2 * i / 6))
    torch.testing.assert_close(out["o_table"], table)

    t = torch.arange(5.0)[:, None]

    def rotate(a: Any, b: Any, base: float) -> tuple[Any, Any]:  # the pair (a, b) turned by t·base^(-2i/d)
        angle = t * base ** (-2 * i / 6)
        return a * torch.cos(angle) - b * torch.sin(angle), b * torch.cos(angle) + a * torch.sin(angle)

    a, b = rotate(x[..., :3], x[..., 3:], 10000.0)        # GPT-NeoX/Llama: first half paired with second half
    torch.testing.assert_close(out["o_half"], torch.cat([a, b], dim=-1))
    a, b = rotate(x[..., 0::2], x[..., 1::2], 100.0)      # GPT-J: neighbours paired
    torch.testing.assert_close(out["o_interleaved"], torch.stack([a, b], dim=-1).flatten(-2))
    torch.testing.assert_close(out["o_learned"], p["wpe.weight"][:5])


PREFIX = """\
nnspec: 1
name: prefix
dims: {d: 8, R: 3}
inputs:
  x: float32[B, T, d]
  mem: float32[B, M, d]
outputs:
  y: float32[B, L, d]
body: |
  reg = param(R, d, name=registers)
  y = concat(reg, mem, x, over=(R, M, T), into=L)
"""


def test_concat_joins_sequences_of_different_lengths() -> None:
    """Learned register tokens, a memory of M steps and the input's T steps in one sequence (axes R, M, T have
    different sizes, so different names): the interpreter and the generated module agree with torch.cat."""
    torch = pytest.importorskip("torch")
    x, mem = torch.randn(2, 5, 8), torch.randn(2, 4, 8)
    out, p, result = _run(PREFIX, x=x, mem=mem)
    assert result.params == 3 * 8
    want = torch.cat([p["registers"][None].expand(2, 3, 8), mem, x], dim=1)
    torch.testing.assert_close(out["y"], want)
    model = nnspec.build(PREFIX)
    model.load_state_dict({"registers": p["registers"]})
    torch.testing.assert_close(model(x=x, mem=mem), want)


@pytest.mark.parametrize(("over", "code", "col"), [
    ("(R, M)", "E019", 32),        # two axes for three tensors
    ("(R, M, S)", "E017", 39),     # x has no axis S
    ("(R, d, T)", "E017", 7),      # mem joined along its width: its axes no longer line up (said at the call)
])
def test_concat_join_axes_are_checked(over: str, code: str, col: int) -> None:
    text = PREFIX.replace("over=(R, M, T)", f"over={over}")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text)
    assert (info.value.code, info.value.span.line, info.value.span.col) == (code, 11, col), str(info.value)
