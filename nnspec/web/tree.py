"""A checked model as the nested, JSON-able tree the HTML view and the playground draw.

Each item is one thing a reader looks at: an input, an op, a block call or a repeat (with its body's items as
`children`, so the page can collapse and expand it in place), or an output. Sources that are facts of the op
reading them (parameters, buffers, scalar constants) are not items: their counts and values sit on that op.
Items are named by the spec's variable (`node.meta["var"]`) where the statement bound one, else by the
parameter scope or node name, and `inputs` lists the ids of the items whose values an item reads, so the page
can draw the edges. Nothing here imports torch or runs any code from the spec.
"""

from __future__ import annotations

from typing import Any

import sympy

from nnspec.compiler.analysis import Analysis
from nnspec.compiler.diagrams.view import Const, drawn_in_place, named_shape, shown_name
from nnspec.compiler.ir import Graph, Model, Node, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.sizes import expand


def model_tree(model: Model) -> list[dict[str, Any]]:
    """The model body's items, in order; calls and repeats carry their block's items as `children`."""
    return _Builder(model).graph(model.graph)


def flops_text(expr: sympy.Expr) -> str:
    """FLOPs as a reader wants them: a number when every dim is known, else the polynomial in the free dims."""
    expr = expand(expr)    # bounded: a huge polynomial stays factored (nnspec.compiler.sizes)
    if expr.is_Number:
        return f"{float(expr):.4g}" if abs(float(expr)) >= 1e5 else str(int(expr)) if expr.is_Integer else str(expr)
    return str(expr).replace("**", "^")


class _Builder:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.an = Analysis(model)
        self.counted: set[str] = set()   # parameter paths counted already: a second reader is tied, not counted

    def graph(self, graph: Graph) -> list[dict[str, Any]]:
        env: dict[str, Any] = {}
        items: list[dict[str, Any]] = []
        for name in graph.inputs:
            node = graph[name]
            shown = node.attrs.get("name", name)
            items.append(self._item(f"in.{name}", shown, "input", node, graph, []))
            env[name] = f"in.{name}"
        self.body(graph, env, "", items)
        outs = self.model.outputs.items() if graph is self.model.graph else \
            [("out", o) for o in graph.outputs]
        for shown, node_name in outs:
            src = env.get(node_name)
            ids = src if isinstance(src, list) else [src]
            items.append({"id": f"out.{shown}", "label": shown, "kind": "output", "op": "output", "family": "io",
                          "shape": _shape(graph[node_name]), "dtype": _dtype(graph[node_name]),
                          "params": 0, "flops": "0", "inputs": [i for i in ids if isinstance(i, str)]})
        return items

    def body(self, graph: Graph, env: dict[str, Any], prefix: str, items: list[dict[str, Any]]) -> None:
        for node in graph:
            if node.op == "input":
                continue
            if OPS[node.op].has("state"):
                env[node.name] = ("param", prefix + node.attrs["path"], node)
            elif node.op == "const":
                env[node.name] = Const(node.attrs["value"])
            elif node.op == "getitem":
                src = env[node.inputs[0]]
                env[node.name] = src[node.attrs["index"]] if isinstance(src, list) else src
            elif drawn_in_place(node):
                env[node.name] = self.block(graph, node, env, prefix, items)
            else:
                env[node.name] = self.op(graph, node, env, prefix, items)

    def block(self, graph: Graph, node: Node, env: dict[str, Any], prefix: str,
              items: list[dict[str, Any]]) -> Any:
        scope = node.attrs["scope"]
        template = self.model.templates[node.attrs["block"]]
        block_name = str(template.meta.get("block", node.attrs["block"]))
        bid = f"{prefix}{scope}/"      # a block's id ends in `/`, so a scope never clashes with an op named like it
        item = self._item(bid, scope, node.op, node, graph, self._reads(node, env))   # kind: call or repeat
        item.update(block=block_name, params=self.an.node_params(node), children=[])
        if node.op == "repeat":
            item["count"] = node.attrs["count"]
            item["shared"] = bool(node.attrs["shared"])
        inner = {t: env[i] for t, i in zip(template.inputs, node.inputs, strict=True)}
        for t in template.inputs:   # the block's inputs, named as its signature names them, reading the outer values
            t_node = template[t]
            shown = t_node.attrs.get("name", t)
            child = self._item(f"{bid}in.{t}", shown, "input", t_node, template,
                               [inner[t]] if isinstance(inner[t], str) else [])
            item["children"].append(child)
            inner[t] = child["id"]
        self.body(template, inner, bid, item["children"])
        items.append(item)
        if node.op == "repeat":   # the loop-back: each iteration's result feeds the next one's first input
            last = inner[template.outputs[0]]
            item["loop"] = [last, item["children"][0]["id"]] if isinstance(last, str) else []
        if isinstance(node.type, tuple):
            return [item["id"]] * len(node.type)
        return item["id"]

    def op(self, graph: Graph, node: Node, env: dict[str, Any], prefix: str, items: list[dict[str, Any]]) -> str:
        label = shown_name(node, self._scope(node, env))
        item = self._item(prefix + node.name, label, "op", node, graph, self._reads(node, env))
        params, tied = 0, []
        for i in node.inputs:
            src = env[i]
            if isinstance(src, tuple) and src[2].op == "param":
                if src[1] in self.counted:
                    tied.append(src[1])
                else:
                    self.counted.add(src[1])
                    params += self.an.node_params(src[2])
        item["params"] = params
        if tied:
            item["tied"] = tied
        consts = [str(env[i]) for i in node.inputs if isinstance(env[i], Const)]
        if consts:
            item["consts"] = consts
        items.append(item)
        return item["id"]

    def _scope(self, node: Node, env: dict[str, Any]) -> str:
        """A parameterised op's parameter scope (`c_attn` of `c_attn.weight`), the name the spec gave the layer."""
        for i in node.inputs:
            src = env[i]
            if isinstance(src, tuple) and src[2].op == "param":
                return src[2].attrs["path"].rpartition(".")[0]
        return ""

    def _reads(self, node: Node, env: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for i in node.inputs:
            src = env[i]
            for s in src if isinstance(src, list) else [src]:
                if isinstance(s, str) and s not in out:
                    out.append(s)
        return out

    def _item(self, iid: str, label: str, kind: str, node: Node, graph: Graph, inputs: list[str]) -> dict[str, Any]:
        flops = sympy.Integer(0) if node.op == "input" else self.an.node_flops(node, graph)
        family = "io" if node.op == "input" else OPS[node.op].family if node.op in OPS else "unknown"
        return {"id": iid, "label": str(label), "kind": kind,
                "op": node.op, "family": family, "shape": _shape(node), "dtype": _dtype(node), "params": 0,
                "flops": flops_text(flops), "line": node.span.line if node.span else None, "inputs": inputs}


def _shape(node: Node) -> str:
    t = node.type
    if isinstance(t, TensorType):
        return named_shape(t)
    return " , ".join(named_shape(m) for m in t)


def _dtype(node: Node) -> str:
    t = node.type
    return str(t.dtype) if isinstance(t, TensorType) else ", ".join(str(m.dtype) for m in t)
