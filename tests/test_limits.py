"""Structural limits, asserted as limits (issue 8): each is refused at a bound, with E005 or E023 and a location,
before anything is expanded or allocated; just inside the bound is accepted. No test here measures time: where
"before expanding" matters, the expansion is made impossible (a function that must not run raises) or counted.

Limits already covered elsewhere are not repeated: the alias bomb, YAML nesting depth, file size of the top-level
spec and long operator chains are in tests/test_loading.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import nnspec
from nnspec.compiler import elaborate
from nnspec.compiler.analysis import estimate_parameter_bytes, parameter_bytes_by_dtype, parse_size
from nnspec.compiler.elaborate import MAX_PARAM_TENSORS, MAX_REPEAT, nodes
from nnspec.compiler.sizes import MAX_SIZE
from nnspec.spec.parser import MAX_EXPR_CHARS, MAX_EXPR_DEPTH
from nnspec.spec.yaml_loader import MAX_BYTES, MAX_NODES

HEAD = """nnspec: 1
name: m
dims:
  d: 8
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
"""
#  1 nnspec: 1   2 name: m   3 dims:   4   d: 8   5 inputs:   6   x: ...   7 outputs:   8   y: ...   9 body: |


def spec(body: str, head: str = HEAD) -> str:
    return head + "body: |\n" + "".join(f"  {line}\n" for line in body.splitlines())


def error(text: str | Path, **overrides: object) -> nnspec.SpecError:
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text, **overrides)
    return info.value


def where(err: nnspec.SpecError) -> tuple[str, int, int]:
    assert err.span is not None, err
    return err.code, err.span.line, err.span.col


# ---- dim magnitude (E023) ------------------------------------------------------------------------------

def test_the_size_limit_is_2_to_the_32() -> None:
    assert MAX_SIZE == 2 ** 32 < 10 ** 12


@pytest.mark.parametrize("value", ["1000000000000", "10**12", "2**32 + 1", "2**40"])
def test_a_dim_of_ten_to_the_twelve_is_refused_at_the_dim(value: str) -> None:
    err = error(spec("y = relu(x)", HEAD.replace("d: 8", f"d: 8\n  wide: {value}")))
    #   5   wide: VALUE -> column 9
    assert where(err) == ("E023", 5, 9)
    assert "2^32" in err.message


def test_a_dim_at_the_limit_is_accepted_and_never_allocated() -> None:
    # an embedding table 2^32 x 8 checks (no allocation); it is the memory limit that refuses to build it
    text = HEAD.replace("d: 8", f"d: 8\n  wide: {MAX_SIZE}").replace("x: float32[B, d]", "x: int64[B]")
    result = nnspec.check(spec("y = embedding(x, wide, d)", text))
    assert result.params == MAX_SIZE * 8
    assert estimate_parameter_bytes(result.model) == MAX_SIZE * 8 * 4


@pytest.mark.parametrize("size", ["10**12", "2**32 + 1", "-1", "0"])
def test_a_size_argument_out_of_range_is_refused_where_it_is_written(size: str) -> None:
    err = error(spec(f"y = linear(linear(x, {size}), d)"))
    #  10   y = linear(linear(x, SIZE), d): the size at column 24
    assert where(err) == ("E023", 10, 24)


@pytest.mark.parametrize("axis", ["1000000000000", "4294967297"])
def test_an_integer_axis_out_of_range_in_a_type(axis: str) -> None:
    err = error(spec("y = relu(x)", HEAD.replace("x: float32[B, d]", f"x: float32[B, {axis}]")))
    #   6   x: float32[B, AXIS]: the axis at column 17
    assert where(err) == ("E023", 6, 17)


def test_binding_a_free_dim_beyond_the_limit_is_a_usage_error() -> None:
    with pytest.raises(nnspec.UsageError):
        nnspec.check(spec("y = relu(x)"), B=10 ** 12)


@pytest.mark.parametrize("value", ["10**30", "2**63", "-(2**63)"])
def test_static_arithmetic_beyond_2_to_the_62(value: str) -> None:
    err = error(spec(f"y = x * ({value})"))
    assert err.code == "E023" and err.span is not None and err.span.line == 10


@pytest.mark.parametrize("literal", ["99999999999999999999", "-99999999999999999999"])
def test_an_integer_literal_meeting_a_tensor_beyond_2_to_the_62(literal: str) -> None:
    # a literal is no arithmetic result, so it was not range-checked: as an int64 constant it overflowed in torch
    text = HEAD.replace("float32[B, d]", "int64[B, d]")
    err = error(spec(f"y = x + {literal}", text))
    #  10   y = x + LITERAL: the digits at column 11, or 12 after a minus sign
    assert where(err) == ("E023", 10, 11 if literal[0] != "-" else 12)


# ---- the interpreter refuses before allocating ---------------------------------------------------------

torch = pytest.importorskip("torch")


def _no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.backends.torch import interpreter

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a parameter was allocated")
    monkeypatch.setattr(interpreter, "_init", refuse)


def test_interpreter_refuses_a_ten_to_the_twelve_parameter_model_without_allocating(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.backends.torch.interpreter import Interpreter

    # 10^6 x 10^6 = 10^12 parameters: every dim in range, the tensor far beyond any memory
    text = HEAD.replace("d: 8", "d: 8\n  n: 10**6\n  m: 10**6")
    model = nnspec.check(spec("y = x + sum(sum(param(n, m), over=n), over=m)", text)).model
    assert estimate_parameter_bytes(model) == 4 * 10 ** 12
    _no_allocation(monkeypatch)
    with pytest.raises(nnspec.ResourceError) as info:
        Interpreter(model)  # the default limit: half of physical memory
    assert info.value.needed == 4 * 10 ** 12
    assert "3.6 TiB" in str(info.value) and "4,000,000,000,000 bytes" in str(info.value)
    with pytest.raises(nnspec.ResourceError):
        Interpreter(model, max_memory=4 * 10 ** 12 - 1)


def test_interpreter_builds_at_exactly_the_limit() -> None:
    from nnspec.backends.torch.interpreter import Interpreter

    model = nnspec.check(spec("y = linear(x, d)")).model
    needed = estimate_parameter_bytes(model)
    assert needed == (8 * 8 + 8) * 4
    Interpreter(model, max_memory=needed)
    with pytest.raises(nnspec.ResourceError):
        Interpreter(model, max_memory=needed - 1)


def test_meta_device_is_not_limited() -> None:
    from nnspec.backends.torch.interpreter import Interpreter

    text = HEAD.replace("d: 8", "d: 8\n  n: 10**6\n  m: 10**6")
    model = nnspec.check(spec("y = x + sum(sum(param(n, m), over=n), over=m)", text)).model
    interp = Interpreter(model, device="meta", max_memory=1)
    assert sum(p.numel() for p in interp.parameters()) == 10 ** 12


def test_default_limit_is_half_of_physical_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.backends.torch.interpreter import Interpreter
    from nnspec.compiler import analysis

    monkeypatch.setattr(analysis, "physical_memory", lambda: 1000)
    model = nnspec.check(spec("y = linear(x, d)")).model  # 288 bytes
    Interpreter(model)
    monkeypatch.setattr(analysis, "physical_memory", lambda: 575)
    with pytest.raises(nnspec.ResourceError, match="limit of 287 B"):
        Interpreter(model)


def test_estimate_counts_dtypes_buffers_repeats_and_ties() -> None:
    text = """nnspec: 1
name: m
dims:
  d: 4
  v: 10
inputs:
  ids: int64[B, T]
outputs:
  y: float32[B, T, v]
blocks:
  layer(x): |
    return x + linear(batchnorm(x, over=d, name=bn), d, name=fc)
body: |
  h = embedding(ids, v, d, name=wte)
  h = repeat(3, layer, h, name=h)
  y[B, T, v] = h * wte.weight
"""
    model = nnspec.check(text).model
    # wte 10x4 (tied head: counted once); per layer: bn weight, bias, running mean, var (4 float32 each) and
    # num_batches_tracked (one int64), fc 4x4 + 4
    per_layer_f32 = (4 * 4 + 16 + 4) * 4
    assert parameter_bytes_by_dtype(model) == {"float32": 40 * 4 + 3 * per_layer_f32, "int64": 3 * 8}
    interp = __import__("nnspec.backends.torch.interpreter", fromlist=["Interpreter"]).Interpreter(model)
    allocated = sum(t.numel() * t.element_size() for t in [*interp.parameters(), *interp.buffers()])
    assert allocated == estimate_parameter_bytes(model)


@pytest.mark.parametrize("text, value", [("4GiB", 4 * 2 ** 30), ("512MiB", 512 * 2 ** 20), ("1e9", 10 ** 9),
                                         ("2GB", 2 * 10 ** 9), ("4096", 4096), ("1.5KiB", 1536),
                                         ("3 tib", 3 * 2 ** 40)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "-1", "4 GiB x", "4XB", "GiB", "1e400", "nan", "inf", "0x10"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


# ---- repeat count ---------------------------------------------------------------------------------------

def repeat_spec(count: str) -> str:
    return HEAD + f"blocks:\n  f(x): |\n    return linear(x, d)\nbody: |\n  y = repeat({count}, f, x)\n"


def test_repeat_at_the_limit_is_checked_once_not_unrolled() -> None:
    result = nnspec.check(repeat_spec(str(MAX_REPEAT)))
    assert result.params == MAX_REPEAT * 72
    assert sum(len(list(g)) for g in (result.model.graph, *result.model.templates.values())) < 10


@pytest.mark.parametrize("count", [str(MAX_REPEAT + 1), "10**12", "-1", "2.5"])
def test_repeat_beyond_the_limit(count: str) -> None:
    err = error(repeat_spec(count))
    #  13   y = repeat(COUNT, f, x): the count at column 14
    assert where(err) == ("E023", 13, 14)


def test_nested_repeats_are_limited_by_unrolled_parameter_tensors() -> None:
    text = HEAD + f"""blocks:
  f(x): |
    return linear(x, d)
  g(x): |
    return repeat({MAX_REPEAT}, f, x)
body: |
  y = repeat({MAX_REPEAT}, g, x)
"""
    err = error(text)
    assert where(err) == ("E005", 15, 7)
    assert f"{MAX_PARAM_TENSORS:,}" in err.message


# ---- graph node count (MAX_NODES in elaborate/limits.py) ---------------------------------------------------

def test_graph_node_limit_is_counted_across_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2^k distinct bindings of nested blocks: the graph grows exponentially in the spec's length, and stops at
    # the node limit (lowered here, so the test builds 200 nodes rather than 200,000)
    monkeypatch.setattr(nodes, "MAX_NODES", 200)
    blocks = "".join(f"  b{i}(x, n): |\n    return b{i + 1}(x, 2 * n, name=p) + b{i + 1}(x, 2 * n + 1, name=q)\n"
                     for i in range(20))
    text = HEAD + "blocks:\n" + blocks + "  b20(x, n): |\n    return x * n\nbody: |\n  y = b0(x, 1)\n"
    err = error(text)
    assert err.code == "E005" and "200 graph nodes" in err.message
    assert err.span is not None and err.span.source.text == text


def test_graph_node_limit_in_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodes, "MAX_NODES", 10)
    # each `x = x + 1.0` adds a constant and an add; the input is the first node
    err = error(spec("h = x\n" + "h = h + 1.0\n" * 10 + "y = h"))
    #  10 h = x, 11.. h = h + 1.0: nodes 1 (input), 2-3 (line 11), ..., 10-11 (line 15): the 11th node
    assert where(err) == ("E005", 15, 7)


def test_the_real_node_limit() -> None:
    assert elaborate.MAX_NODES == 200_000


# ---- expression length and depth -------------------------------------------------------------------------

def test_expression_text_over_the_limit() -> None:
    body = "y = relu(x)" + " " * (MAX_EXPR_CHARS - len("y = relu(x)") + 1)
    err = error(HEAD + f'body: "{body}"\n')
    assert where(err) == ("E005", 9, 8)
    assert f"{MAX_EXPR_CHARS:,}" in err.message


def test_expression_text_at_the_limit() -> None:
    body = "y = relu(x)" + " " * (MAX_EXPR_CHARS - len("y = relu(x)"))
    assert nnspec.check(HEAD + f'body: "{body}"\n').params == 0


def test_brackets_at_the_depth_limit() -> None:
    n = MAX_EXPR_DEPTH
    assert nnspec.check(spec("y = " + "(" * n + "x" + ")" * n)).params == 0


def test_brackets_beyond_the_depth_limit() -> None:
    n = MAX_EXPR_DEPTH + 1
    err = error(spec("y = " + "(" * n + "x" + ")" * n))
    #  10   y = (((...: the first bracket is at column 7, the 201st at 7 + 200
    assert where(err) == ("E005", 10, 7 + MAX_EXPR_DEPTH)


def test_deep_dim_expression() -> None:
    n = MAX_EXPR_DEPTH + 1
    err = error(spec("y = relu(x)", HEAD.replace("d: 8", "d: " + "(" * n + "8" + ")" * n)))
    assert err.code == "E005" and err.span is not None and err.span.line == 4


def test_deep_static_arithmetic_within_the_limit() -> None:
    # 150 nested unary minus signs: parsed within the depth limit, evaluated without recursion trouble
    assert nnspec.check(spec("y = x * " + "-" * 150 + "1")).params == 0


# ---- file sizes of included files, and unbounded files ---------------------------------------------------

def test_included_file_over_the_limit_is_refused_before_reading(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:       # sparse: 4 GiB on the file system, nothing on disk
        f.truncate(4 << 30)
    top = tmp_path / "top.yaml"
    top.write_text(HEAD.replace("dims:", "include: [big.yaml]\ndims:") + "body: |\n  y = relu(x)\n")
    read = Path.read_bytes

    def bounded(self: Path) -> bytes:
        assert self.name != "big.yaml", "the whole included file was read"
        return read(self)
    monkeypatch.setattr(Path, "read_bytes", bounded)
    err = error(top)
    assert where(err) == ("E005", 3, 11)
    assert f"{MAX_BYTES:,}" in err.message and "big.yaml" in err.message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_spec_file_is_refused_at_the_limit() -> None:
    # /dev/zero has size 0 to stat(): the size check passed and read_bytes() never returned
    err = error(Path("/dev/zero"))
    assert err.code in ("E005", "E006")
    assert f"{MAX_BYTES:,}" in err.message


def test_alias_bomb_in_an_included_file(tmp_path: Path) -> None:
    lib = tmp_path / "lib.yaml"
    lines = ["nnspec: 1", "a: &a [" + ", ".join(["x"] * 10) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    lib.write_text("\n".join(lines) + "\n")
    top = tmp_path / "top.yaml"
    top.write_text(HEAD.replace("dims:", "include: [lib.yaml]\ndims:") + "body: |\n  y = relu(x)\n")
    err = error(top)
    assert err.code == "E005" and f"{MAX_NODES:,}" in err.message
    assert err.span is not None and Path(err.span.source.name).name == "lib.yaml"


# ---- `nnspec check --max-memory` -------------------------------------------------------------------------

def cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from nnspec.cli import app
    return CliRunner().invoke(app, list(args))


GPT2 = "examples/gpt2.yaml"  # 497,759,232 bytes of float32 parameters


def test_check_max_memory_shows_the_estimate() -> None:
    result = cli("check", GPT2, "--max-memory", "1GiB")
    assert result.exit_code == 0, result.output
    assert "memory   474.7 MiB for parameters and buffers (limit 1.0 GiB)" in result.stdout


def test_check_max_memory_exceeded_is_exit_1_with_the_estimate() -> None:
    result = cli("check", GPT2, "--max-memory", "400MiB")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{GPT2}: error[R001]: gpt2: parameters and buffers need 474.7 MiB "
                                    "(497,759,232 bytes: float32 474.7 MiB), more than the limit of 400.0 MiB")


def test_check_max_memory_json() -> None:
    import json

    ok = cli("check", GPT2, "--max-memory", "1e9", "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["memory"] == {"bytes": 497_759_232, "limit": 10 ** 9}
    bad = cli("check", GPT2, "--max-memory", "1e8", "--json")
    assert bad.exit_code == 1
    payload = json.loads(bad.stdout)
    assert payload["ok"] is False and "model" not in payload
    (diag,) = payload["diagnostics"]
    assert diag["code"] == "R001" and diag["span"] is None and "474.7 MiB" in diag["message"]


def test_check_without_max_memory_prints_no_memory_line() -> None:
    # checking allocates nothing: without --max-memory there is no limit, and the report is unchanged
    result = cli("check", "examples/llama.yaml")
    assert result.exit_code == 0 and "memory" not in result.stdout


@pytest.mark.parametrize("size", ["lots", "-1", "4XB", ""])
def test_check_max_memory_unreadable_is_a_usage_error(size: str) -> None:
    result = cli("check", GPT2, "--max-memory", size)
    assert result.exit_code == 2
    assert "--max-memory" in result.stderr and result.stdout == ""


# ---- the Hugging Face config is untrusted too --------------------------------------------------------------

def test_config_nested_beyond_the_stack(tmp_path: Path) -> None:
    # json.loads recursed until RecursionError (exit 3)
    config = tmp_path / "config.json"
    config.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check("examples/gpt2.yaml", config=config)
    assert info.value.code == "E005" and info.value.span is not None
    assert info.value.span.source.name == str(config)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_endless_config_is_refused_at_the_limit() -> None:
    from nnspec.compiler.hf_config import MAX_CONFIG_BYTES

    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check("examples/gpt2.yaml", config="/dev/zero")
    assert info.value.code == "E005" and f"{MAX_CONFIG_BYTES:,}" in info.value.message


# ---- blocks calling blocks ---------------------------------------------------------------------------------

def block_chain(n: int) -> str:
    blocks = "".join(f"  b{i}(x): |\n    return b{i + 1}(x)\n" for i in range(n))
    return HEAD + "blocks:\n" + blocks + f"  b{n}(x): |\n    return linear(x, d)\nbody: |\n  y = b0(x)\n"


def test_blocks_nested_beyond_the_limit() -> None:
    # each level of block calls is Python recursion: 200 levels raised RecursionError (exit 3)
    from nnspec.compiler.elaborate import MAX_BLOCK_DEPTH

    err = error(block_chain(1000))
    assert err.code == "E005" and f"{MAX_BLOCK_DEPTH} deep" in err.message
    #  the call that is one too deep: b63's body, `return b64(x)`, line 10 + 2*63 + 1
    assert where(err) == ("E005", 10 + 2 * (MAX_BLOCK_DEPTH - 1) + 1, 12)


def test_blocks_nested_at_the_limit_check_build_and_run() -> None:
    from nnspec.backends.torch.interpreter import Interpreter
    from nnspec.compiler.elaborate import MAX_BLOCK_DEPTH

    result = nnspec.check(block_chain(MAX_BLOCK_DEPTH - 1))
    assert result.params == 72
    interp = Interpreter(result.model)
    path = ".".join(f"b{i}" for i in range(MAX_BLOCK_DEPTH)) + ".linear.weight"
    assert next(iter(interp.named_spec_parameters())) == path
    assert interp(x=torch.zeros(2, 8))["y"].shape == (2, 8)
    try:
        from nnspec.generated import compile_spec
    except ImportError:
        return
    compile(compile_spec(block_chain(MAX_BLOCK_DEPTH - 1)).source, "<generated>", "exec")


def dim_chain(n: int) -> str:
    dims = "".join(f"  d{i}: d{i + 1} + 1\n" for i in range(n)) + f"  d{n}: 1\n"
    return HEAD.replace("dims:\n", "dims:\n" + dims) + "body: |\n  y = relu(x)\n"


def test_dims_defined_by_dims_beyond_the_limit() -> None:
    # each dim's definition evaluated the one it names first, recursively: 500 raised RecursionError (exit 3)
    from nnspec.compiler.elaborate import MAX_DIM_DEPTH

    err = error(dim_chain(500))
    #  dim d{k} is on line 4 + k; the refused one is the first beyond the limit, d100: its value at column 9
    assert where(err) == ("E005", 4 + MAX_DIM_DEPTH, 3 + len(f"d{MAX_DIM_DEPTH}: "))
    assert f"{MAX_DIM_DEPTH} deep" in err.message


def test_dims_defined_by_dims_at_the_limit() -> None:
    from nnspec.compiler.elaborate import MAX_DIM_DEPTH

    model = nnspec.check(dim_chain(MAX_DIM_DEPTH - 1)).model
    assert model.dims.values[model.dims.declared["d0"]] == MAX_DIM_DEPTH


# ---- `nnspec.build` refuses before the generated module allocates --------------------------------------------

def test_build_refuses_a_ten_to_the_twelve_parameter_model_before_constructing_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    generated = pytest.importorskip("nnspec.generated")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the generated module was loaded and constructed")
    monkeypatch.setattr(generated, "load_source", refuse)
    text = HEAD.replace("d: 8", "d: 8\n  n: 10**6\n  m: 10**6")
    with pytest.raises(nnspec.ResourceError) as info:
        nnspec.build(spec("y = x + sum(sum(param(n, m), over=n), over=m)", text))  # default: half of memory
    assert info.value.needed == 4 * 10 ** 12
    assert "3.6 TiB" in str(info.value) and "4,000,000,000,000 bytes" in str(info.value)


def test_build_limit_is_explicit_or_a_fraction_of_physical_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from nnspec.compiler import analysis

    text = spec("y = linear(x, d)")  # (8*8 + 8) * 4 = 288 bytes
    assert sum(p.numel() for p in nnspec.build(text, max_memory=288).parameters()) == 72
    with pytest.raises(nnspec.ResourceError, match="limit of 287 B"):
        nnspec.build(text, max_memory=287)
    monkeypatch.setattr(analysis, "physical_memory", lambda: 575)  # the default: half of it, 287 bytes
    with pytest.raises(nnspec.ResourceError, match=r"288 B \(288 bytes: float32 288 B\)"):
        nnspec.build(text)
    monkeypatch.setattr(analysis, "physical_memory", lambda: 576)
    assert sum(p.numel() for p in nnspec.build(text).parameters()) == 72


def test_build_counts_the_transformed_dtype() -> None:
    # bf16 halves the parameter bytes: the limit applies to what is built, after transforms
    text = spec("y = linear(x, d)")
    model = nnspec.build(text, max_memory=144, transforms={"dtype": "bf16"})
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == 144
    with pytest.raises(nnspec.ResourceError):
        nnspec.build(text, max_memory=143, transforms={"dtype": "bf16"})


# ---- the alias bomb is refused at the node limit, not after expanding ---------------------------------------

def test_billion_laughs_is_refused_after_at_most_the_node_limit_of_values(monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 levels of 10 aliases each: 10^10 values if expanded. PyYAML composes aliases as shared nodes; nnspec's
    # converter counts each use and stops at the limit: the values it builds are counted here, not timed
    from nnspec.spec import yaml_loader

    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    text = "\n".join(lines) + "\n"
    real = yaml_loader._Converter.convert
    calls = 0

    def counted(self: Any, node: Any, depth: int) -> Any:
        nonlocal calls
        calls += 1
        return real(self, node, depth)
    monkeypatch.setattr(yaml_loader._Converter, "convert", counted)
    err = error(text)
    assert err.code == "E005" and f"{MAX_NODES:,}" in err.message
    assert calls == MAX_NODES + 1
