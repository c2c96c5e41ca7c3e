"""How a checked model shows itself in a notebook (`CheckResult._repr_html_` / `_repr_svg_`): the table `nnspec
check` prints, as HTML, and the block graph as SVG (graphviz's `dot` when installed, else the neural circuit
diagram, which needs no external program). Every text from the spec is HTML-escaped."""

from __future__ import annotations

from html import escape
from typing import Any

from nnspec.compiler.diagrams.circuit import circuit_svg
from nnspec.compiler.diagrams.dot import block_graph
from nnspec.compiler.diagrams.raster import ToolMissing, dot_to_svg

MAX_ROWS = 200   # a 100-layer model's table stays readable; the rest is counted


def graph_svg(result: Any) -> str:
    """The block graph of `result` (a `CheckResult`: check.py calls this module, so it is not imported) as SVG."""
    try:
        return dot_to_svg(block_graph(result.model))
    except (ToolMissing, RuntimeError):
        return circuit_svg(result.model)


def summary_html(result: Any, *, with_graph: bool = True) -> str:
    model = result.model
    cells = "".join(f"<th style='text-align:{a}'>{h}</th>" for h, a in (
        ("name", "left"), ("block / op", "left"), ("shape", "left"), ("concrete", "left"), ("params", "right"),
        ("FLOPs", "right")))
    rows = []
    for r in result.rows[:MAX_ROWS]:
        rows.append("<tr>" + "".join(f"<td style='text-align:left'>{escape(str(v))}</td>"
                                     for v in (r.name, r.kind, r.shape, r.concrete))
                    + f"<td style='text-align:right'>{r.params:,}</td>"
                    + f"<td style='text-align:right'>{escape(str(r.flops))}</td></tr>")
    if len(result.rows) > MAX_ROWS:
        rows.append(f"<tr><td colspan='6'>... {len(result.rows) - MAX_ROWS} more rows</td></tr>")
    rows.append(f"<tr><th style='text-align:left'>total</th><td></td><td></td><td></td>"
                f"<th style='text-align:right'>{result.params:,}</th>"
                f"<th style='text-align:right'>{escape(str(result.flops))}</th></tr>")
    ins = ", ".join(f"{k}: {model.graph[v].type}" for k, v in model.inputs.items())
    outs = ", ".join(f"{k}: {model.graph[v].type}" for k, v in model.outputs.items())
    facts = [f"inputs {ins}", f"outputs {outs}", f"params {result.params:,}"]
    if result.free_dims:
        facts.append(f"free {', '.join(result.free_dims)}")
    facts += [f"guard {g.text}" for g in model.guards]
    parts = [f"<div class='nnspec-check'><b>{escape(model.name)}</b> ({escape(result.spec.source.name)})",
             f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>",
             "<pre>" + escape("\n".join(facts)) + "</pre>"]
    if with_graph:
        svg = graph_svg(result)
        svg = svg[svg.find("<svg"):]   # inline in HTML: without the XML prolog and DOCTYPE
        parts.append(f"<details><summary>block graph</summary>{svg}</details>")
    return "".join(parts) + "</div>"
