"""Properties of every spec `nnspec.testing.specs()` draws (valid by construction):

- `nnspec.check` accepts it;
- the reference interpreter gives every output, and every node of every graph (block templates included),
  exactly the shape and dtype check inferred, for random bindings of the free dims;
- the meta device computes the same output shapes as the CPU;
- check's parameter count (and parameter list) is what the interpreter allocates.

`op_chains()` below draws what `specs()` does not reach (convolution, pooling, batchnorm, cumsum, sort, top-k,
slices, concatenation of different lengths, with random kernels, strides and padding over free spatial axes), with
the same properties.

Run with `--hypothesis-show-statistics` to see which ops the drawn specs reached.
"""

from __future__ import annotations

from typing import Any

import pytest
import sympy
from hypothesis import event, given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import nnspec  # noqa: E402
from nnspec.backends.torch.dtypes import TORCH_DTYPES  # noqa: E402
from nnspec.backends.torch.frame import Frame  # noqa: E402
from nnspec.backends.torch.interpreter import Interpreter  # noqa: E402
from nnspec.backends.torch.ops import LOWERINGS  # noqa: E402
from nnspec.compiler.analysis import Analysis  # noqa: E402
from nnspec.compiler.ir import Graph, Model, Node, TensorType  # noqa: E402
from nnspec.testing import inputs_for, specs  # noqa: E402

# nnspec bugs the generator steps around until they are fixed; each has a strict xfail test at the end.
KNOWN_BUGS: frozenset[str] = frozenset()
SPECS = specs(avoid=KNOWN_BUGS)

Sizes = dict[sympy.Symbol, sympy.Integer]


def expected_shape(t: TensorType, sizes: Sizes) -> tuple[int, ...]:
    """A type's concrete shape once the free dims are bound."""
    return tuple(int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes)


def describe(t: Any, x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"{tuple(x.shape)} {x.dtype}"
    return f"{type(x).__name__} of {len(x)}" if isinstance(x, tuple) else repr(x)


def draw_model(data: st.DataObject) -> tuple[str, Model, dict[str, torch.Tensor]]:
    """A drawn spec, its checked model and inputs for it."""
    text = data.draw(SPECS, label="spec")
    result = nnspec.check(text)
    return text, result.model, data.draw(inputs_for(result), label="inputs")


class CheckingInterpreter(Interpreter):
    """The reference interpreter, comparing each node's value with its inferred type as it runs."""

    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self.graphs_run: set[str] = set()
        self.mismatches: list[str] = []

    def run_graph(self, graph: Graph, module: torch.nn.Module, args: list[Any], sizes: Sizes) -> list[Any]:
        self.graphs_run.add(graph.name)
        frame = Frame(self, graph, module, args, sizes, self.device)
        env: dict[str, Any] = {}
        for node in graph:
            env[node.name] = LOWERINGS[node.op](frame, node, [env[i] for i in node.inputs])
            self.compare(graph, node, env[node.name], sizes)
        return [env[o] for o in graph.outputs]

    def compare(self, graph: Graph, node: Node, value: Any, sizes: Sizes) -> None:
        types = node.type if isinstance(node.type, tuple) else (node.type,)
        values = value if isinstance(node.type, tuple) else (value,)
        ok = isinstance(values, tuple) and len(values) == len(types) and all(
            isinstance(x, torch.Tensor) and tuple(x.shape) == expected_shape(t, sizes)
            and x.dtype == TORCH_DTYPES[t.dtype] for t, x in zip(types, values, strict=False))
        if not ok:
            want = ", ".join(f"{t} = {expected_shape(t, sizes)}" for t in types)
            self.mismatches.append(f"{graph.name}.{node.name} ({node.op}): inferred {want}, "
                                   f"computed {describe(node.type, value)}")


def run(interp: Interpreter, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return interp.eval()(**inputs)


@given(SPECS)
def test_drawn_specs_are_accepted(text: str) -> None:
    result = nnspec.check(text)
    for op in sorted({node.op for graph in result.model.graphs() for node in graph}):
        event(f"op {op}")


@given(st.data())
def test_outputs_have_their_inferred_shapes(data: st.DataObject) -> None:
    _, model, inputs = draw_model(data)
    interp = Interpreter(model)
    sizes = interp.bind_sizes(inputs)
    outputs = run(interp, inputs)
    assert set(outputs) == set(model.outputs)
    for name, node in model.outputs.items():
        t = model.graph[node].tensor_type
        got = outputs[name]
        assert tuple(got.shape) == expected_shape(t, sizes), f"output {name}: {t}"
        assert got.dtype == TORCH_DTYPES[t.dtype], f"output {name}: {t}"


@given(st.data())
def test_every_node_has_its_inferred_shape(data: st.DataObject) -> None:
    _, model, inputs = draw_model(data)
    interp = CheckingInterpreter(model)
    run(interp, inputs)
    assert not interp.mismatches, "\n".join(interp.mismatches)
    assert interp.graphs_run == {g.name for g in model.graphs()}, "some block template never ran"


@given(st.data())
def test_meta_device_agrees_with_cpu(data: st.DataObject) -> None:
    _, model, inputs = draw_model(data)
    cpu = run(Interpreter(model), inputs)
    meta = run(Interpreter(model, device="meta"), {k: v.to("meta") for k, v in inputs.items()})
    assert {k: (v.shape, v.dtype) for k, v in meta.items()} == {k: (v.shape, v.dtype) for k, v in cpu.items()}
    assert all(v.device.type == "meta" for v in meta.values())


@given(st.data())
def test_binding_free_dims_at_check_time_agrees_with_the_run(data: st.DataObject) -> None:
    text, model, inputs = draw_model(data)
    interp = Interpreter(model)
    outputs = run(interp, inputs)
    sizes = interp.bind_sizes(inputs)
    bound = {name: int(sizes[sym]) for name, sym in model.dims.free.items()}
    rechecked = nnspec.check(text, **bound)
    assert rechecked.free_dims == []
    assert rechecked.params == nnspec.check(text).params
    for name, node in rechecked.model.outputs.items():
        t = rechecked.model.graph[node].tensor_type
        assert tuple(int(rechecked.model.dims.concrete(s)) for s in t.sizes) == tuple(outputs[name].shape), name


@given(SPECS)
def test_parameter_count_matches_the_interpreter(text: str) -> None:
    result = nnspec.check(text)
    interp = Interpreter(result.model)
    assert result.params == sum(p.numel() for p in interp.parameters())
    listed = {p.path: expected_shape(p.type, result.model.dims.values) for p in Analysis(result.model).parameters()}
    built = {path: tuple(p.shape) for path, p in interp.named_spec_parameters().items()}
    assert listed == built


# ---- nnspec bugs the generator found (minimal specs) ----
BARE_ALIAS = """\
nnspec: 1
name: alias
inputs:
  x: float32[B, T]
outputs:
  y: float32[B, T]
  z: float32[B, T]
body: |
  h = relu(x)
  h = relu(h)
  y = h
  z = sigmoid(h)
"""

TUPLE_REUSE = """\
nnspec: 1
name: tuple_reuse
dims:
  d: 6
  c: 2
inputs:
  x: float32[B, d]
outputs:
  y: float32[B, c]
body: |
  t = split(x[B, (3 c)], over=3)
  q, k, v = t
  a, b, e = t
  y = q + a
"""


def test_binding_a_second_name_keeps_the_first() -> None:
    """Was a bug: `y = h` renamed h's still-unnamed node (relu_1) to y; the later use of h raised KeyError."""
    model = nnspec.check(BARE_ALIAS).model
    z = model.graph[model.outputs["z"]]
    assert z.op == "sigmoid"
    assert z.inputs == [model.outputs["y"]]


def test_unpacking_a_tuple_twice() -> None:
    model = nnspec.check(TUPLE_REUSE).model
    y = model.graph[model.outputs["y"]]
    assert y.op == "add"
    assert y.inputs[0] == y.inputs[1]  # q and a are the same member of t


# ---- random chains of the spatial and indexing ops --------------------------------------------------------
# `nnspec.testing.specs()` draws transformer-shaped specs; this draws what it does not reach: convolutions and
# pooling with random kernels, strides and padding, batchnorm, cumsum, sort, top-k, slices and concatenation of
# different lengths, over free spatial axes (so output sizes are floor formulas and the windows' fit is a guard).
BIGGEST = 12   # the largest free size drawn; each step is drawn so that every guard holds there


@st.composite
def op_chains(draw: st.DrawFn) -> str:
    """A spec `x[B, c0, spatial...] -> y[B, channels]`: 1-5 random steps, then a mean over each spatial axis."""
    first = draw(st.sampled_from([["L"], ["H", "W"]]))
    spatial = [(name, BIGGEST) for name in first]   # (axis, its size when the free dims are BIGGEST)
    dims = {"c0": draw(st.integers(1, 4))}
    ch, h, lines = "c0", "x", []

    def tup(items: list[Any]) -> str:
        return str(items[0]) if len(items) == 1 else "(" + ", ".join(map(str, items)) + ")"

    for i in range(1, draw(st.integers(1, 5)) + 1):
        kind = draw(st.sampled_from(["conv", "pool", "batchnorm", "cumsum", "sort", "topk", "slice", "concat", "act"]))
        new = f"h{i}"
        names = [a for a, _ in spatial]
        if kind in ("conv", "pool"):
            k = [draw(st.integers(1, min(3, n))) for _, n in spatial]
            stride = [draw(st.integers(1, 2)) for _ in spatial]
            pad = [draw(st.integers(0, kk // 2 if kind == "pool" else kk - 1)) for kk in k]
            into = [f"{a}{i}" for a in names]
            args = f"{tup(k)}, stride={tup(stride)}, padding={tup(pad)}, over={tup(names)}, into={tup(into)}"
            if kind == "conv":
                dims[f"c{i}"] = draw(st.integers(1, 4))
                bias = draw(st.sampled_from(["", ", bias=false"]))
                lines.append(f"{new} = conv({h}, c{i}, {args}, channel={ch}{bias}, name=conv{i})")
                ch = f"c{i}"
            else:
                lines.append(f"{new} = {draw(st.sampled_from(['max', 'avg']))}pool({h}, {args})")
            spatial = [(a, (n + 2 * p - kk) // sd + 1)
                       for a, (_, n), kk, sd, p in zip(into, spatial, k, stride, pad, strict=True)]
        elif kind == "batchnorm":
            lines.append(f"{new} = batchnorm({h}, over={ch}, name=bn{i})")
        elif kind == "cumsum":
            lines.append(f"{new} = cumsum({h}, over={draw(st.sampled_from(names))})")
        elif kind == "sort":
            order = draw(st.sampled_from(["true", "false"]))
            lines.append(f"{new}, order{i} = sort({h}, over={ch}, descending={order})")
        elif kind == "topk":
            dims[f"t{i}"] = draw(st.integers(1, dims[ch]))
            lines.append(f"{new}, idx{i} = topk({h}, t{i}, over={ch}, into=t{i})")
            ch = f"t{i}"
        elif kind in ("slice", "concat"):
            j = draw(st.integers(0, len(spatial) - 1))
            a, n = spatial[j]
            start = draw(st.integers(0, n - 1))
            step = draw(st.integers(1, 2))
            stop = draw(st.integers(start + 1, n))
            part = f"slice({h}, over={a}, start={start}, stop={stop}, step={step}, into={a}_{i})"
            length = -(-(stop - start) // step)
            if kind == "slice":
                lines.append(f"{new} = {part}")
                spatial[j] = (f"{a}_{i}", length)
            else:   # the axis and a slice of it have different lengths, so different names: over= names both
                lines.append(f"{new} = concat({h}, {part}, over=({a}, {a}_{i}), into={a}{i})")
                spatial[j] = (f"{a}{i}", n + length)
        else:
            lines.append(f"{new} = {draw(st.sampled_from(['relu', 'gelu', 'tanh', 'sigmoid']))}({h})")
        h = new
    for a, _ in spatial:   # down to [B, channels]: a type the outputs can declare
        lines.append(f"{h}m = mean({h}, over={a})")
        h += "m"
    lines.append(f"y = {h}")
    dim_text = ", ".join(f"{k}: {v}" for k, v in dims.items())
    body = "".join(f"  {line}\n" for line in lines)
    return (f"nnspec: 1\nname: chain\ndims: {{{dim_text}}}\ninputs:\n  x: float32[B, c0, {', '.join(first)}]\n"
            f"outputs:\n  y: float32[B, {ch}]\nbody: |\n{body}")


@given(st.data())
def test_op_chains_have_their_inferred_shapes_on_cpu_and_meta(data: st.DataObject) -> None:
    text = data.draw(op_chains(), label="spec")
    result = nnspec.check(text)
    for op in sorted({node.op for node in result.model.graph}):
        event(f"op {op}")
    spatial = {d: data.draw(st.integers(2, BIGGEST), label=d) for d in result.free_dims if d != "B"}
    try:   # checking with the sizes bound decides every guard (and window fit) now
        bound = nnspec.check(text, **spatial)
    except nnspec.SpecError:
        spatial = dict.fromkeys(spatial, BIGGEST)   # where the chain was drawn to fit
        bound = nnspec.check(text, **spatial)
    inputs = data.draw(inputs_for(result, **spatial), label="inputs")
    interp = CheckingInterpreter(result.model)
    out = run(interp, inputs)
    assert not interp.mismatches, "\n".join(interp.mismatches)
    assert result.params == sum(p.numel() for p in interp.parameters())
    y = bound.model.graph[bound.model.outputs["y"]].tensor_type
    assert tuple(out["y"].shape[1:]) == tuple(int(bound.model.dims.concrete(s)) for s in y.sizes[1:])
    meta = run(Interpreter(result.model, device="meta"), {k: v.to("meta") for k, v in inputs.items()})
    assert meta["y"].shape == out["y"].shape and meta["y"].device.type == "meta"
