"""Every spec is untrusted input (issue 8). Attacks from each field that reaches a path or generated code:

- include confinement: symbolic links out of the spec's directory, `std/..`, NUL bytes, very long paths, link
  loops, self-includes, directories, devices and binary files are all located E028/E020/E006/E005 errors;
- identifier and code injection: names, block names, scope names, option values, docs and comments carrying
  Python (`__import__`, keywords, quotes, newlines, `\"\"\"`, braces, lookalike letters). The check refuses them
  with a located `SpecError`, or the generated module (when `nnspec.generated` exists) compiles, runs nothing of
  the payload, and holds its text only inside string literals and comments;
- expressions are evaluated by nnspec's own evaluator: no `eval`/`exec` of spec text anywhere in the package.

(`..`, absolute paths, URLs and a missing std/ file are golden errors in tests/golden/errors/; an include cycle
between two files is in tests/test_language_extras.py.)
"""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import re
import tokenize
from pathlib import Path
from typing import Any

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
BODY = "body: |\n  y = relu(x)\n"
MARK = "PWNED_4f7c"          # the payloads' identifier: it must never be executable code
PAYLOAD = f"__import__('builtins').__setattr__('{MARK}', 1)"


def error(text: str | Path) -> nnspec.SpecError:
    with pytest.raises(nnspec.SpecError) as info:
        nnspec.check(text)
    return info.value


def where(err: nnspec.SpecError) -> tuple[str, int, int]:
    assert err.span is not None, err
    return err.code, err.span.line, err.span.col


# ---- include confinement -------------------------------------------------------------------------------

def include_spec(tmp_path: Path, ref: str) -> Path:
    top = tmp_path / "spec" / "top.yaml"
    top.parent.mkdir(exist_ok=True)
    top.write_text(HEAD.replace("dims:", f"include: [{ref}]\ndims:") + BODY)
    return top
#  3 include: [REF]: the reference starts at column 11


LIBRARY = "nnspec: 1\nblocks:\n  f(x): |\n    return x\n"


def test_symlink_to_a_file_outside_the_spec_directory(tmp_path: Path) -> None:
    (tmp_path / "secret.yaml").write_text(LIBRARY)
    top = include_spec(tmp_path, "lib.yaml")
    (top.parent / "lib.yaml").symlink_to(tmp_path / "secret.yaml")
    err = error(top)
    assert where(err) == ("E028", 3, 11)
    assert "outside the spec's directory" in err.message


def test_symlinked_directory_leading_outside(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "lib.yaml").write_text(LIBRARY)
    top = include_spec(tmp_path, "libs/lib.yaml")
    (top.parent / "libs").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert where(error(top)) == ("E028", 3, 11)


def test_symlink_inside_the_spec_directory_is_followed(tmp_path: Path) -> None:
    top = include_spec(tmp_path, "alias.yaml")
    (top.parent / "lib.yaml").write_text(LIBRARY)
    (top.parent / "alias.yaml").symlink_to(top.parent / "lib.yaml")
    assert nnspec.check(top).params == 0


def test_symlink_to_a_device(tmp_path: Path) -> None:
    top = include_spec(tmp_path, "zero.yaml")
    (top.parent / "zero.yaml").symlink_to("/dev/zero")
    assert where(error(top)) == ("E028", 3, 11)


@pytest.mark.parametrize("ref", ["std/../x.yaml", "std/../../../../etc/passwd", "std/../load.py",
                                 "std//etc/passwd", "sub/../top.yaml", "./../spec/top.yaml"])
def test_dot_dot_anywhere_is_refused(tmp_path: Path, ref: str) -> None:
    err = error(include_spec(tmp_path, ref))
    assert where(err) == ("E028", 3, 11)


@pytest.mark.parametrize("ref", ["/etc/passwd", "//host/share/x.yaml", "~/x.yaml", "~root/x.yaml",
                                 "file:///etc/passwd", "http://example.com/x.yaml", "https://x/y.yaml",
                                 "ftp://x/y.yaml", "file:x.yaml", "'C:\\\\x.yaml'", "'\\\\\\\\server\\\\x.yaml'"])
def test_absolute_urls_and_foreign_paths(tmp_path: Path, ref: str) -> None:
    assert where(error(include_spec(tmp_path, ref))) == ("E028", 3, 11)


@pytest.mark.parametrize("ref", ['"a\\0b.yaml"', '"lib.yaml\\0../../etc/passwd"'])
def test_nul_byte_in_an_include_path(tmp_path: Path, ref: str) -> None:
    err = error(include_spec(tmp_path, ref))
    assert where(err) == ("E028", 3, 11)
    assert "NUL" in err.message


@pytest.mark.parametrize("ref", ["a" * 5000 + ".yaml", "a/" * 3000 + "x.yaml"])
def test_very_long_include_path(tmp_path: Path, ref: str) -> None:
    # was OSError "File name too long" from Path.resolve (exit 3)
    err = error(include_spec(tmp_path, ref))
    assert where(err) == ("E028", 3, 11)
    assert len(err.message) < 400


def test_symlink_loop(tmp_path: Path) -> None:
    # was RuntimeError "Symlink loop" from Path.resolve (exit 3)
    top = include_spec(tmp_path, "loop.yaml")
    (top.parent / "loop.yaml").symlink_to(top.parent / "loop.yaml")
    assert where(error(top)) == ("E028", 3, 11)


def test_include_of_a_directory(tmp_path: Path) -> None:
    top = include_spec(tmp_path, "sub")
    (top.parent / "sub").mkdir()
    assert where(error(top)) == ("E028", 3, 11)


def test_include_of_a_binary_file_is_located_in_that_file(tmp_path: Path) -> None:
    top = include_spec(tmp_path, "lib.yaml")
    (top.parent / "lib.yaml").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00")
    err = error(top)
    assert where(err) == ("E006", 1, 8)
    assert err.span is not None and Path(err.span.source.name).name == "lib.yaml"


def test_library_including_itself(tmp_path: Path) -> None:
    top = include_spec(tmp_path, "lib.yaml")
    (top.parent / "lib.yaml").write_text("nnspec: 1\ninclude: [lib.yaml]\n")
    err = error(top)
    assert err.code == "E020" and err.span is not None and Path(err.span.source.name).name == "lib.yaml"


def test_spec_including_itself(tmp_path: Path) -> None:
    # the spec is no library (it has name:, inputs:, ...): refused in it, not loaded twice or forever
    err = error(include_spec(tmp_path, "top.yaml"))
    assert err.code in ("E003", "E020")
    assert err.span is not None and Path(err.span.source.name).name == "top.yaml"


def test_relative_include_from_spec_text() -> None:
    err = error(HEAD.replace("dims:", "include: [lib.yaml]\ndims:") + BODY)
    assert where(err) == ("E028", 3, 11)


@pytest.mark.parametrize("include", ["[1]", "[[lib.yaml]]", "[{a: b}]", "lib.yaml", "[null]", "{a: b}"])
def test_include_of_the_wrong_kind(include: str) -> None:
    err = error(HEAD.replace("dims:", f"include: {include}\ndims:") + BODY)
    assert err.code == "E004" and err.span is not None and err.span.line == 3


def test_spec_path_with_a_nul_byte_is_a_usage_error() -> None:
    with pytest.raises(FileNotFoundError):
        nnspec.check("spec\x00.yaml")


# ---- identifier and code injection -----------------------------------------------------------------------

def generated() -> Any:
    """`nnspec.generated` (compile_spec, load_source) when code generation exists, else None."""
    try:
        mod = importlib.import_module("nnspec.generated")
    except ImportError:
        return None
    return mod if hasattr(mod, "compile_spec") and hasattr(mod, "load_source") else None


def code_outside_strings(source: str) -> list[str]:
    """Every token of `source` that is neither a string literal nor a comment (f-string parts included)."""
    skip = {tokenize.STRING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER}
    skip |= {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, n)}
    return [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]


def refused_or_inert(text: str) -> str:
    """'refused' (a located SpecError) or 'generated' (the module is safe); fails otherwise."""
    try:
        nnspec.check(text)
    except nnspec.SpecError as err:
        assert err.span is not None and err.span.source.text == text
        return "refused"
    gen = generated()
    if gen is None:
        pytest.skip("no code generator (nnspec.generated) to attack")
    try:
        compiled = gen.compile_spec(text)
    except nnspec.SpecError as err:  # the generator refuses a name it cannot write: located in the spec
        assert err.span is not None and err.span.source.text == text
        return "refused"
    source = compiled.source
    compile(source, "<generated>", "exec")
    tokens = code_outside_strings(source)
    # a user's name may become a variable (even one called `os` or `exec`: it is only a local), but the payload's
    # text never reaches code, and no name of Python's own import machinery appears
    assert not [t for t in tokens if MARK in t or t in ("__import__", "__builtins__", "system")], \
        "payload text outside a string literal"
    assert not hasattr(builtins, MARK)
    module = gen.load_source(source, compiled.result.model.name)
    instance = getattr(module, compiled.class_name)()
    assert not hasattr(builtins, MARK), "the payload ran"
    runs_like_the_interpreter(compiled.result.model, instance)
    assert not hasattr(builtins, MARK), "the payload ran"
    return "generated"


def runs_like_the_interpreter(model: Any, instance: Any) -> None:
    """The generated module, whatever its names, runs and computes what the reference interpreter does (a name
    that shadowed `torch`, `F` or a local in the generated code would break or change it)."""
    import torch

    from nnspec.backends.torch.interpreter import Interpreter
    from tools.fuzz import free_sizes, make_inputs
    interp = Interpreter(model).eval()
    instance.load_state_dict(interp.root.state_dict())
    inputs = make_inputs(model, free_sizes(model, 3), torch)
    with torch.no_grad():
        want = interp(**inputs)
        got = instance.eval()(**inputs)
    got = got if isinstance(got, dict) else {next(iter(want)): got}
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value)


# the values as YAML should hold them; `yq` (JSON's string syntax is YAML's double-quoted scalar) writes them
PAYLOADS = [f'"""\n{PAYLOAD}\n"""', f"'''\n{PAYLOAD}\n'''", f'"); {PAYLOAD}; ("', f"'); {PAYLOAD}; ('",
            f"\n{PAYLOAD}\n", f"{{{PAYLOAD}}}", f"\\\n{PAYLOAD}", f"\u2028{PAYLOAD}", f"# \n{PAYLOAD}",
            f"\r{PAYLOAD}", "\\", f"\\u0022; {PAYLOAD}"]


def yq(value: str) -> str:
    return json.dumps(value)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_doc_with_code(payload: str) -> None:
    assert refused_or_inert(HEAD.replace("name: m\n", f"name: m\ndoc: {yq(payload)}\n") + BODY) == "generated"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_option_string_value_with_code(payload: str) -> None:
    text = HEAD.replace("dims:", f"options:\n  tag: {yq(payload)}\ndims:") + BODY
    assert refused_or_inert(text) == "generated"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_option_choice_values_with_code(payload: str) -> None:
    text = HEAD.replace("dims:", f"options:\n  act: {{default: relu, choices: [relu, {yq(payload)}]}}\ndims:") \
        + "body: |\n  y = act(x)\n"
    assert refused_or_inert(text) == "generated"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_comment_in_the_body_with_code(payload: str) -> None:
    text = HEAD + f"body: {yq('y = relu(x)  # ' + payload)}\n"
    assert refused_or_inert(text) in ("refused", "generated")


def test_literal_block_comments_with_code() -> None:
    text = HEAD + f'blocks:\n  f(x): |\n    # """ {PAYLOAD}\n    return x  # \'\'\' {PAYLOAD}\n' \
        f"body: |\n  # {PAYLOAD}\n  y = f(x)  # {PAYLOAD}\n"
    assert refused_or_inert(text) == "generated"


NAMES = ["__import__", "__init__", "__class__", "__builtins__", "os", "sys", "self", "torch", "nn", "F", "super",
         "forward", "training", "state_dict", "None", "True", "class", "import", "lambda", "def", "eval", "exec",
         "print", "WEIGHT_MAPS", "OPTIONS", "M", "Model", "m_", "\u0430", "n\u0430me", "x\u200b", "ｘ", "K\u0301",
         "a-b", "a.b", "1a", "a b", "'a'", "a'); import os; ('"]


def quoted(name: str) -> str:
    return yq(name)


@pytest.mark.parametrize("name", NAMES)
def test_model_name(name: str) -> None:
    refused_or_inert(HEAD.replace("name: m", f"name: {quoted(name)}") + BODY)


@pytest.mark.parametrize("name", NAMES)
def test_dim_name(name: str) -> None:
    text = HEAD.replace("  d: 8", f"  d: 8\n  {quoted(name)}: 4") + "body: |\n  y = relu(x)\n"
    refused_or_inert(text)


@pytest.mark.parametrize("name", NAMES)
def test_option_name(name: str) -> None:
    refused_or_inert(HEAD.replace("dims:", f"options:\n  {quoted(name)}: 0.5\ndims:") + BODY)


@pytest.mark.parametrize("name", NAMES)
def test_input_and_output_names(name: str) -> None:
    text = HEAD.replace("  x: float32[B, d]", f"  x: float32[B, d]\n  {quoted(name)}: float32[B, d]") + BODY
    refused_or_inert(text)
    refused_or_inert(HEAD.replace("  y: float32[B, d]", f"  {quoted(name)}: float32[B, d]") + BODY)


@pytest.mark.parametrize("name", NAMES)
def test_block_name(name: str) -> None:
    text = HEAD + f"blocks:\n  {quoted(name + '(x)')}: |\n    return relu(x)\n" + BODY
    refused_or_inert(text)


@pytest.mark.parametrize("name", [n for n in NAMES if re.fullmatch(r"[A-Za-z_]\w*", n)])
def test_names_in_expressions(name: str) -> None:
    # as a variable, a block parameter, a parameter scope and an axis name: where the grammar reads a name
    refused_or_inert(HEAD + f"body: |\n  {name} = relu(x)\n  y = {name}\n")
    refused_or_inert(HEAD + f"blocks:\n  f({name}): |\n    return relu({name})\nbody: |\n  y = f(x)\n")
    refused_or_inert(HEAD + f"body: |\n  y = linear(x, d, name={name})\n")
    refused_or_inert(HEAD + f"body: |\n  y = x[B, {name}][B, d]\n")


CODE_NAMES = [n for n in NAMES if re.fullmatch(r"[A-Za-z_]\w*", n)] + [
    "ValueError", "range", "len", "isinstance", "int", "tuple", "shape", "dim", "x", "y", "fc", "D", "_", "einsum"]


@pytest.mark.parametrize("name", CODE_NAMES)
def test_free_dim_names_in_declared_types(name: str) -> None:
    # a free dim becomes a local in `forward` (`B, _ = x.shape`): named `torch`, `F` or `ValueError`, it would
    # shadow what the generated code calls next
    text = HEAD.replace("float32[B, d]", f"float32[{name}, d]") + "body: |\n  y = linear(relu(x), d, name=fc) + x\n"
    refused_or_inert(text)


@pytest.mark.parametrize("name", ["D", "d_", "D_2", "OPTIONS", "WEIGHT_MAPS", "M", "torch", "F", "nn"])
def test_dim_names_beside_the_constants_generated_from_them(name: str) -> None:
    # dims become module constants (`d` -> `D`): a second dim whose constant would be the same name
    text = HEAD.replace("  d: 8", f"  d: 8\n  {name}: 4") + f"body: |\n  y = linear(linear(x, {name}), d)\n"
    refused_or_inert(text)


@pytest.mark.parametrize("name", ["__import__", "__class__", "class", "import"])
def test_dunder_and_keyword_scope_names_are_refused_at_check(name: str) -> None:
    err = error(HEAD + f"body: |\n  y = linear(x, d, name={name})\n")
    assert err.code == "E004" and err.span is not None and err.span.line == 10


@pytest.mark.parametrize("name", ["n\u0430me", "x\u200b", "ｘ"])
def test_lookalike_letters_in_declared_names_are_refused(name: str) -> None:
    # a Cyrillic a, a zero-width space and a fullwidth x would make two names that look alike
    err = error(HEAD.replace("  d: 8", f"  d: 8\n  {name}: 4") + BODY)
    assert err.code == "E004" and err.span is not None and err.span.line == 5


@pytest.mark.parametrize("payload", PAYLOADS[:4])
def test_weight_mapping_with_code(payload: str) -> None:
    text = HEAD + "body: |\n  y = linear(x, d, name=fc)\nweights:\n  hf:\n" \
        f"    fc.weight: {yq(payload)}\n    fc.bias: b\n"
    refused_or_inert(text)


def test_generated_file_name_cannot_leave_the_output_directory() -> None:
    # the file is named after the model: an identifier, so no path separators, no dot-dot, no drive
    for name in ["../evil", "a/b", "..", "/etc/x", "C:evil", "evil.py", ".hidden"]:
        assert error(HEAD.replace("name: m", f"name: {quoted(name)}") + BODY).code == "E004", name


# ---- nnspec's own evaluator: no eval of spec text --------------------------------------------------------

def test_no_eval_or_exec_of_spec_text_in_the_package() -> None:
    """Spec expressions go through the lark grammar and nnspec's evaluator. Only the module runner of generated
    code may exec (its input is nnspec's own output, never spec text)."""
    root = Path(nnspec.__file__).parent
    allowed = {"backends/loading.py"}   # exec() of generated source, by design
    offenders = []
    for path in root.rglob("*.py"):
        if str(path.relative_to(root)) in allowed:
            continue
        previous = None
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
            called_builtin = previous is None or previous.string not in (".", "def")  # not `module.eval()`
            if tok.type == tokenize.NAME and tok.string in ("eval", "exec", "__import__") and called_builtin:
                offenders.append(f"{path.relative_to(root)}:{tok.start[0]}: {tok.string}")
            if tok.type not in (tokenize.NL, tokenize.COMMENT):
                previous = tok
    # sympy.sympify also evaluates strings: nnspec only ever hands it numbers and sympy objects
    sympify_of_text = [f"{p.relative_to(root)}" for p in root.rglob("*.py")
                       if re.search(r"sympify\(\s*(str|f['\"]|['\"])", p.read_text(encoding="utf-8"))]
    assert offenders == [] and sympify_of_text == []


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "().__class__.__bases__[0]",
                                  "x.__class__", "getattr(x, 'a')", "open('/etc/passwd')", "lambda: 1",
                                  "[i for i in x]", "x if True else __import__('os')"])
def test_python_constructs_are_not_the_expression_language(expr: str) -> None:
    err = error(HEAD + f"body: |\n  y = {expr}\n")
    assert err.code in ("E010", "E011", "E016", "E026") and err.span is not None and err.span.line == 10
    assert not hasattr(builtins, MARK)


def test_sympify_never_sees_spec_text(monkeypatch: pytest.MonkeyPatch) -> None:
    import sympy

    real = sympy.sympify

    def guarded(a: Any, *args: Any, **kwargs: Any) -> Any:
        assert not isinstance(a, str), f"sympify({a!r})"
        return real(a, *args, **kwargs)
    monkeypatch.setattr(sympy, "sympify", guarded)
    for name in ("gpt2", "llama", "bert", "vit"):
        nnspec.check(Path(__file__).parent.parent / "examples" / f"{name}.yaml")
    assert os.environ.get(MARK) is None


@pytest.mark.parametrize("body", ["__builtins__ = relu(x)\n  y = x", "y, __import__ = split(x[B, (2 h)], over=2)"])
def test_dunder_variable_names_are_refused(body: str) -> None:
    err = error(HEAD + f"body: |\n  {body}\n")
    assert err.code == "E004" and err.span is not None and err.span.line == 10


@pytest.mark.parametrize("place", ["input", "annotation"])
def test_dunder_axis_names_are_refused(place: str) -> None:
    # a free dim named __builtins__ became a local of that name in the generated forward
    if place == "input":
        text = HEAD.replace("x: float32[B, d]", "x: float32[__builtins__, d]") + BODY
    else:
        text = HEAD + "body: |\n  y = relu(x)[__class__, d][B, d]\n"
    err = error(text)
    assert "reserved" in err.message
    #   6   x: float32[__builtins__, d] -> column 14;  10   y = relu(x)[__class__, d]... -> column 15
    assert where(err) == (("E004", 6, 14) if place == "input" else ("E004", 10, 15))


def test_dunder_block_parameter_is_refused() -> None:
    err = error(HEAD + "blocks:\n  f(__class__): |\n    return __class__\nbody: |\n  y = f(x)\n")
    assert where(err) == ("E004", 10, 5)


# ---- a downloaded checkpoint's shard index reaches file paths too -------------------------------------------

@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors",
                                   "..", "", "a\\..\\b.safetensors", "x\x00.safetensors", 7, None])
def test_checkpoint_index_naming_a_file_elsewhere_is_refused(tmp_path: Path, shard: object) -> None:
    # the index's shard names were joined to its directory as they were: `../x` or `/etc/passwd` opened a file
    # outside the checkpoint
    pytest.importorskip("torch")
    from safetensors.torch import save_file

    from nnspec.backends.torch.weights import WeightError
    model = nnspec.build(Path(__file__).parent.parent / "examples/gpt2.yaml", vocab_size=11, n_positions=8, n_embd=8,
                         n_layer=1, n_head=2)
    state = nnspec.save_weights(model)
    save_file(state, str(tmp_path / "outside.safetensors"))    # a valid checkpoint the index must not reach
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    index = {"weight_map": {key: shard for key in state}}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightError, match="is not a file name beside the index"):
        nnspec.load_weights(model, ckpt)


@pytest.mark.parametrize("index", ['{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}", "not json", "[]",
                                   '{"weight_map": []}', '{"metadata": {}}'])
def test_malformed_checkpoint_index_is_a_weight_error(tmp_path: Path, index: str) -> None:
    # a JSONDecodeError, RecursionError or KeyError (exit 3) before
    pytest.importorskip("torch")
    from nnspec.backends.torch.weights import WeightError
    model = nnspec.build(Path(__file__).parent.parent / "examples/gpt2.yaml", vocab_size=11, n_positions=8, n_embd=8,
                         n_layer=1, n_head=2)
    (tmp_path / "model.safetensors.index.json").write_text(index)
    with pytest.raises(WeightError):
        nnspec.load_weights(model, tmp_path)


def test_sharded_checkpoint_beside_its_index_loads(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    spec = Path(__file__).parent.parent / "examples/gpt2.yaml"
    dims = dict(vocab_size=11, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    state = nnspec.save_weights(nnspec.build(spec, **dims))
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(tmp_path / "a.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(tmp_path / "b.safetensors"))
    index = {"weight_map": {k: "a.safetensors" if i < half else "b.safetensors" for i, k in enumerate(keys)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    other = nnspec.build(spec, **dims)
    nnspec.load_weights(other, tmp_path)
    for key, value in nnspec.save_weights(other).items():
        torch.testing.assert_close(value, state[key])
