"""`nnspec compile` with `--passes`, `--explain` and the transform flags, and the same through `compile_spec` and
`nnspec.build`: exactly the named passes run, every rewrite, fusion group and refusal is printed with its
reason, transforms apply before the passes, bad flags are usage errors that write nothing, and the keyword
API stays backward compatible. Also: at -O2 GPT-2's attention is fused for training too (dropout inside
`F.scaled_dot_product_attention`), drawing the random numbers the -O0 module draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.cli import app  # noqa: E402
from nnspec.generated import compile_spec, load_source  # noqa: E402

ROOT = Path(__file__).parent.parent
GPT2 = ROOT / "examples" / "gpt2.yaml"
SMALL = dict(vocab_size=97, n_positions=32, n_embd=64, n_layer=2, n_head=4)
SETS = [f"--set={k}={v}" for k, v in SMALL.items()]

# an attention whose masked scores are filled with 0.0 (not -inf: refused), then a linear + gelu epilogue
NEAR_MISS = """nnspec: 1
name: near_miss
dims: {d: 16, h: 2, hd: d / h}
inputs:
  x: float32[B, T, d]
  keep: bool[B, T]
outputs:
  y: float32[B, T, d]
body: |
  q = linear(x, d, name=q)[B, T, (h hd)]
  k = linear(x, d, name=k)[B, S, (h hd)]
  v = linear(x, d, name=v)[B, S, (h hd)]
  s[B, h, T, S] = q * k / sqrt(hd)
  p = softmax(where(keep[B, S], s, 0.0), over=S)
  o[B, T, (h hd)] = p * v
  y = linear(gelu(linear(o, d, name=up)), d, name=down)
"""


def compile_cmd(*args: str) -> Any:
    return CliRunner().invoke(app, ["compile", *map(str, args)])


def module_from(path: Path, name: str) -> Any:
    source = path.read_text(encoding="utf-8")
    module = load_source(source, name)
    return next(getattr(module, n) for n in dir(module) if n.lower() == name.replace("_", ""))()


def test_passes_runs_exactly_those_passes(tmp_path: Path) -> None:
    run = compile_cmd(GPT2, "-o", tmp_path, "--passes", "attention,dce", "--explain", *SETS)
    assert run.exit_code == 0, run.output
    assert "passes (--passes): attention, dce" in run.output
    assert "rewrite [attention]" in run.output and "rewrite [dce]" in run.output
    assert "[fuse-" not in run.output and "[cse]" not in run.output        # no other pass ran
    source = (tmp_path / "gpt2.py").read_text(encoding="utf-8")
    assert source.splitlines()[0].endswith("(-O2, passes attention,dce) from the spec gpt2.")
    assert "F.scaled_dot_product_attention(" in source and "causal_mask" not in source
    o0 = nnspec.build(GPT2, opt=0, **SMALL).eval()
    fused = module_from(tmp_path / "gpt2.py", "gpt2").eval()
    assert list(fused.state_dict()) == list(o0.state_dict())
    fused.load_state_dict(o0.state_dict())
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), o0(ids))


def test_explicit_level_decides_emission_with_passes(tmp_path: Path) -> None:
    run = compile_cmd(GPT2, "-o", tmp_path, "-O0", "--passes", "attention", *SETS)
    assert run.exit_code == 0, run.output
    source = (tmp_path / "gpt2.py").read_text(encoding="utf-8")
    assert "(-O0, passes attention)" in source.splitlines()[0]
    assert "scaled_dot_product_attention" not in source      # the fused op spelled out, as -O0 emits it
    assert "scores = " in source and "F.softmax(" in source


def test_explain_prints_rewrites_groups_and_refusals(tmp_path: Path) -> None:
    spec = tmp_path / "near_miss.yaml"
    spec.write_text(NEAR_MISS, encoding="utf-8")
    run = compile_cmd(spec, "-o", tmp_path / "out", "-O2", "--explain")
    assert run.exit_code == 0, run.output
    lines = run.output.splitlines()
    assert lines[0] == f"near_miss ({spec}):"
    assert lines[1].startswith("passes (-O2): canonicalize, fold-constants, cse, dce, moe, fuse-linear, attention")
    refused = [x for x in lines if "refused [attention]" in x]
    assert refused and "fills masked scores with 0.0, not -inf" in refused[0], run.output
    assert refused[0].strip().startswith(f"{spec}:14:7: ")                   # at the softmax in the spec
    assert any("rewrite [fuse-linear]" in x and "q, k, v" in x for x in lines), run.output
    assert any("group [fuse-epilogue]" in x and "linear up with gelu" in x for x in lines), run.output
    assert lines[-1] == f"wrote {tmp_path / 'out' / 'near_miss.py'}"
    assert "transforms" not in run.output                                    # no transform flag, no block


def test_explain_without_passes_says_so(tmp_path: Path) -> None:
    run = compile_cmd(GPT2, "-o", tmp_path, "--explain", *SETS)
    assert run.exit_code == 0, run.output
    assert run.output.splitlines()[:2] == [f"gpt2 ({GPT2}):", "passes (-O0): none"]


def test_transform_flags_apply_before_the_passes(tmp_path: Path) -> None:
    run = compile_cmd(GPT2, "--dtype", "bf16", "--lora", "*.c_attn:4", "-O2", "-o", tmp_path, "--explain", *SETS)
    assert run.exit_code == 0, run.output
    out = run.output
    assert "transforms:\n  lora *.c_attn:4" in out and "\n  dtype bfloat16" in out, out
    assert out.index("transforms:") < out.index("passes (-O2)") < out.index("rewrite [attention]")
    module = module_from(tmp_path / "gpt2.py", "gpt2")
    params = dict(module.named_parameters())
    assert params["h.0.attn.c_attn.weight"].dtype == torch.bfloat16
    # rank-4 adapters on each layer's c_attn (64 -> 192): A 4 x 64 and B 192 x 4, two layers
    full = sum(p.numel() for p in nnspec.build(GPT2, **SMALL).parameters())
    assert sum(p.numel() for p in params.values()) == full + 2 * (4 * 64 + 192 * 4)
    assert "F.scaled_dot_product_attention(" in (tmp_path / "gpt2.py").read_text(encoding="utf-8")
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad():
        assert module.eval()(ids).dtype == torch.float32                     # logits stay float32


def test_transforms_code_generation_cannot_express_are_refused(tmp_path: Path) -> None:
    """A repeat sharing weights in groups (--share) would be generated as the untransformed model: refused,
    nothing written."""
    run = compile_cmd(GPT2, "-o", tmp_path / "out", "--share", "h:1", *SETS)
    assert run.exit_code == 2 and "code generation does not support a repeat with" in run.output, run.output
    assert "shared in groups" in run.output and "repeat 'h'" in run.output
    assert not (tmp_path / "out").exists()


def test_a_dropped_sublayer_is_generated_as_a_per_iteration_class(tmp_path: Path) -> None:
    """--drop h.1.attn: iteration 1 runs a template without attention; the generated module lists one instance of
    each iteration's class and computes what the reference interpreter computes on the dropped model."""
    from nnspec.backends.torch import Interpreter
    from nnspec.compiler.transforms import apply

    run = compile_cmd(GPT2, "-o", tmp_path / "out", "--drop", "h.1.attn", *SETS)
    assert run.exit_code == 0, run.output
    source = (tmp_path / "out" / "gpt2.py").read_text()
    assert "nn.ModuleList([Layer(), LayerDropAttn()])" in source, source
    module = load_source(source, "gpt2_dropped").Gpt2().eval()
    dropped, _ = apply(nnspec.check(GPT2, **SMALL).model, drop=["h.1.attn"])
    reference = Interpreter(dropped).eval()
    assert "h.1.attn.c_attn.weight" not in module.state_dict() and "h.0.attn.c_attn.weight" in module.state_dict()
    reference.load_state_dict({"root." + k: v for k, v in module.state_dict().items()})
    ids = torch.randint(0, SMALL["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(module(ids), reference(input_ids=ids)["logits"])


@pytest.mark.parametrize(("flags", "message"), [
    (["--passes", "attention,bogus"], "unknown pass 'bogus'; passes are canonicalize"),
    (["-O3"], "-O takes 0, 1 or 2, got 3"),
    (["--drop", "h.7.attn"], "--drop h.7.attn: no residual sub-layer at that path"),
    (["--dtype", "fp8"], "fp8"),
])
def test_bad_flags_are_usage_errors_that_write_nothing(tmp_path: Path, flags: list[str], message: str) -> None:
    out = tmp_path / "out"
    run = compile_cmd(GPT2, "-o", out, *flags, *SETS)
    assert run.exit_code == 2 and message in run.output, run.output
    assert not out.exists()


def test_keyword_api_is_backward_compatible_and_takes_the_new_arguments() -> None:
    before = compile_spec(GPT2, opt=2, **SMALL)
    assert compile_spec(GPT2, opt=2, passes=None, explain=None, transforms=None, **SMALL).source == before.source
    assert before.source.splitlines()[0].endswith("(-O2) from the spec gpt2.")
    assert compile_spec(GPT2, **SMALL).source.splitlines()[0].endswith("(-O0) from the spec gpt2.")
    seen: list[str] = []
    c = compile_spec(GPT2, passes=["attention"], explain=seen, transforms={"dtype": "bf16"}, **SMALL)
    assert c.transforms == [seen[0].removeprefix("transform: ")] and seen[0].startswith("transform: dtype bfloat16")
    assert seen[1:] == c.explain and any("rewrite [attention]" in x for x in c.explain)
    printed: list[str] = []
    module = nnspec.build(GPT2, opt=2, passes="attention,dce", explain=printed.append,
                          transforms={"lora": ["*.c_fc:2"]}, **SMALL)
    assert "h.0.mlp.c_fc.lora_A" in module.state_dict() and printed


def test_o2_fuses_training_attention_and_draws_the_same_dropout_as_o0() -> None:
    source = compile_spec(GPT2, opt=2, **SMALL).source
    assert "dropout_p=0.1 if self.training else 0.0" in source and "attn_mask=allowed" in source
    torch.manual_seed(0)
    o0 = nnspec.build(GPT2, opt=0, **SMALL)
    o2 = nnspec.build(GPT2, opt=2, **SMALL)
    o2.load_state_dict(o0.state_dict())
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    for mode in ("train", "eval"):
        getattr(o0, mode)()
        getattr(o2, mode)()
        torch.manual_seed(5)
        want = o0(ids)
        torch.manual_seed(5)
        torch.testing.assert_close(o2(ids), want, msg=lambda m, mode=mode: f"{mode}: {m}")
