"""The block graph: the checked graph as graphviz DOT, hierarchical and collapsible.

Each op is a node showing its name, op and parameter count, filled by op family; each edge carries the
symbolic shape of the tensor on it (`B x T x n_embd`). Parameters and scalar constants are facts of the
node that uses them, not nodes. A block call is one node until expanded (`expand` levels deep), then a
cluster of its body; a repeat is always one cluster labelled `xN` holding its block (collapsed or not), so a
96-layer model draws its layer once. A legend lists the families drawn.

Transforms (nnspec.compiler.transforms) show: a node a transform made or changed (`meta["transform"]`: a
LoRA adapter, a float32 island's cast, a sliced linear, a repeat with shared groups or with iterations that
run a variant) gets a thick border in the transform colour and its notes as extra label lines, a cluster
of such a call or repeat its notes in the label; a residual branch `--drop` removed is a dashed ghost node
hanging off the stream it was added to (`meta["dropped"]`); edges carrying bfloat16/float16 name the dtype,
and parameter counts say `frozen` and the storage dtype when not float32. The legend then has a row for
transforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import graphviz

from nnspec.compiler.analysis import Analysis
from nnspec.compiler.diagrams.palette import FAMILIES, TRANSFORM, TRANSFORM_LEGEND, colours, legend_text
from nnspec.compiler.diagrams.view import (
    Const,
    Param,
    drawn_in_place,
    named_shape,
    param_of,
    repeat_notes,
    select_graph,
    shown_name,
    transform_notes,
)
from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType
from nnspec.compiler.ops import OPS

FONT = "DejaVu Sans"
LOW_PRECISION = (DType.bfloat16, DType.float16)    # edges carrying these name their dtype


@dataclass(frozen=True)
class _Src:
    """A tensor in the drawing: the DOT node that produces it, its type, and whether its producer changed the shape
    or dtype (only then do its edges carry a label, so a layer's run of same-shape edges is labelled once)."""

    node: str
    type: TensorType
    changed: bool = True


def block_graph(model: Model, *, expand: int = 0, block: str | None = None) -> str:
    """DOT text for the model's body (or block `block`), calls and repeats expanded `expand` levels deep."""
    graph = select_graph(model, block)
    title = model.name if block is None else f"{model.name}: block {graph.meta.get('block', graph.name)}"
    if model.transforms:   # what was applied, also what leaves no node to mark (a branch dropped from the body)
        title += "\\n" + _escape("[transforms: " + "; ".join(model.transforms) + "]")
    dot = graphviz.Digraph(model.name, graph_attr={
        "rankdir": "TB", "label": title, "labelloc": "t", "fontname": FONT, "fontsize": "16",
        "nodesep": "0.3", "ranksep": "0.35", "newrank": "true"},
        node_attr={"shape": "box", "style": "rounded,filled", "fontname": FONT, "fontsize": "11",
                   "penwidth": "1.2"},
        edge_attr={"fontname": FONT, "fontsize": "9", "color": "#555555", "arrowsize": "0.7"})
    writer = _Writer(model, expand, dot)
    env: dict[str, Any] = {}
    for name in graph.inputs:
        node = graph[name]
        shown = node.attrs.get("name", name)
        writer.node(dot, f"in.{name}", f"{shown}\\n{node.tensor_type}", "io", shape="ellipse")
        env[name] = _Src(f"in.{name}", node.tensor_type, changed=False)   # its node already says its type
    writer.body(dot, graph, env, "", 0)
    several = len(graph.outputs) > 1
    outs = model.outputs.items() if graph is model.graph else \
        [(f"out[{k}]" if several else "out", o) for k, o in enumerate(graph.outputs)]
    for shown, node_name in outs:
        values = env[node_name] if isinstance(env[node_name], list) else [env[node_name]]
        for k, src in enumerate(values):
            nid = f"out.{shown}" if len(values) == 1 else f"out.{shown}[{k}]"
            writer.node(dot, nid, f"{nid[4:]}\\n{src.type}", "io", shape="ellipse")
            writer.edge(src, nid)
            writer.outputs.append(nid)
    writer.legend(dot)
    return dot.source


class _Writer:
    def __init__(self, model: Model, expand: int, root: graphviz.Digraph) -> None:
        self.model = model
        self.root = root     # edges go here: an edge written inside a cluster would pull its ends into it
        self.expand = expand
        self.an = Analysis(model)
        self.families: list[str] = []
        self.outputs: list[str] = []
        self.counted: set[str] = set()   # parameter nodes already counted (a second use is a tie)
        self.transformed = False         # something drawn carries a transform's mark (the legend says so)
        self.labelled: set[str] = set()  # values whose shape label is drawn (once each)
        self.home: dict[str, graphviz.Digraph] = {}   # node id -> the cluster it was drawn in (None: the root)

    def node(self, g: graphviz.Digraph, nid: str, label: str, family: str, notes: list[str] | None = None,
             show_notes: bool = True, **attrs: str) -> None:
        """A box filled by family; a transform's notes (if any) make its border the transform colour and, with
        `show_notes`, are added as label lines."""
        fill, border = colours(family)
        if family not in self.families:
            self.families.append(family)
        if notes:
            self.transformed = True
            if show_notes:
                label += "".join(f"\\n[{_escape(n)}]" for n in notes)
            border, attrs = TRANSFORM, {**attrs, "penwidth": "2.6", "fontcolor": TRANSFORM}
        g.node(nid, label, fillcolor=fill, color=border, **attrs)
        self.home[nid] = g if g is not self.root else None  # type: ignore[assignment]

    def edge(self, src: _Src, dst: str) -> None:
        """An edge, labelled with its shape only on the first edge out of a value whose producer changed the
        shape; written into the cluster holding both ends (a residual stays inside its block), else at the root
        (an edge written inside a cluster would pull an outside end into it)."""
        t = src.type
        dtype = f" {t.dtype}" if t.dtype in LOW_PRECISION else ""
        attrs = {}
        if dtype or (src.changed and src.node not in self.labelled):   # a low-precision edge always says so
            self.labelled.add(src.node)
            attrs["label"] = f" {named_shape(t)}{dtype} "
        home = self.home.get(src.node)
        g = home if home is not None and home is self.home.get(dst) else self.root
        g.edge(src.node, dst, **attrs)

    def ghosts(self, g: graphviz.Digraph, node: Node, src: Any, prefix: str) -> None:
        """A dashed node for each residual branch --drop removed after `node`, hanging off its value."""
        if not isinstance(src, _Src):
            return
        for scope in node.meta.get("dropped", ()):
            self.transformed = True
            nid = f"{prefix}{node.name}.dropped.{scope}"
            g.node(nid, f"{_escape(scope)}\\n[dropped]", style="rounded,dashed", color=TRANSFORM,
                   fontcolor=TRANSFORM, fillcolor="none", penwidth="1.6")
            self.root.edge(src.node, nid, style="dashed", color=TRANSFORM, arrowhead="tee")

    def body(self, g: graphviz.Digraph, graph: Graph, env: dict[str, Any], prefix: str, depth: int) -> None:
        for node in graph:
            if node.op == "input":
                self.ghosts(g, node, env[node.name], prefix)
                continue
            if OPS[node.op].has("state"):
                env[node.name] = param_of(node)
                env[node.name + "#full"] = prefix.replace("/", ".") + node.attrs["path"]
            elif OPS[node.op].has("view") and node.inputs and isinstance(env[node.inputs[0]], Param):
                # a weight reshaped before use is still that weight: its count belongs to the op that uses it
                p = env[node.inputs[0]]
                env[node.name] = Param(p.path, node.tensor_type, p.buffer, p.trainable)
                env[node.name + "#full"] = env[node.inputs[0] + "#full"]
            elif node.op == "const":
                env[node.name] = Const(node.attrs["value"])
            elif node.op == "getitem":
                env[node.name] = env[node.inputs[0]][node.attrs["index"]]
            elif node.op == "repeat":
                self.repeat(g, node, env, prefix, depth)
            elif node.op == "call" and depth < self.expand:
                with g.subgraph(name=f"cluster_{prefix}{node.name}") as sub:
                    sub.attr(label=f"{node.attrs['scope']}: {self._block(node)}  ({self._params(node)})"
                             + self._cluster_notes(node), style="rounded,dashed",
                             color=TRANSFORM if transform_notes(node.meta) else "#6a4c9c", fontname=FONT,
                             fontsize="12", labeljust="l")
                    env[node.name] = self.inline(sub, node, env, f"{prefix}{node.attrs['scope']}/", depth + 1)
            else:
                env[node.name] = self.op(g, node, env, prefix)
            self.ghosts(g, node, env.get(node.name), prefix)

    def repeat(self, g: graphviz.Digraph, node: Node, env: dict[str, Any], prefix: str, depth: int) -> None:
        count, groups = node.attrs["count"], node.attrs.get("groups")
        shared = ", shared weights" if node.attrs["shared"] else \
            f", {groups} groups of {count // groups} share weights" if groups else ""
        with g.subgraph(name=f"cluster_{prefix}{node.name}") as sub:
            sub.attr(label=f"{node.attrs['scope']} ×{count}  ({self._params(node)}{shared})"
                     + self._cluster_notes(node), style="rounded",
                     color=TRANSFORM if transform_notes(node.meta) else "#6a4c9c", penwidth="2", fontname=FONT,
                     fontsize="13", labeljust="l")
            if depth < self.expand:
                env[node.name] = self.inline(sub, node, env, f"{prefix}{node.attrs['scope']}/", depth + 1)
            else:   # its notes are in the cluster's label
                env[node.name] = self.op(sub, node, env, prefix, notes=False)

    def inline(self, g: graphviz.Digraph, node: Node, env: dict[str, Any], prefix: str, depth: int) -> Any:
        """The block's body inside cluster `g`. Each tensor input the block takes is a small node in the cluster
        named as the block's signature names it, so a residual branch starts and ends inside the block; a repeat
        draws its loop-back, from the iteration's result to that input."""
        template = self.model.templates[node.attrs["block"]]
        sub = {t: env[i] for t, i in zip(template.inputs, node.inputs, strict=True)}
        entries = []
        for t in template.inputs:
            if isinstance(sub[t], _Src):
                nid = f"{prefix}in.{t}"
                self.node(g, nid, str(template[t].attrs.get("name", t)), "io", shape="ellipse", fontsize="9",
                          margin="0.04,0.02", height="0.3")
                self.edge(sub[t], nid)
                sub[t] = _Src(nid, sub[t].type, changed=False)
                entries.append(nid)
        self.body(g, template, sub, prefix, depth)
        results = [sub[o] for o in template.outputs]
        if node.op == "repeat" and entries and isinstance(results[0], _Src):
            # written as a forward edge from the input down to the result, drawn with its arrow back at the input:
            # dot routes an edge whose ends share a cluster through that cluster's own ranks, so the loop-back
            # runs down the block's right side inside its box (a `constraint=false` back edge was routed around
            # the outside)
            g.edge(entries[0], results[0].node, label=f" next of ×{node.attrs['count']} ", style="dashed",
                   color="#6a4c9c", fontcolor="#6a4c9c", dir="back")
        return results if isinstance(node.type, tuple) else results[0]

    def op(self, g: graphviz.Digraph, node: Node, env: dict[str, Any], prefix: str, notes: bool = True) -> Any:
        nid = prefix + node.name
        family = OPS[node.op].family if node.op in OPS else "unknown"
        if drawn_in_place(node):   # `mlp` once when the scope is named after its block, not `mlp / mlp`
            lines = list(dict.fromkeys([node.attrs["scope"], self._block(node)]))
        else:
            consts = [str(env[i]) for i in node.inputs if isinstance(env[i], Const)]
            if node.op == "cast":
                consts.insert(0, f"to {node.attrs['dtype']}")
            what = node.op + (" " + ", ".join(consts) if consts else "")
            scope = next((env[i].short for i in node.inputs if isinstance(env[i], Param) and not env[i].buffer), "")
            name = shown_name(node, scope)
            if scope and name not in (scope, node.op) and "." not in scope:   # `tok` of layer `wte`: both, once
                name = f"{name} ({scope})"
            lines = [what] if name == node.op else [name, what]
        params = self._params(node) if drawn_in_place(node) else self._own_params(node, env)
        if params:
            lines.append(params)
        self.node(g, nid, "\\n".join(lines), family, transform_notes(node.meta), notes)  # DOT's escaped line break
        for i in node.inputs:
            if isinstance(env[i], _Src):
                self.edge(env[i], nid)
        seen = {(named_shape(env[i].type), env[i].type.dtype) for i in node.inputs if isinstance(env[i], _Src)}
        if isinstance(node.type, tuple):
            return [_Src(nid, t, (named_shape(t), t.dtype) not in seen) for t in node.type]
        return _Src(nid, node.tensor_type, (named_shape(node.tensor_type), node.tensor_type.dtype) not in seen)

    def _own_params(self, node: Node, env: dict[str, Any]) -> str:
        total, tied, frozen, dtypes = 0, [], True, []
        for i in node.inputs:
            if isinstance(env[i], Param) and not env[i].buffer:
                full = env[i + "#full"]
                if full in self.counted:
                    tied.append(full)
                else:
                    self.counted.add(full)
                    total += int(self.model.dims.concrete(env[i].type.numel()))
                    frozen = frozen and not env[i].trainable
                    if env[i].type.dtype != DType.float32 and str(env[i].type.dtype) not in dtypes:
                        dtypes.append(str(env[i].type.dtype))
        facts = (["frozen"] if frozen else []) + dtypes
        text = f"{total:,} params" + (f" ({', '.join(facts)})" if facts else "") if total else ""
        return text + ("\\n" if text and tied else "") + (f"tied to {', '.join(tied)}" if tied else "")

    def _params(self, node: Node) -> str:
        return f"{self.an.node_params(node):,} params"

    def _cluster_notes(self, node: Node) -> str:
        """A marked call's or repeat's notes as label lines, with the iterations that run a variant."""
        notes = repeat_notes(self.model, node)
        if notes:
            self.transformed = True
        return "".join(f"\\n[{_escape(n)}]" for n in notes)

    def _block(self, node: Node) -> str:
        return str(self.model.templates[node.attrs["block"]].meta.get("block", node.attrs["block"]))

    def legend(self, g: graphviz.Digraph) -> None:
        """One node holding a table: a swatch per family drawn, in the palette's order."""
        order = [f for f in FAMILIES if f in self.families] + [f for f in self.families if f not in FAMILIES]
        rows = "".join(f'<TR><TD BGCOLOR="{colours(f)[0]}" COLOR="{colours(f)[1]}">{legend_text(f)}</TD></TR>'
                       for f in order)
        if self.transformed:
            rows += (f'<TR><TD BORDER="3" COLOR="{TRANSFORM}"><FONT COLOR="{TRANSFORM}">[{TRANSFORM_LEGEND}]'
                     '</FONT></TD></TR>')
        g.node("legend", f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="3" CELLPADDING="3">'
               f'<TR><TD BORDER="0"><B>legend</B></TD></TR>{rows}</TABLE>>', shape="plain", style="",
               fontsize="10")
        for out in self.outputs:     # below the outputs, not beside the inputs
            g.edge(out, "legend", style="invis")


def _escape(text: str) -> str:
    """A note as DOT label text: quotes and backslashes escaped (graphviz quotes the label itself)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
