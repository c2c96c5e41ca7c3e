"""A deterministic text form of the IR, for goldens, `--emit ir` and reading."""

from __future__ import annotations

from typing import Any

from nnspec.compiler.ir import Axis, DType, Graph, Model, Node, TensorType, Type

_SHOWN_AS_TYPE = {"type", "params", "result"}


def _attr(value: Any) -> str:
    if isinstance(value, Axis):
        return value.name if value.name in (str(value.size), value.size_str()) else f"{value.name}={value.size}"
    if isinstance(value, TensorType):
        return str(value)
    if isinstance(value, DType):
        return value.value
    if isinstance(value, tuple):
        return "(" + ", ".join(_attr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _type(t: Type) -> str:
    if isinstance(t, tuple):
        return "(" + ", ".join(str(x) for x in t) + ")"
    return str(t)


def print_node(node: Node) -> str:
    attrs = ", ".join(f"{k}={_attr(v)}" for k, v in node.attrs.items() if k not in _SHOWN_AS_TYPE)
    args = ", ".join(f"%{i}" for i in node.inputs)
    head = f"{node.op}[{attrs}]" if attrs else node.op
    return f"%{node.name} = {head}({args}) : {_type(node.type)}"


def print_graph(graph: Graph, kind: str = "block") -> str:
    params = ", ".join(f"%{i}: {graph[i].type}" for i in graph.inputs)
    lines = [f"{kind} {graph.name}({params}) -> {_type(graph.output_type()) if graph.outputs else '()'} {{"]
    for node in graph:
        if node.name not in graph.inputs:   # the signature lists them
            lines.append("  " + print_node(node))
    lines.append("  return " + ", ".join(f"%{o}" for o in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


def print_model(model: Model) -> str:
    sizes = model.dims
    dims = ", ".join(f"{s}={v}" for s, v in sorted(sizes.values.items(), key=lambda kv: str(kv[0])))
    out = [f"# nnspec IR for {model.name}", f"# dims: {dims}"]
    if model.options:
        out.append("# options: " + ", ".join(f"{k}={v!r}" for k, v in model.options.items()))
    for g in model.guards:
        out.append(f"# guard: {g.text}")
    for t in model.templates.values():
        out.append(print_graph(t, "block"))
    out.append(print_graph(model.graph, "model"))
    return "\n".join(out) + "\n"
