"""Properties of generated code on every spec `nnspec.testing.specs()` draws:

- the file `nnspec compile` writes (imported from disk), the in-memory `nnspec.build` and the reference
  interpreter compute the same outputs from the same weights, in eval mode and (same seed) in train mode;
  the `-O2` build computes them too (eval mode);
- exported with `torch.export` (free dims as dynamic `Dim`s), the module's outputs have the shapes check
  inferred, for random bindings of the free dims (sizes >= 2, and every size derived from them too, so that
  export does not specialise; the example inputs export traces with are >= 4).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import sympy
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.backends.torch import Interpreter  # noqa: E402
from nnspec.generated import compile_spec, write_outputs  # noqa: E402
from nnspec.testing import inputs_for, specs  # noqa: E402

SPECS = specs()


def import_file(path: Path, class_name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_nnspec_prop_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)()


def outputs(result: Any, out: Any) -> dict[str, Any]:
    return out if isinstance(out, dict) else {next(iter(result.model.outputs)): out}


@given(data=st.data())
def test_written_file_build_and_interpreter_agree(data: st.DataObject) -> None:
    text = data.draw(SPECS, label="spec")
    result = nnspec.check(text)
    interp = Interpreter(result.model)
    compiled = compile_spec(text)
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = write_outputs([compiled], tmp)
        from_file = import_file(path, compiled.class_name)
    built = nnspec.build(text)
    optimised = nnspec.build(text, opt=2)
    state = interp.root.state_dict()
    for m in (from_file, built):
        m.load_state_dict(state)
    inputs = data.draw(inputs_for(result), label="inputs")
    with torch.no_grad():
        for mode in ("eval", "train"):
            results = []
            for m in (interp, from_file, built):
                getattr(m, mode)()
                torch.manual_seed(11)
                results.append(outputs(result, m(**inputs)))
            want, *got = results
            for name in want:
                for g in got:
                    torch.testing.assert_close(g[name], want[name], equal_nan=True)
        optimised.load_state_dict(state)
        got = outputs(result, optimised.eval()(**inputs))
        for name, value in interp.eval()(**inputs).items():
            torch.testing.assert_close(got[name], value, equal_nan=True)


@settings(max_examples=6)   # an export takes about a second
@given(data=st.data())
def test_exported_output_shapes_are_the_inferred_shapes(data: st.DataObject) -> None:
    text = data.draw(SPECS, label="spec")
    result = nnspec.check(text)
    model = result.model
    module = nnspec.build(text).eval()
    # traced at sizes from 4 up, so that sizes a spec derives (T split as (2 c)) are 2 or more too
    example = data.draw(inputs_for(result, min_size=4, max_size=8), label="example inputs")
    exported = torch.export.export(module, (), example, dynamic_shapes=module.dynamic_shapes()).module()
    inputs = data.draw(inputs_for(result, min_size=2, max_size=8), label="inputs")
    sizes = dict(model.dims.values)
    for name, node in model.inputs.items():
        for axis, n in zip(model.graph[node].tensor_type.axes, inputs[name].shape, strict=True):
            if axis.size in model.dims.free.values():
                sizes[axis.size] = sympy.Integer(n)
    # every size >= 2, derived ones too: T split as (k c) needs T >= 2k (c = 1 would be specialised by export)
    for g in model.guards:
        e = sympy.sympify(g.expr)
        if isinstance(e, sympy.Eq) and e.rhs == 0 and isinstance(e.lhs, sympy.Mod) and e.lhs.args[0] in sizes:
            assume(sizes[e.lhs.args[0]] >= 2 * e.lhs.args[1])
    with torch.no_grad():
        got = outputs(result, exported(**inputs))
    for name, node in model.outputs.items():
        want = tuple(int(sympy.sympify(s).xreplace(sizes)) for s in model.graph[node].tensor_type.sizes)
        assert tuple(got[name].shape) == want, (name, sys.argv)
