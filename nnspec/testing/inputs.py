"""`inputs_for`: input tensors for a checked model, drawn so that its run-time guards hold and every index is in
range."""

from __future__ import annotations

import os
from typing import Any

import sympy
from hypothesis import strategies as st

from nnspec.compiler.ops.registry import with_trait
from nnspec.testing.writer import Draw


def inputs_for(result_or_model: Any, *, min_size: int = 2, max_size: int = 5, device: str = "cpu",
               **free_dims: int) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts of input tensors, by spec name, for a spec (a path or YAML text), a checked model (`CheckResult` or
    `ir.Model`) or a module made by `nnspec.build`.

    Free dims are drawn from [min_size, max_size] unless given by keyword, and only bindings for which
    the model's run-time guards hold are drawn. Floats are standard normal; an integer input that feeds
    an embedding (directly, or through block calls and repeats) is drawn below the smallest table it
    indexes, any other from [0, 2); bool inputs are fair coins.
    """
    if isinstance(result_or_model, (str, os.PathLike)):
        import nnspec

        result_or_model = nnspec.check(result_or_model)
    model = getattr(result_or_model, "spec_model", None) or getattr(result_or_model, "model", result_or_model)
    free = _free_dims(model)
    unknown = set(free_dims) - set(free)
    if unknown:
        raise ValueError(f"{sorted(unknown)} are not free dims of {model.name} (its free dims: {free})")
    sizes = st.fixed_dictionaries({
        name: st.just(free_dims[name]) if name in free_dims else st.integers(min_size, max_size) for name in free
    }).filter(lambda bound: _guards_hold(model, bound))
    bounds = _index_bounds(model)

    @st.composite
    def draw_inputs(draw: Draw) -> dict[str, Any]:
        bound = draw(sizes, label="free dims")
        seed = draw(st.integers(0, 2**31 - 1), label="seed")
        return _make_inputs(model, bound, bounds, seed, device)

    return draw_inputs()


def _free_dims(model: Any) -> list[str]:
    return sorted(name for name, sym in model.dims.free.items() if sym not in model.dims.values)


def _bindings(model: Any, bound: dict[str, int]) -> dict[Any, Any]:
    sizes = dict(model.dims.values)
    sizes.update({model.dims.free[name]: sympy.Integer(v) for name, v in bound.items()})
    return sizes


def _guards_hold(model: Any, bound: dict[str, int]) -> bool:
    sizes = _bindings(model, bound)
    return all(sympy.sympify(g.expr).xreplace(sizes) is sympy.true for g in model.guards)


def _index_bounds(model: Any) -> dict[str, int]:
    """For each integer input that feeds embeddings: the fewest rows among the tables it indexes."""
    bounds: dict[str, int] = {}
    views = with_trait("view")   # ops that pass index values on unchanged

    def visit(graph: Any, sources: dict[str, str], seen: set[tuple[str, tuple[tuple[str, str], ...]]]) -> None:
        key = (graph.name, tuple(sorted(sources.items())))
        if key in seen:
            return
        seen.add(key)
        for node in graph:
            origin = [sources.get(i) for i in node.inputs]
            if node.op == "embedding" and origin[0] is not None:
                rows = int(model.dims.concrete(graph[node.inputs[1]].type.sizes[0]))
                bounds[origin[0]] = min(rows, bounds.get(origin[0], rows))
            elif node.op in views and origin and origin[0] is not None:
                sources[node.name] = origin[0]
            elif node.op == "call" or node.op == "repeat":   # a block applied to these very tensors
                template = model.templates[node.attrs["block"]]
                inner = {p: o for p, o in zip(template.inputs, origin, strict=True) if o is not None}
                if inner:
                    visit(template, inner, seen)

    visit(model.graph, {node: name for name, node in model.inputs.items()}, set())
    return bounds


def _make_inputs(model: Any, bound: dict[str, int], bounds: dict[str, int], seed: int, device: str
                 ) -> dict[str, Any]:
    import torch

    from nnspec.backends.torch.dtypes import TORCH_DTYPES

    sizes = _bindings(model, bound)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for name, node in model.inputs.items():
        t = model.graph[node].type
        shape = [int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes]
        dtype = TORCH_DTYPES[t.dtype]
        if dtype.is_floating_point:
            x = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            x = torch.rand(shape, generator=gen) < 0.5
        else:
            x = torch.randint(0, bounds.get(name, 2), shape, generator=gen, dtype=dtype)
        out[name] = x.to(device)
    return out
