"""Minimal reproductions of what the fuzzer (tests/test_fuzz.py) and the attacks in tests/test_limits.py and
tests/test_security.py found: each was an internal error (or a model that checked and then could not be built or
run) and is now either accepted or a located `SpecError`.

Line and column numbers are counted from the spec text in the test (1-based, columns count characters).
"""

from __future__ import annotations

import importlib.util

import pytest

import nnspec

HEAD = """nnspec: 1
name: m
dims:
  d: 8
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, d]
"""
#  1 nnspec: 1 ... 8   y: float32[B, d]    9 body: |    10   y = ...


def spec(body: str, head: str = HEAD) -> str:
    return head + "body: |\n" + "".join(f"  {line}\n" for line in body.splitlines())


def error(text: str, **overrides: object) -> nnspec.SpecError:
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text, **overrides)
    return info.value


def where(err: nnspec.SpecError) -> tuple[str, int, int]:
    assert err.span is not None, err
    return err.code, err.span.line, err.span.col


# ---- the YAML reader -----------------------------------------------------------------------------------

@pytest.mark.parametrize("char", ["\x0c", "\x1b", "\x7f", "\x01", "\ufffe"])
def test_control_character_is_a_located_error(char: str) -> None:
    # PyYAML's reader refuses these before parsing, from the loader's constructor: was a ReaderError (exit 3)
    err = error(HEAD.replace("name: m", f"name: m{char}") + "body: y = relu(x)\n")
    assert where(err) == ("E006", 2, 8)
    assert f"{ord(char):#06x}" in err.message or f"#x{ord(char):04x}" in err.message


# ---- schema errors: user keys that look like pydantic's union-alternative names ------------------------

def test_unknown_capitalised_top_level_key() -> None:
    # `Name` was dropped from pydantic's error location as if it were a model name: IndexError (exit 3)
    err = error(HEAD.replace("name: m\n", "name: m\nName: m\n") + "body: y = relu(x)\n")
    assert where(err) == ("E003", 3, 1)
    assert "unknown key 'Name'; did you mean 'name'?" in err.message


def test_unknown_key_with_brackets() -> None:
    err = error(HEAD.replace("name: m\n", "name: m\nname[(B T)]: m\n") + "body: y = relu(x)\n")
    assert where(err) == ("E003", 3, 1)
    assert "'name[(B T)]'" in err.message


def test_wrong_type_under_a_capitalised_option_points_at_the_value() -> None:
    # was reported at `options` itself, the capitalised option's name dropped from the location
    # (a list is a valid option value now; a list of lists is not)
    err = error(HEAD + "options:\n  Act: [[relu]]\nbody: y = relu(x)\n")
    #  10   Act: [[relu]]  -> the inner list starts at column 9
    assert where(err) == ("E004", 10, 9)
    assert "'options.Act.0'" in err.message


# ---- static arithmetic that leaves the integers --------------------------------------------------------

def test_a_list_option_where_a_number_is_meant_is_a_located_error() -> None:
    # found by the fuzzer once list options existed: `eps=` given a list option raised TypeError (exit 3)
    text = HEAD + "options:\n  Eps: [1, 2]\nbody: y = layernorm(x, eps=Eps)\n"
    err = error(text)
    #  11 body: y = layernorm(x, eps=Eps): the value `Eps` starts at column 28
    assert where(err) == ("E026", 11, 28)
    assert "eps must be a number, got [1, 2]" in err.message


def test_complex_power_is_a_located_error() -> None:
    # (-8)**0.5 is imaginary: it became a "size" that later failed int() with TypeError (exit 3)
    err = error(spec("y = linear(linear(x, (-8)**0.5 * d), d)"))
    assert where(err) == ("E026", 10, 24)
    assert "not a real number" in err.message


@pytest.mark.parametrize("size", ["sqrt(2) * d", "exp(1)", "log(3)"])
def test_irrational_size_is_a_located_error(size: str) -> None:
    # an irrational size (8*sqrt(2)) has no free dims but is no sympy Number: it passed as a symbolic size
    #  10   y = linear(linear(x, SIZE), d): the size starts at column 24
    err = error(spec(f"y = linear(linear(x, {size}), d)"))
    assert where(err) == ("E014", 10, 24)
    assert "must be a positive integer" in err.message


# ---- indices along free axes become run-time guards ----------------------------------------------------

SEQ = HEAD.replace("x: float32[B, d]", "x: float32[B, T, d]")


def test_take_beyond_a_free_axis_is_a_guard() -> None:
    # take(x, over=T, index=N) checked, then torch raised IndexError at run time for T <= N
    result = nnspec.check(spec("y = take(x, over=T, index=10**12)", SEQ))
    assert [g.text for g in result.model.guards] == ["T > 1000000000000"]


def test_take_negative_index_is_a_located_error() -> None:
    err = error(spec("y = take(x, over=T, index=-1)", SEQ))
    assert where(err) == ("E012", 10, 7)


def test_slice_beyond_a_free_axis_is_a_guard() -> None:
    # torch clips x[:, 0:5] to T entries when T < 5, so the result silently had fewer than the 5 checked
    text = SEQ.replace("y: float32[B, d]", "y: float32[B, K, d]")
    result = nnspec.check(spec("y = slice(x, over=T, start=0, stop=5, into=K)", text))
    assert [g.text for g in result.model.guards] == ["T >= 5"]


def test_take_guard_is_checked_when_run() -> None:
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter, RuntimeShapeError

    interp = Interpreter(nnspec.check(spec("y = take(x, over=T, index=3)", SEQ)).model)
    assert interp(x=torch.zeros(2, 4, 8))["y"].shape == (2, 8)
    with pytest.raises(RuntimeShapeError, match="T > 3"):
        interp(x=torch.zeros(2, 3, 8))


# ---- booleans in static arithmetic ---------------------------------------------------------------------

@pytest.mark.parametrize("expr, col", [("d or 1", 6), ("d and 2", 6), ("not d", 10), ("(d > 1) and 3", 18)])
def test_boolean_operator_on_sizes_is_a_located_error(expr: str, col: int) -> None:
    # sympy.And(8, 1) raised TypeError (exit 3); the error points at the operand that is no condition
    #   5   e: EXPR  -> the expression starts at column 6
    err = error(spec("y = relu(x)", HEAD.replace("d: 8", f"d: 8\n  e: {expr}")))
    assert where(err) == ("E026", 5, col)
    assert "true/false" in err.message


def test_boolean_operator_on_sizes_in_require() -> None:
    err = error(spec("y = relu(x)", HEAD + "require:\n  - d or B\n"))
    assert where(err) == ("E026", 10, 5)


# ---- parameters must have sizes known when the spec is checked -----------------------------------------

@pytest.mark.parametrize("body, col", [
    ("y = x + sum(param(B, d), over=B)", 15),     # a raw parameter along the batch axis
    ("y = x + linear(z, d)", 11),                 # K is a free dim: it appears only in the type of input z
    ("y = x + sum(embedding(i, K, d), over=K)", 15),  # an embedding table with K rows
])
def test_parameter_sized_by_a_free_dim_is_a_located_error(body: str, col: int) -> None:
    # its parameter count is no number: int() of a symbol raised TypeError while reporting (exit 3)
    head = HEAD.replace("x: float32[B, d]", "x: float32[B, d]\n  z: float32[B, K]\n  i: int64[K]")
    err = error(spec(body, head))
    #  12   y = ...
    assert where(err) == ("E026", 12, col)
    assert "free dim" in err.message


# ---- block templates -----------------------------------------------------------------------------------

TEMPLATE_NAMES = HEAD + """blocks:
  f(x, n): |
    return x * n
  f_2(x): |
    return linear(x, d, name=proj)
body: |
  a = f(x, 1)
  b = f(x, 2)
  y = a + b + f_2(x)
"""


def test_second_binding_of_a_block_does_not_take_another_blocks_name() -> None:
    # f's second binding was named f_2, then block f_2's template replaced it: b called linear (a silent miscompile,
    # and its parameters were counted twice)
    result = nnspec.check(TEMPLATE_NAMES)
    assert result.params == 8 * 8 + 8
    calls = [n for n in result.model.graph if n.op == "call"]
    assert [result.model.templates[n.attrs["block"]].meta["block"] for n in calls] == ["f", "f", "f_2"]
    assert len({n.attrs["block"] for n in calls}) == 3


def test_second_binding_runs_its_own_template() -> None:
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    interp = Interpreter(nnspec.check(TEMPLATE_NAMES).model)
    x = torch.randn(2, 8)
    proj = interp.named_spec_parameters()
    want = 3 * x + torch.nn.functional.linear(x, proj["f_2.proj.weight"], proj["f_2.proj.bias"])
    torch.testing.assert_close(interp(x=x)["y"], want)


def test_many_bindings_of_one_block_are_numbered_in_order() -> None:
    # each new template counted all the existing ones to find its number: 2**12 bindings took minutes
    blocks = "".join(f"  b{i}(x, n): |\n    return b{i + 1}(x, 2 * n, name=p) + b{i + 1}(x, 2 * n + 1, name=q)\n"
                     for i in range(10))
    text = HEAD + "blocks:\n" + blocks + "  b10(x, n): |\n    return x * n\nbody: |\n  y = b0(x, 1)\n"
    model = nnspec.check(text).model
    assert len(model.templates) == 2 ** 11 - 1
    assert {g.name for g in model.templates.values() if g.meta["block"] == "b10"} == \
        {"b10"} | {f"b10_{i}" for i in range(2, 2 ** 10 + 1)}


# ---- repeats nested in repeats -------------------------------------------------------------------------

def nested_repeats(outer: int, inner: int) -> str:
    return HEAD + f"""blocks:
  lin(x): |
    return linear(x, d)
  stack(x): |
    return repeat({inner}, lin, x)
body: |
  y = repeat({outer}, stack, x)
"""


def test_nested_repeats_unroll_to_too_many_parameter_tensors() -> None:
    # 10**5 x 10**5 layers of 2 tensors each: check listed all 2*10**10 parameter paths (to map weights) and hung
    from nnspec.compiler.elaborate import MAX_PARAM_TENSORS

    err = error(nested_repeats(100_000, 100_000))
    #  15   y = repeat(100000, stack, x): the repeat starts at column 7
    assert where(err) == ("E005", 15, 7)
    assert f"{MAX_PARAM_TENSORS:,}" in err.message


def test_nested_repeats_within_the_limit_are_counted_in_closed_form() -> None:
    result = nnspec.check(nested_repeats(100, 50))
    assert result.params == 100 * 50 * (8 * 8 + 8)


# ---- float overflow and zero divisors on tensors -------------------------------------------------------

@pytest.mark.parametrize("expr", ["10.0**400", "2.0**10000", "1e300 * 1e300", "(-1e308) * 10.0"])
def test_float_overflow_is_a_located_error(expr: str) -> None:
    # Python's float ** raised OverflowError (exit 3)
    err = error(spec(f"y = x * ({expr})"))
    assert where(err) == ("E023", 10, 12)
    assert "out of range" in err.message


def test_float_overflow_in_an_argument() -> None:
    err = error(spec("y = dropout(x, 10.0**400)"))
    assert where(err) == ("E023", 10, 18)


@pytest.mark.parametrize("op", ["/", "//", "%"])
def test_tensor_divided_by_a_constant_zero_is_a_located_error(op: str) -> None:
    # int64 tensor % 0 checked and then raised ZeroDivisionError inside torch when run
    text = HEAD.replace("x: float32[B, d]", "x: int64[B, d]").replace("y: float32[B, d]", "y: int64[B, d]")
    err = error(spec(f"y = x {op} 0", text))
    assert where(err) == ("E026", 10, 7)
    assert "division by zero" in err.message


def test_float_tensor_divided_by_a_zero_dim_expression() -> None:
    err = error(spec("y = x / (d - 8)"))
    assert where(err) == ("E026", 10, 7)


# ---- parameter scope names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["__class__", "__dict__", "class", "lambda", "return", "true"])
def test_reserved_scope_name_is_a_located_error(name: str) -> None:
    # a scope name is a parameter path component (and an attribute in generated code), like a block name
    err = error(spec(f"y = linear(x, d, name={name})"))
    #  10   y = linear(x, d, name=NAME): the name starts at column 25
    assert where(err)[0] in ("E004", "E010")
    assert where(err)[1] == 10


@pytest.mark.parametrize("name", ["forward", "training", "state_dict", "_parameters", "T_destination", "children"])
def test_scope_named_like_a_module_attribute_runs(name: str) -> None:
    # the interpreter's nn.Module tree refused them: register_parameter raised KeyError "attribute ... already
    # exists" (exit 3 for a spec that checked)
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    interp = Interpreter(nnspec.check(spec(f"y = linear(x, d, name={name})")).model)
    assert sorted(interp.named_spec_parameters()) == [f"{name}.bias", f"{name}.weight"]
    assert sorted(interp.state_dict()) == [f"root.{name}.bias", f"root.{name}.weight"]
    assert interp(x=torch.zeros(2, 8))["y"].shape == (2, 8)


def test_block_scope_named_like_a_module_attribute_runs() -> None:
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    text = HEAD + "blocks:\n  f(x): |\n    return linear(x, d, name=training)\nbody: |\n  y = f(x, name=forward)\n"
    interp = Interpreter(nnspec.check(text).model)
    assert sorted(interp.named_spec_parameters()) == ["forward.training.bias", "forward.training.weight"]
    assert interp(x=torch.zeros(2, 8))["y"].shape == (2, 8)


# ---- run-time guards are integer arithmetic on sizes ---------------------------------------------------

SEQ_REQ = HEAD.replace("x: float32[B, d]", "x: float32[B, T, d]").replace("y: float32[B, d]", "y: float32[B, T, d]")


@pytest.mark.parametrize("req", ["T <= 2.5", "sqrt(T) <= 4", "log(T) < 3", "exp(T) < 100", "abs(T - 3) >= 1",
                                 "T * pi <= 10", "T ** 0.5 <= 4"])
def test_run_time_requirement_outside_integer_arithmetic_is_a_located_error(req: str) -> None:
    # kept as guards, then generated code had no way to write them (InternalError in codegen: exit 3)
    err = error(spec("y = relu(x)", SEQ_REQ + f"require:\n  - {req}\n"))
    #  10   - REQ: the requirement starts at column 5
    assert where(err) == ("E026", 10, 5)
    assert "run time" in err.message


@pytest.mark.parametrize("req, guard", [("T % 4 == 0.0", "T % 4 == 0.0"), ("T <= 8.0", "T <= 8.0"),
                                        ("T // 2 <= 4", "T // 2 <= 4"), ("min(T, B) == 4", "min(T, B) == 4"),
                                        ("T ** 2 <= 64", "T ** 2 <= 64"), ("T / 2 <= 4", "T / 2 <= 4")])
def test_run_time_requirement_in_integer_arithmetic_is_a_guard(req: str, guard: str) -> None:
    import sympy

    model = nnspec.check(spec("y = relu(x)", SEQ_REQ + f"require:\n  - {req}\n")).model
    assert [g.text for g in model.guards] == [guard]
    assert not model.guards[0].expr.atoms(sympy.Float)  # 0.0 is the integer 0


# ---- integer axes in annotations -------------------------------------------------------------------------

@pytest.mark.parametrize("annotation", ["x[B, (0 k)]", "x[B, (k 0)]", "x[B, (2 k 0)]"])
def test_zero_sized_axis_in_a_split_is_a_located_error(annotation: str) -> None:
    # the inferred member's size was d / 0: ZeroDivisionError (exit 3)
    err = error(spec(f"z = {annotation}\ny = x"))
    assert where(err) == ("E023", 10, 7)


def test_integer_axis_beyond_the_limit_in_an_annotation() -> None:
    err = error(spec("z = x[B, (k 99999999999999999999)]\ny = x"))
    assert where(err)[0] == "E023"


# ---- arithmetic on functions and tuples ------------------------------------------------------------------

@pytest.mark.parametrize("expr", ["-relu", "-(f)", "+f * 2", "-(x, x)"])
def test_negating_a_function_or_tuple_is_a_located_error(expr: str) -> None:
    # static arithmetic tried sympify(FuncRef): SympifyError (exit 3)
    text = HEAD + "blocks:\n  f(x): |\n    return x\nbody: |\n" + f"  z = {expr}\n  y = x\n"
    err = error(text)
    assert where(err)[0] == "E026" and where(err)[1] == 13


# ---- exit codes from main() ------------------------------------------------------------------------------

@pytest.mark.parametrize("raised, code, text", [
    ("spec", 1, "error[E011]"), ("resource", 1, "error[R001]"), ("usage", 2, "nnspec: error: bad"),
    ("value", 3, "please report"), ("key", 3, "please report"), ("recursion", 3, "please report"),
])
def test_main_maps_typed_errors_and_never_relabels_a_bug(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str],
                                                         raised: str, code: int, text: str) -> None:
    """A command that lets a SpecError, ResourceError or UsageError through still exits 1 or 2; any other
    exception is nnspec's bug: exit 3, never 1 or 2."""
    import sys

    import nnspec.cli
    from nnspec.spec.source import Source

    def broken(*args: object, **kwargs: object) -> None:
        if raised == "spec":
            raise nnspec.SpecError("E011", "undefined name 'zork'", Source("s.yaml", "zork\n").span(0, 4))
        if raised == "resource":
            raise nnspec.ResourceError("too big", 2, 1)
        if raised == "usage":
            raise nnspec.UsageError("bad")
        raise {"value": ValueError, "key": KeyError, "recursion": RecursionError}[raised]("a bug")

    monkeypatch.setattr(nnspec.cli, "print_model", broken)
    monkeypatch.setattr(sys, "argv", ["nnspec", "check", "examples/small/moe.yaml", "--emit", "ir"])
    with pytest.raises(SystemExit) as info:
        nnspec.cli.main()
    assert info.value.code == code
    assert text in capsys.readouterr().err


# ---- a block parameter used as a size ----------------------------------------------------------------------

SIZED_BLOCK = HEAD + """blocks:
  f(x, h): |
    z = x[B, (h k)]
    return z[B, (h k)]
body: |
  y = f(x, ARG)
"""


@pytest.mark.parametrize("arg", ["0", "2 * 0", "2 ** -1", "-2", "3 / 2"])
def test_block_parameter_that_is_no_size_is_refused_where_used_as_one(arg: str) -> None:
    # h = 0 split d by zero (ZeroDivisionError, exit 3); h = 1/2 checked, then failed at run time
    err = error(SIZED_BLOCK.replace("ARG", arg))
    #  11     z = x[B, (h k)]: the annotation at column 9
    assert where(err) == ("E023", 11, 9)
    assert "'h'" in err.message


def test_block_parameter_that_is_a_size_splits() -> None:
    assert nnspec.check(SIZED_BLOCK.replace("ARG", "2 * 2")).params == 0


# ---- built-in arguments the interpreter could not run ---------------------------------------------------

SEQ_IN = HEAD.replace("x: float32[B, d]", "x: float32[B, T, d]").replace("y: float32[B, d]", "y: float32[B, T, d]")


@pytest.mark.parametrize("body, col", [
    ('y = x + sum(param(d, std=-1), over=d)', 28),        # torch: "normal expects std >= 0.0"
    ('y = x + sum(param(d, std=inf), over=d)', 28),       # every weight infinite
    ("y = rotary(x, pos=T, base=0)", 29),                 # frequencies base**(-2i/d): 0**negative, NaN
    ("y = rotary(x, pos=T, base=-1)", 29),
    ("y = x + sinusoidal(T, d, base=0)[T, d]", 33),
])
def test_argument_the_interpreter_cannot_use_is_a_located_error(body: str, col: int) -> None:
    err = error(spec(body, SEQ_IN))
    assert where(err) == ("E015", 10, col)


def test_slice_with_step_zero_is_a_located_error() -> None:
    # the slice's length was computed with // step before the step was checked: ZeroDivisionError (exit 3)
    err = error(spec("y = x + sum(slice(x, over=T, step=0, stop=2, into=K), over=K)[B, d]", SEQ_IN))
    assert where(err) == ("E012", 10, 15)


@pytest.mark.parametrize("call", ["maxpool(x[B, d, T], 100, over=d, into=P)",
                                  "conv(x, 4, 9, channel=T, over=d, into=P)"])
def test_window_larger_than_a_known_axis_is_a_located_error(call: str) -> None:
    # the output axis had size 8 - 100 + 1 < 1
    err = error(spec(f"z = {call}\ny = x", SEQ_IN))
    assert where(err) == ("E023", 10, 7)


def test_window_along_a_free_axis_is_a_guard() -> None:
    # avgpool of 100 along T checked, then torch failed for T < 100 ("Output size is too small")
    text = SEQ_IN.replace("y: float32[B, T, d]", "y: float32[B, P, d]")
    result = nnspec.check(spec("y = avgpool(x[B, d, T], 100, over=T, into=P)[B, P, d]", text))
    assert [g.text for g in result.model.guards] == ["T >= 100"]


def test_pool_padding_beyond_half_the_window_is_a_located_error() -> None:
    # torch: "pad should be at most half of effective kernel size"
    err = error(spec("z = maxpool(x[B, d, T], 2, padding=3, over=d, into=P)\ny = x", SEQ_IN))
    assert where(err) == ("E015", 10, 7)


@pytest.mark.parametrize("positions", ["ids", "ids[B, T]"])
def test_rotary_positions_per_row(positions: str) -> None:
    # once refused (the backends built [T, d] tables from 1-D positions only, and torch.outer raised at run time);
    # per-row positions [B, T] are what left-padded batches need, so both the generated module and the reference
    # now rotate row b's token t by ids[b, t], checked against the formula written here
    import torch

    text = SEQ_IN.replace("x: float32[B, T, d]", "x: float32[B, T, d]\n  ids: int64[B, T]")
    model = nnspec.build(spec(f"y = rotary(x, pos=T, positions={positions})", text), d=8)
    x = torch.randn(2, 5, 8)
    ids = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    inv = 10000.0 ** (-torch.arange(0, 8, 2).double() / 8)
    angle = ids[..., None].double() * inv                       # [B, T, d/2]
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    rotated = torch.cat([-x[..., 4:], x[..., :4]], -1)           # rotate_half, as Llama's
    torch.testing.assert_close(model(x=x, ids=ids), (x * cos + rotated * sin).float())


def test_rotary_positions_along_the_position_axis() -> None:
    text = SEQ_IN.replace("x: float32[B, T, d]", "x: float32[B, T, d]\n  pos: int64[T]")
    assert nnspec.check(spec("y = rotary(x, pos=T, positions=pos)", text)).params == 0


@pytest.mark.parametrize("body, col", [
    ("y = x + full(70000, B, T, d, dtype=float16)", 16),     # beyond float16's 65504
    ("y = x + cast(full(2**40, B, T, d, dtype=int32), \"float32\")", 21),
    ("y = x + cast(full(-(2**31) - 1, B, T, d, dtype=int32), \"float32\")", 21),
])
def test_fill_value_beyond_its_dtype_is_a_located_error(body: str, col: int) -> None:
    # torch.full raised "value cannot be converted to type ... without overflow" at run time
    err = error(spec(body, SEQ_IN))
    assert where(err) == ("E023", 10, col)


def test_integer_constant_beyond_an_int32_tensor() -> None:
    # the weakly typed 2**40 took the int32 tensor's dtype, and overflowed when the constant was made
    err = error(spec('y = cast(cast(x, "int32") + 2**40, "float32")', SEQ_IN))
    #  10   y = cast(cast(x, "int32") + 2**40, ...): the sum starts at column 12
    assert where(err) == ("E023", 10, 12)


@pytest.mark.parametrize("body", ["y = x + full(inf, B, T, d, dtype=float16)",
                                  "y = x + full(65504, B, T, d, dtype=float16)",
                                  'y = x + cast(full(2**31 - 1, B, T, d, dtype=int32), "float32")',
                                  "y = where(x > 0, cast(x, \"float16\"), -1e9)[B, T, d]"])
def test_fill_values_within_their_dtype(body: str) -> None:
    nnspec.check(spec(body, SEQ_IN))


# ---- a shared repeat of zero iterations ---------------------------------------------------------------------

ZERO_REPEAT = HEAD + """blocks:
  f(x): |
    return linear(x, d)
body: |
  y = repeat(COUNT, f, x, shared=SHARED)
"""


@pytest.mark.parametrize("count", ["0", "d % -1"])
def test_shared_repeat_of_zero_iterations_allocates_its_one_weight_set(count: str) -> None:
    # found as `repeat(depth % -1, ..., shared=true)`: check counted the shared set (8*8 + 8) and the generated
    # module built it, but the interpreter allocated no weights for zero iterations
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    result = nnspec.check(ZERO_REPEAT.replace("COUNT", count).replace("SHARED", "true"))
    assert result.params == 8 * 8 + 8
    interp = Interpreter(result.model)
    assert sorted(interp.named_spec_parameters()) == ["f.linear.bias", "f.linear.weight"]
    x = torch.randn(2, 8)
    torch.testing.assert_close(interp(x=x)["y"], x)  # zero iterations: the input itself


def test_separate_repeat_of_zero_iterations_has_no_weights() -> None:
    pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    result = nnspec.check(ZERO_REPEAT.replace("COUNT", "0").replace("SHARED", "false"))
    assert result.params == 0
    assert list(Interpreter(result.model).named_spec_parameters()) == []


# ---- a requirement that is a size, not a condition ----------------------------------------------------------

@pytest.mark.parametrize("req", ["K + N", "T", "2 * T", "-T", "T // 2"])
def test_requirement_that_is_a_size_on_free_dims_is_a_located_error(req: str) -> None:
    # `K == N` mutated to `K + N` was kept as a run-time guard; code generation then had no way to write it as a
    # condition (InternalError, exit 3)
    text = SEQ_REQ.replace("x: float32[B, T, d]", "x: float32[B, T, d]\n  a: float32[K, N]")
    err = error(spec("y = relu(x)", text + f"require:\n  - {req}\n"))
    #  11   - REQ: the requirement starts at column 5
    assert where(err) == ("E026", 11, 5)
    assert "is not a condition" in err.message


def test_requirement_that_is_a_condition_on_free_dims_is_generated() -> None:
    generated = pytest.importorskip("nnspec.generated")
    text = SEQ_REQ.replace("x: float32[B, T, d]", "x: float32[B, T, d]\n  a: float32[K, N]")
    compiled = generated.compile_spec(spec("y = relu(x)", text + "require:\n  - K == N\n"))
    assert [g.text for g in compiled.result.model.guards] == ["K == N"]
    compile(compiled.source, "<generated>", "exec")


# ---- `nnspec compile` relabelled a ValueError (a bug) as a usage error --------------------------------------

def test_compile_does_not_relabel_a_bug_as_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    # compile caught ValueError with the usage errors: any ValueError from a bug in code generation exited 2
    import sys

    import nnspec.cli
    from nnspec.pipeline import Pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug in code generation")
    monkeypatch.setattr(Pipeline, "artifact", broken)
    monkeypatch.setattr(sys, "argv", ["nnspec", "compile", "examples/small/moe.yaml", "-o", str(tmp_path)])
    with pytest.raises(SystemExit) as info:
        nnspec.cli.main()
    assert info.value.code == 3
    assert "please report" in capsys.readouterr().err


def test_compile_of_two_specs_with_one_name_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: object) -> None:
    from typer.testing import CliRunner

    from nnspec.cli import app
    spec = "examples/small/moe.yaml"
    result = CliRunner().invoke(app, ["compile", spec, spec, "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert "two specs would both write moe.py" in result.stderr


# ---- dtypes the checker promised and torch did not compute (found by the dtype mutator) -----------------------

MIXED = HEAD.replace("x: float32[B, d]", "x: float32[B, T, d]\n  h: float16[B, T, d]\n  j: int32[B, T]") \
    .replace("y: float32[B, d]", "y: OUT")
#  1 nnspec: 1 ... 6   x: ..  7   h: float16[B, T, d]   8   j: int32[B, T]  ... 11 body: |   12   y = ...


@pytest.mark.parametrize("body, out, col", [
    ("y[B, T] = h * x", "float32[B, T]", 13),                 # checked as float32; torch.einsum: Half and Float
    ("y = linear(h, d)", "float16[B, T, d]", 7),              # float32 weights: mat1 and mat2 must have the same dtype
    ("y = rmsnorm(h)", "float16[B, T, d]", 7),                # checked as float16, computed as float32
    ("y = layernorm(h)", "float16[B, T, d]", 7),
    ("y = conv(h, 4, 3, channel=d, over=T, into=P, padding=1)", "float16[B, P, 4]", 7),
    ("y = attention(h[B, T, (2 k)], x[B, S, (2 k)], x[B, S, (2 k)], key=S, dim=k, query=T)", "float16[B, T, 2, k]",
     7),
])
def test_operands_torch_does_not_promote_must_share_a_dtype(body: str, out: str, col: int) -> None:
    err = error(spec(body, MIXED.replace("OUT", out)))
    assert where(err) == ("E013", 12, col)
    assert "in one dtype, got float16 and float32" in err.message


@pytest.mark.parametrize("body, out", [("y = sum(j, over=T)", "int64[B]"), ("y = cumsum(j, over=T)", "int64[B, T]")])
def test_integer_sums_are_int64_as_torch_computes_them(body: str, out: str) -> None:
    # sum/cumsum of int32 were checked as int32 and computed as int64 by torch (the output's declared dtype broke)
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    result = nnspec.check(spec(body, MIXED.replace("OUT", out)))
    inputs = {"x": torch.zeros(2, 3, 8), "h": torch.zeros(2, 3, 8, dtype=torch.float16),
              "j": torch.arange(6, dtype=torch.int32).reshape(2, 3)}
    y = Interpreter(result.model)(**inputs)["y"]
    assert y.dtype == torch.int64
    want = inputs["j"].sum(-1) if "sum(" in body and "cumsum" not in body else inputs["j"].cumsum(-1)
    assert y.tolist() == want.tolist()
    int32 = error(spec(body, MIXED.replace("OUT", out.replace("int64", "int32"))))
    assert where(int32)[0] == "E021"


# ---- functions of static values that leave the real numbers -------------------------------------------------

@pytest.mark.parametrize("body, code, col", [
    ("y = linear(x, d, std=0.02 / sqrt(2 * -1 * d))", "E026", 31),   # the gpt2 c_proj init, mutated: TypeError
    ("y = x * sqrt(-1)", "E026", 11),
    ("y = x * log(0)", "E026", 11),
    ("y = x * log(-1)", "E026", 11),
    ("y = dropout(x, sqrt(-1))", "E026", 18),
    ("y = x * log(d - 8)", "E026", 11),                                # judged by the dim's value
    ("y = x * sqrt(d - 9)", "E026", 11),
    ("y = x * exp(100000)", "E023", 11),                               # beyond 2^62, though no sympy Number
    ("y = x * exp(d * 100)", "E023", 11),
])
def test_static_function_leaving_the_reals_is_a_located_error(body: str, code: str, col: int) -> None:
    # sympy made sqrt(-2) = sqrt(2)*I; float() of it raised TypeError (exit 3) where a number was needed
    err = error(spec(body))
    assert where(err) == (code, 10, col)


def test_static_function_inside_a_dim() -> None:
    err = error(spec("y = x", HEAD.replace("d: 8", "d: 8\n  e: max(sqrt(-1), 2)")))
    #   5   e: max(sqrt(-1), 2): sqrt starts at column 10 (max raised "The argument 'I' is not comparable")
    assert where(err) == ("E026", 5, 10)


@pytest.mark.parametrize("body", ["y = x * sqrt(d)", "y = x * exp(-1000)", "y = x * log(d)", "y = x * max(d, 2)"])
def test_static_functions_within_the_reals(body: str) -> None:
    assert nnspec.check(spec(body)).params == 0


# ---- a spec without outputs ------------------------------------------------------------------------------------

def test_spec_with_no_outputs_is_a_located_error() -> None:
    # `outputs: {}` checked; the generated forward, annotated to return a dict, returned None
    err = error(HEAD.replace("outputs:\n  y: float32[B, d]\n", "outputs: {}\n") + "body: |\n  y = relu(x)\n")
    #   7 outputs: {}: the mapping at column 10
    assert where(err) == ("E021", 7, 10)


# ---- clamp bounds and abs of bool ------------------------------------------------------------------------------

@pytest.mark.parametrize("body, out, code, col", [
    ("y = clamp(j, min=0.5)", "int32[B, T]", "E026", 20),                # torch.clamp made it float32: not int32
    ("y = clamp(h, min=0.5, max=2**20)", "float16[B, T, d]", "E023", 29),  # torch: cannot convert to Half
    ("y = abs(j > 0)", "bool[B, T]", "E013", 7),                          # torch: "abs_cpu" not implemented for Bool
])
def test_clamp_and_abs_that_torch_cannot_compute_are_located_errors(body: str, out: str, code: str, col: int) -> None:
    err = error(spec(body, MIXED.replace("OUT", out)))
    assert where(err) == (code, 12, col)


def test_clamp_of_an_integer_tensor_stays_integer() -> None:
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch.interpreter import Interpreter

    result = nnspec.check(spec("y = clamp(j, min=1, max=d - 4)", MIXED.replace("OUT", "int32[B, T]")))
    j = torch.arange(8, dtype=torch.int32).reshape(2, 4)
    y = Interpreter(result.model)(x=torch.zeros(2, 4, 8), h=torch.zeros(2, 4, 8, dtype=torch.float16), j=j)["y"]
    assert y.dtype == torch.int32 and y.tolist() == [[1, 1, 2, 3], [4, 4, 4, 4]]


def test_topk_of_a_bool_tensor_is_a_located_error() -> None:
    # checked, then torch: "topk does not support bool dtypes on CPU"
    err = error(spec("v, i = topk(j > 0, 2, over=T, into=K)\ny = x", MIXED.replace("OUT", "float32[B, T, d]")))
    assert where(err) == ("E013", 12, 10)


# ---- a run-time guard that always holds ----------------------------------------------------------------------

def test_split_guard_that_always_holds_is_not_kept() -> None:
    # a block taking x[(B T), d] of a T-long input split T into (B T): the guard `T % T == 0` was kept, and code
    # generation could not write its negation, False (InternalError, exit 3)
    generated = pytest.importorskip("nnspec.generated")
    text = HEAD.replace("x: float32[B, d]", "x: float32[T, d]").replace("y: float32[B, d]", "y: float32[B, T, d]") \
        + "blocks:\n  f(x[(B T), d]): |\n    return x\nbody: |\n  y = f(x)\n"
    compiled = generated.compile_spec(text)
    assert compiled.result.model.guards == []
    compile(compiled.source, "<generated>", "exec")


@pytest.mark.parametrize("value", [".nan", "-.inf", "0.0"])
def test_norm_eps_that_is_not_positive_is_a_located_error(value: str) -> None:
    # a NaN eps passed the `eps <= 0` check (found by the 10k fuzz run: rms_norm_eps: nan in llama.yaml)
    err = error(spec("y = rmsnorm(x, eps=c, name=n)", HEAD.replace("inputs:", f"options:\n  c: {value}\ninputs:")))
    assert where(err) == ("E015", 12, 7) and "eps must be positive" in err.message


def test_non_finite_floats_are_written_as_floats_in_generated_code() -> None:
    # the generated file wrote a non-finite float attribute as a bare name (`nan`, `inf`): NameError when the
    # module ran. An infinite eps is legal (the norm's output is 0); the module must compute what the
    # interpreter computes.
    torch = pytest.importorskip("torch")
    from nnspec.backends.torch import Interpreter
    from nnspec.generated import compile_spec
    text = spec("y = rmsnorm(x, eps=c, name=n)", HEAD.replace("inputs:", "options:\n  c: .inf\ninputs:"))
    interp = Interpreter(nnspec.check(text).model).eval()
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    for target, opt in (("torch", 0), ("torch", 2), ("triton", 2)):   # triton: the eps is a kernel argument
        if target == "triton":
            pytest.importorskip("triton")
        assert 'float("inf")' in compile_spec(text, target=target, opt=opt).source
        m = nnspec.build(text, target=target, opt=opt).eval()
        m.load_state_dict(interp.root.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(m(x), interp(x=x)["y"], equal_nan=True)


def test_a_required_input_declared_after_an_optional_one_is_keyword_only() -> None:
    # issue 22's hostile.axis_sums / many_operands mutators add inputs after a seed's optional ones: the generated
    # forward() was `def forward(self, x, mask=None, extra)`, a SyntaxError, on both targets
    torch = pytest.importorskip("torch")
    inputs = '  x: float32[B, d]\n  mask: {type: "int64[B]", default: 1}\n  extra: float32[B, d]'
    text = spec("y = relu(x) + extra * 2.0", HEAD.replace("  x: float32[B, d]", inputs))
    targets = ["torch"] + (["triton"] if importlib.util.find_spec("triton") else [])
    x, extra = torch.randn(2, 8), torch.randn(2, 8)
    for target in targets:
        for opt in (0, 2):
            m = nnspec.build(text, target=target, opt=opt)
            want = torch.relu(x) + extra * 2.0
            torch.testing.assert_close(m(x, extra=extra), want)
            torch.testing.assert_close(m(x, mask=torch.ones(2, dtype=torch.long), extra=extra), want)


def test_triton_fused_residual_norm_writes_an_infinite_eps_as_a_float() -> None:
    # found by the fuzz campaign: `rms_norm_eps: .inf` reached the Triton target's fused add + rmsnorm as a bare
    # `inf` (NameError when the layer ran); every other eps already went through the literal printer
    from pathlib import Path

    from nnspec.generated import compile_spec
    src = compile_spec(Path(__file__).parent.parent / "examples" / "llama.yaml", target="triton", opt=2,
                       rms_norm_eps=float("inf")).source
    fused = [line for line in src.splitlines() if "residual=" in line and "rmsnorm(" in line]
    assert fused and all('float("inf")' in line for line in fused)
