"""Generated PyTorch code (`nnspec compile`, `nnspec.build`): what it computes, how it reads, what it refuses.

- every op has a code generator; the generated module computes what the reference interpreter computes for
  every example (eval and train mode: dropout draws the same random numbers in the same order);
- goldens under tests/golden/codegen/ are the exact files `nnspec compile` writes (`NNSPEC_REGEN=1` rewrites
  them; read the diff before accepting); they pass `ruff check` and `ruff format --check`;
- output is byte-identical whatever PYTHONHASHSEED; the header names nnspec's version and the spec's hash;
- spec text reaches the file only escaped; names that would shadow what the code needs are refused;
- free-dim guards and input checks raise clear errors; export with dynamic dims and torch.compile work.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import linecache
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from _small_models import BERT, GPT2, LLAMA, VIT  # noqa: E402

import nnspec  # noqa: E402
from nnspec.backends.torch import Interpreter  # noqa: E402
from nnspec.backends.torch.ops import EMITTERS  # noqa: E402
from nnspec.compiler.ops import OPS  # noqa: E402
from nnspec.generated import compile_spec, load_source  # noqa: E402
from nnspec.testing import inputs_for  # noqa: E402

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).parent / "golden" / "codegen"

GPT2_SMALL, BERT_SMALL, VIT_SMALL, LLAMA_SMALL = GPT2, BERT, VIT, LLAMA
EXAMPLE_DIMS: dict[str, dict[str, Any]] = {
    "gpt2.yaml": GPT2_SMALL, "bert.yaml": BERT_SMALL, "vit.yaml": VIT_SMALL, "llama.yaml": LLAMA_SMALL,
    **{f"small/{p.name}": {} for p in sorted((EXAMPLES / "small").glob("*.yaml"))},
}
GOLDENS = {"gpt2": ("gpt2.yaml", GPT2_SMALL), "bert": ("bert.yaml", BERT_SMALL),
           "retention": ("small/retention.yaml", {})}


@functools.cache
def cached_pair(example: str, opt: int = 0) -> tuple[Any, Interpreter, Any]:
    return built_pair(example, opt=opt, **EXAMPLE_DIMS[example])


def built_pair(example: str, opt: int = 0, **dims: Any) -> tuple[Any, Interpreter, Any]:
    """The checked result, the interpreter and the generated module holding the interpreter's weights."""
    result = nnspec.check(EXAMPLES / example, **dims)
    interp = Interpreter(result.model, seed=0)
    module = nnspec.build(EXAMPLES / example, opt=opt, **dims)
    module.load_state_dict(interp.root.state_dict())
    return result, interp, module


def as_dict(out: Any, names: list[str]) -> dict[str, Any]:
    return out if isinstance(out, dict) else {names[0]: out}


# ---- coverage and semantics ----
def test_every_op_has_a_code_generator() -> None:
    # graph inputs are forward()'s parameters, not code
    assert set(OPS) - set(EMITTERS) - {"input"} == set()


@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("example", list(EXAMPLE_DIMS))
@settings(max_examples=3)
@given(data=st.data())
def test_generated_module_computes_what_the_interpreter_does(example: str, opt: int, data: st.DataObject) -> None:
    """At -O0 the same ops in the same order: equal, not just close. At -O2 equal up to rounding."""
    result, interp, module = cached_pair(example, opt)
    exact = {"rtol": 0, "atol": 0} if opt == 0 else {}
    inputs = data.draw(inputs_for(result), label="inputs")
    names = list(result.model.outputs)
    with torch.no_grad():
        for mode in ("eval", "train"):
            getattr(interp, mode)()
            getattr(module, mode)()
            torch.manual_seed(7)
            want = interp(**inputs)
            torch.manual_seed(7)
            got = as_dict(module(**inputs), names)
            for name in names:
                torch.testing.assert_close(got[name], want[name], equal_nan=True, **exact)
    assert sorted(module.state_dict()) == sorted(interp.root.state_dict())


def test_parameter_count_and_init_follow_the_spec() -> None:
    dims = dict(GPT2_SMALL, n_embd=256, vocab_size=1000)
    result = nnspec.check(EXAMPLES / "gpt2.yaml", **dims)
    torch.manual_seed(0)
    m = nnspec.build(EXAMPLES / "gpt2.yaml", **dims)
    assert sum(p.numel() for p in m.parameters()) == result.params
    params = dict(m.named_parameters())
    assert torch.equal(params["h.0.ln_1.weight"], torch.ones(256))
    assert torch.equal(params["h.1.attn.c_attn.bias"], torch.zeros(3 * 256))
    for name in ("wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_fc.weight"):
        assert abs(params[name].std().item() - 0.02) < 0.002, name
    residual = 0.02 / (2 * dims["n_layer"]) ** 0.5      # `std=0.02 / sqrt(2 * n_layer)` in the spec, as GPT-2's
    for name in ("h.0.attn.c_proj.weight", "h.1.mlp.c_proj.weight"):
        assert abs(params[name].std().item() / residual - 1) < 0.1, name


def test_shared_repeat_is_one_module_applied_many_times() -> None:
    _, _, module = built_pair("small/recursive.yaml")
    keys = list(module.state_dict())
    assert keys and not any(k.split(".")[1].isdigit() for k in keys if k.startswith("layer."))
    assert "for _ in range(" in compile_spec(EXAMPLES / "small/recursive.yaml").source


@settings(max_examples=2)
@given(data=st.data())
def test_batchnorm_running_statistics_in_train_and_eval(data: st.DataObject) -> None:
    result, interp, module = built_pair("small/graph_transformer.yaml")
    bn = [k for k in module.state_dict() if k.endswith("running_mean")]
    assert bn, "the graph transformer example uses BatchNorm"
    inputs = data.draw(inputs_for(result), label="inputs")
    inputs["adj"] = torch.ones_like(inputs["adj"])   # every node has neighbours: no NaN rows
    interp.train()
    module.train()
    with torch.no_grad():
        interp(**inputs)
        module(**inputs)
    for key, value in interp.root.state_dict().items():
        torch.testing.assert_close(module.state_dict()[key], value, rtol=0, atol=0)
    assert int(module.state_dict()[bn[0].replace("running_mean", "num_batches_tracked")]) == 1


def test_optional_inputs_take_their_defaults() -> None:
    _, _, module = built_pair("bert.yaml", **BERT_SMALL)
    module.eval()
    ids = torch.randint(0, 99, (2, 7))
    with torch.no_grad():
        filled = module(input_ids=ids)
        given = module(input_ids=ids, attention_mask=torch.ones(2, 7, dtype=torch.long),
                       token_type_ids=torch.zeros(2, 7, dtype=torch.long))
    assert set(filled) == {"last_hidden_state", "pooler_output"}   # several outputs: a dict by name
    for k in filled:
        torch.testing.assert_close(filled[k], given[k], rtol=0, atol=0)


# ---- run-time checks ----
def test_free_dim_guard_and_input_checks_raise_clear_errors() -> None:
    m = nnspec.build(EXAMPLES / "gpt2.yaml", **GPT2_SMALL)
    with pytest.raises(ValueError, match=r"requirement T <= n_positions does not hold for T=33"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be int64\[B, T\], got torch.float32"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"got torch.int64 of shape \(4,\)"):
        m(torch.zeros(4, dtype=torch.long))
    vit = nnspec.build(EXAMPLES / "vit.yaml", **VIT_SMALL)
    with pytest.raises(ValueError, match="pixel_values axis num_channels must have size 3, got 4"):
        vit(torch.zeros(1, 4, 32, 32))


def test_export_with_dynamic_batch_and_sequence() -> None:
    m = nnspec.build(EXAMPLES / "gpt2.yaml", **GPT2_SMALL).eval()
    shapes = m.dynamic_shapes()
    assert shapes["input_ids"][1].max == GPT2_SMALL["n_positions"]      # the guard T <= n_positions
    shapes = {"input_ids": shapes["input_ids"]}     # the optional inputs (attention_mask, ...) left to defaults
    ep = torch.export.export(m, (), {"input_ids": torch.randint(0, 97, (2, 8))}, dynamic_shapes=shapes)
    for b, t in [(3, 5), (2, 32), (5, 17)]:
        ids = torch.randint(0, 97, (b, t))
        with torch.no_grad():
            torch.testing.assert_close(ep.module()(input_ids=ids), m(ids))


def test_runs_under_torch_compile_without_graph_breaks() -> None:
    m = nnspec.build(EXAMPLES / "gpt2.yaml", **GPT2_SMALL).eval()
    ids = torch.randint(0, 97, (2, 8))
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), m(ids))


@pytest.mark.slow
@pytest.mark.parametrize("example", ["gpt2.yaml", "llama.yaml", "vit.yaml"])
@settings(max_examples=1)
@given(data=st.data())
def test_runs_under_inductor(example: str, data: st.DataObject) -> None:
    result, _, m = built_pair(example, **EXAMPLE_DIMS[example])
    m.eval()
    inputs = data.draw(inputs_for(result), label="inputs")
    names = list(result.model.outputs)
    with torch.no_grad():
        want = as_dict(m(**inputs), names)
        got = as_dict(torch.compile(m, fullgraph=True)(**inputs), names)
    for name in names:
        torch.testing.assert_close(got[name], want[name])


# ---- the file ----
@pytest.mark.parametrize("name", list(GOLDENS))
def test_golden_files(name: str) -> None:
    example, dims = GOLDENS[name]
    got = compile_spec(EXAMPLES / example, **dims).source
    path = GOLDEN / f"{name}.py"
    if os.environ.get("NNSPEC_REGEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == got, f"{path} differs; NNSPEC_REGEN=1 rewrites it (then read the diff)"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_generated_files_are_formatted_and_lint_clean(tmp_path: Path) -> None:
    """The goldens and every example at every level: `ruff check` and `ruff format --check` find nothing."""
    files = [str(GOLDEN / f"{name}.py") for name in GOLDENS]
    for example, dims in EXAMPLE_DIMS.items():
        for opt in (0, 1, 2):
            path = tmp_path / f"{Path(example).stem}_o{opt}.py"
            path.write_text(compile_spec(EXAMPLES / example, opt=opt, **dims).source, encoding="utf-8")
            files.append(str(path))
    config = str(ROOT / "pyproject.toml")
    for args in (["check"], ["format", "--check"]):
        run = subprocess.run(["ruff", *args, "--config", config, *files], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_header_names_version_and_spec_hash_and_imports_only_torch() -> None:
    text = (EXAMPLES / "gpt2.yaml").read_text(encoding="utf-8")
    source = compile_spec(EXAMPLES / "gpt2.yaml").source
    head = source.splitlines()[:2]
    assert f"nnspec {nnspec.__version__}" in head[0] and "gpt2" in head[0]
    assert hashlib.sha256(text.encode()).hexdigest() in head[1]
    imports = {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for a in node.names}
    imports |= {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)}
    assert imports <= {"torch", "torch.nn.functional"}


def test_opt_levels_fuse_attention_at_o2() -> None:
    sources = {opt: compile_spec(EXAMPLES / "vit.yaml", opt=opt, **VIT_SMALL).source for opt in (0, 1, 2)}
    assert "-O2" in sources[2].splitlines()[0]
    assert "F.scaled_dot_product_attention" in sources[2] and "scaled_dot_product" not in sources[0]
    with pytest.raises(ValueError, match="opt must be one of 0, 1, 2"):
        compile_spec(EXAMPLES / "gpt2.yaml", opt=3)


@pytest.mark.parametrize("example", list(EXAMPLE_DIMS))
def test_state_dict_keys_are_the_spec_paths_at_every_level(example: str) -> None:
    """The same keys, in the same order, at -O0, -O1 and -O2: the spec's parameter paths and persistent buffers
    (the interpreter's state dict, built straight from the spec); derived tables and masks are not in it."""
    dims = EXAMPLE_DIMS[example]
    want = list(Interpreter(nnspec.check(EXAMPLES / example, **dims).model, device="meta").root.state_dict())
    for opt in (0, 1, 2):
        module = nnspec.build(EXAMPLES / example, opt=opt, **dims)
        assert list(module.state_dict()) == want, f"-O{opt}"
        buffers = {k for k, _ in module.named_buffers()} - set(module.state_dict())
        assert not buffers, f"-O{opt}: non-persistent buffers {buffers}"   # derived tables are computed in forward


def test_output_is_byte_identical_across_hash_seeds() -> None:
    script = ("import sys; from nnspec.generated import compile_spec; "
              "sys.stdout.write(''.join(compile_spec(p).source for p in sys.argv[1:]))")
    specs = [str(EXAMPLES / p) for p in ("gpt2.yaml", "small/window_attention.yaml")]
    runs = [subprocess.Popen([sys.executable, "-c", script, *specs], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed}) for seed in ("1", "2")]
    outs = [run.communicate()[0] for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert outs[0] == outs[1] and outs[0]


# ---- spec text and names ----
TINY = """\
nnspec: 1
name: tiny
doc: {doc}
dims: {{d: 4}}
options:
  note: {note}
inputs:
  {input}: float32[B, d]
outputs:
  y: float32[B, d]
body: |
  {body}
weights:
  hf:
    {path}.weight: {theirs}
    {path}.bias: x.bias
"""


def tiny(doc: str = "'a tiny spec'", note: str = "'n'", input: str = "x", body: str = "y = linear(x, d, name=fc)",
         path: str = "fc", theirs: str = "x.weight") -> str:
    return TINY.format(doc=doc, note=note, input=input, body=body, path=path, theirs=theirs)


HOSTILE = 'end """ quote \\" back\\\\slash {braces} \' \u2028 \x00 \u202e rtl'


def test_spec_text_is_escaped_never_spliced() -> None:
    import json
    text = tiny(doc=json.dumps('"""\nimport os\nos.system("echo pwned")\n"""' + HOSTILE),
                note=json.dumps(HOSTILE), theirs=json.dumps("a.weight\n\"); import os #"))
    module = load_source(compile_spec(text).source, "tiny_hostile")
    assert "os" not in vars(module)
    assert module.OPTIONS["note"] == HOSTILE
    assert module.WEIGHT_MAPS["hf"][0][1] == "a.weight\n\"); import os #"
    assert 'os.system("echo pwned")' in module.Tiny.__doc__


@pytest.mark.parametrize(("spec", "message"), [
    (tiny(body="y = linear(x, d, name=training)", path="training"), "'training' cannot be used"),
    (tiny(body="y = linear(x, d, name=forward)", path="forward"), "'forward' cannot be used"),
    (tiny(input="torch", body="y = linear(torch, d, name=fc)"), "input 'torch' cannot be used"),
    (tiny(input="self", body="y = linear(self, d, name=fc)"), "input 'self' cannot be used"),
    (tiny(input="ValueError", body="y = linear(ValueError, d, name=fc)"), "input 'ValueError' cannot be used"),
    (tiny(input="lambda", body="y = linear(lambda, d, name=fc)"), "'lambda' is a reserved word"),
    (tiny(body="y = linear(x, d, name=def)", path="def"), "'def' is a reserved word"),
    (tiny(body="y = linear(x, d, name=fc)").replace("name: tiny", "name: my-model"), "'my-model' is not an identifier"),
])
def test_names_that_would_shadow_are_refused(spec: str, message: str) -> None:
    with pytest.raises(nnspec.SpecError, match=message) as err:
        compile_spec(spec)
    assert err.value.code == "E004" and err.value.span is not None


def test_variables_named_like_builtins_are_renamed_not_shadowed() -> None:
    spec = tiny(body="len = relu(x)\n  y = linear(len, d, name=fc) + len")
    assert "len_ = F.relu(x)" in compile_spec(spec).source
    module = nnspec.build(spec)
    x = torch.randn(2, 4)
    want = Interpreter(nnspec.check(spec).model)
    module.load_state_dict(want.root.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(x), want(x=x)["y"])


# ---- the command ----
def test_compile_command_writes_every_file_or_none(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nnspec.cli import app

    def compile_cmd(*args: str) -> Any:
        return CliRunner().invoke(app, ["compile", *args])
    out = tmp_path / "out"
    run = compile_cmd(str(EXAMPLES / "gpt2.yaml"), "-o", str(out), "-O2", *[f"--set={k}={v}" for k, v in
                                                                          GPT2_SMALL.items()])
    assert run.exit_code == 0, run.output
    assert [p.name for p in out.iterdir()] == ["gpt2.py"]
    use = "import sys; sys.path.insert(0, sys.argv[1]); import gpt2, torch; print(gpt2.Gpt2()(torch.ones(1, 3, " \
          "dtype=torch.long)).shape)"
    run = subprocess.run([sys.executable, "-c", use, str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert run.stdout.strip() == "torch.Size([1, 3, 97])", run.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text(tiny(body="y = linear(x, 3, name=fc)"), encoding="utf-8")
    bad_dir = tmp_path / "bad"
    run = compile_cmd(str(EXAMPLES / "small" / "moe.yaml"), str(broken), "-o", str(bad_dir))
    assert run.exit_code == 1 and "E021" in run.output, run.output
    assert not bad_dir.exists()
    run = compile_cmd(str(EXAMPLES / "gpt2.yaml"), "-o", str(bad_dir), "--target", "jax")
    assert run.exit_code == 2 and "--target" in run.output and not bad_dir.exists()


def test_readme_property_test_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Generated PyTorch code"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python"))]
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    finally:
        os.chdir(cwd)


# ---- shape comments: on every statement that moves axes, and true at run time ----
MOVES_AXES = re.compile(r"\.(reshape|view|permute|transpose|movedim|flatten|unflatten)\(| @ |torch\.einsum\(")


def shape_comments(source: str) -> dict[int, tuple[int, str | None, list[str]]]:
    """First line of each statement in a `forward` with a `# (a, b, ...)` comment (trailing, or alone on the line
    above) -> (its last line, the variable it assigns or None for a return, the comment's axes)."""
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    out = {}
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef) or fn.name != "forward":
            continue
        for stmt in ast.walk(fn):
            if not isinstance(stmt, (ast.Assign, ast.Return)):
                continue
            above = stmt.lineno - 1
            text = comments.get(stmt.lineno) or (comments.get(above) if lines[above - 1].lstrip().startswith("#")
                                                 else None)
            m = re.fullmatch(r"#\s*\((.*)\)", text or "")
            target = stmt.targets[0].id if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name) \
                else None
            if m:
                out[stmt.lineno] = (stmt.end_lineno or stmt.lineno, target, [a.strip() for a in m.group(1).split(",")])
            elif MOVES_AXES.search(ast.get_source_segment(source, stmt) or ""):
                out[stmt.lineno] = (stmt.end_lineno or stmt.lineno, target, [])    # uncommented: reported below
    return out


def observe(module: Any, inputs: dict[str, Any], filename: str, stmts: dict[int, tuple[int, str | None, list[str]]]
            ) -> dict[int, list[tuple[int, ...]]]:
    """Run the module and record, for each statement in `stmts`, the shapes of the values it produced."""
    seen: dict[int, list[tuple[int, ...]]] = {}

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != filename:
            return None
        pending: list[int] = []

        def local(frame: Any, event: str, arg: Any) -> Any:
            line = frame.f_lineno
            if pending and (event == "return" or not pending[0] <= line <= stmts[pending[0]][0]):
                first = pending.pop()
                _, target, _ = stmts[first]
                value = frame.f_locals.get(target) if target else arg if event == "return" else None
                if isinstance(value, torch.Tensor):
                    seen.setdefault(first, []).append(tuple(value.shape))
            if event == "line" and line in stmts and not pending:
                pending.append(line)
            return local
        return local(frame, event, arg)

    sys.settrace(tracer)
    try:
        with torch.no_grad():
            module(**inputs)
    finally:
        sys.settrace(None)
    return seen


@pytest.mark.parametrize("opt", [0, 2])
@pytest.mark.parametrize("example", list(EXAMPLE_DIMS))
def test_every_reshape_has_a_true_shape_comment(example: str, opt: int) -> None:
    """Each statement in a forward that reshapes, permutes or contracts says the shape it makes (nanoGPT's
    `# (B, nh, T, hs)`), and running the module shows that shape: its rank, and the size of every axis named
    by dims (sizes from the spec's dims and the inputs' free dims; relabelled axes like S are not checked)."""
    result, _, module = cached_pair(example, opt)
    filename = sys.modules[type(module).__module__].__file__
    source = "".join(linecache.getlines(filename))
    stmts = shape_comments(source)
    missing = [source.splitlines()[line - 1].strip() for line, (_, _, axes) in stmts.items() if not axes]
    assert not missing, f"statements that move axes without a shape comment: {missing}"
    model = result.model
    inputs = _distinct_sizes(result)
    sizes = {sympy.Symbol(s.name): v for s, v in model.dims.values.items()} | _free_sizes(model, inputs)
    seen = observe(module, inputs, filename, stmts)
    assert seen, "no commented statement ran"
    for line, shapes in seen.items():
        axes = stmts[line][2]
        for shape in shapes:
            assert len(shape) == len(axes), f"line {line}: {axes} but the value has shape {shape}"
            for axis, n in zip(axes, shape, strict=True):
                names = {n: sympy.Symbol(n) for n in re.findall(r"[A-Za-z_]\w*", axis)}
                size = sympy.parse_expr(axis, local_dict=names)
                if size.free_symbols <= set(sizes):
                    assert int(size.xreplace(sizes)) == n, f"line {line}: axis {axis} is {n}, not {size}"


def _free_sizes(model: Any, inputs: dict[str, Any]) -> dict[Any, int]:
    out = {}
    for name, node in model.inputs.items():
        for axis, n in zip(model.graph[node].tensor_type.axes, inputs[name].shape, strict=True):
            if isinstance(axis.size, sympy.Symbol) and axis.size not in model.dims.values:
                out[sympy.Symbol(axis.size.name)] = n
    return out


def _distinct_sizes(result: Any) -> dict[str, Any]:
    """Inputs whose free dims all differ where the guards allow it (so that no axis passes for another), else any."""
    import itertools

    from hypothesis import find

    from nnspec.testing.inputs import _free_dims, _guards_hold
    free = _free_dims(result.model)
    taken = {int(v) for v in result.model.dims.values.values()}     # not the size of any dim either
    sizes = [n for n in range(3, 64) if n not in taken][:8]
    candidates = itertools.chain(itertools.permutations(sizes, len(free)),
                                 itertools.product(range(2, 13), repeat=len(free)))
    bound = next(b for c in candidates if _guards_hold(result.model, b := dict(zip(free, c, strict=True))))
    return find(inputs_for(result, **bound), lambda _: True)
