"""lora: low-rank adapters on the linears whose scope matches a glob (LoRA, Hu et al. 2021).

`lora(model, ["*.c_attn:8"])` rewrites each matching `y = linear(x, W, b)` (the scope is the weight's path
without `.weight`, e.g. `h.3.attn.c_attn`; globs are fnmatch patterns, `*` crossing dots) into

    y = linear(x, W, b) + linear(linear(x, lora_A), lora_B) * (alpha / rank)

with `{scope}.lora_A` [rank, in] (normal, std 1/sqrt(in): Kaiming-normal) and `{scope}.lora_B` [out, rank]
(zeros); `alpha` defaults to the rank. Every other parameter gets `trainable=False`.

Contract: at initialisation the outputs are unchanged (B is zero); only adapter parameters are trainable
(`trainable_parameters`); `merge(model, params)` (in `nnspec.backends.torch.transform_params`, from
`plan_merge` here) folds `scale * B @ A` into W, removes the adapters and restores the original graph,
reproducing the adapted outputs. `--lora PATTERN:RANK:randlora` inserts the RandLoRA adapter instead
(randlora.py); `merge` folds both kinds.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

import sympy

from nnspec.compiler.graph_edits import copy_model
from nnspec.compiler.ir import Axis, Graph, Model, Node, TensorType
from nnspec.compiler.ops import OPS
from nnspec.compiler.sizes import MAX_SIZE
from nnspec.compiler.transforms.randlora import randlora_branch
from nnspec.compiler.transforms.rewrite import (
    TransformError,
    dedupe_templates,
    instances,
    mark,
    param_nodes,
    specialize,
    unmark,
)

ADAPTER_ROLE = "adapter"     # meta["lora"]["role"] of a trainable adapter parameter


@dataclass(frozen=True)
class LoraSpec:
    """Adapters of `rank` on the linears whose scope matches `pattern`; `kind` is "lora" or "randlora"."""

    pattern: str
    rank: int
    alpha: float | None = None
    kind: str = "lora"

    @property
    def scale(self) -> float:
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def __str__(self) -> str:
        extra = ("" if self.alpha is None else f":alpha={self.alpha:g}") + ("" if self.kind == "lora" else
                                                                          f":{self.kind}")
        return f"{self.pattern}:{self.rank}{extra}"


def parse_lora(text: str | LoraSpec) -> LoraSpec:
    """`PATTERN:RANK[:alpha=A][:randlora]`, e.g. `*.c_attn:8`, `h.*.attn.*:4:alpha=16`."""
    if isinstance(text, LoraSpec):
        return text
    pattern, *rest = text.split(":")
    if not pattern or not rest or not rest[0].isdigit() or len(rest[0]) > 20 or int(rest[0]) < 1:
        raise TransformError(f"--lora takes PATTERN:RANK[:alpha=A][:randlora] (e.g. '*.c_attn:8'), got {text[:200]!r}")
    if int(rest[0]) > MAX_SIZE:    # an axis size: the same bound as every size in a spec
        raise TransformError(f"--lora {text[:200]}: rank {rest[0]} is above the size limit {MAX_SIZE:,}")
    alpha, kind = None, "lora"
    for opt in rest[1:]:
        if opt in ("randlora", "lora"):
            kind = opt
        elif opt.startswith("alpha="):
            try:
                alpha = float(opt[len("alpha="):])
            except ValueError:
                raise TransformError(f"--lora {text}: alpha must be a number") from None
            if not math.isfinite(alpha):   # nan or inf would scale every adapter's output to nan
                raise TransformError(f"--lora {text}: alpha must be a finite number, got {alpha}")
        else:
            raise TransformError(f"--lora {text}: unknown option {opt!r} (alpha=A or randlora)")
    return LoraSpec(pattern, int(rest[0]), alpha, kind)


def linear_scope(graph: Graph, node: Node) -> str | None:
    """`c_attn` for a linear whose weight is the parameter `c_attn.weight` of this graph, used by it alone (an
    adapter on a tied weight could not be merged without changing the weight's other uses)."""
    if node.op != "linear" or graph[node.inputs[1]].op != "param" or \
            [u.name for u in graph.users(node.inputs[1])] != [node.name]:
        return None
    path = graph[node.inputs[1]].attrs["path"]
    return path[: -len(".weight")] if path.endswith(".weight") else None


def _append(graph: Graph, sizes: Any, op: str, inputs: list[str], attrs: dict[str, Any], hint: str,
              meta: dict[str, Any]) -> str:
    """Append a node with its type inferred (the caller moves the new nodes into place)."""
    pending = len(sizes.pending)
    t = OPS[op].infer([graph[i].type for i in inputs], attrs, sizes)
    del sizes.pending[pending:]
    node = graph.add(op, inputs, attrs, t, None, hint)
    node.meta.update(meta)
    return node.name


def insert_adapter(graph: Graph, sizes: Any, name: str, spec: LoraSpec) -> None:
    """Rewrite linear `name` to add a LoRA (or RandLoRA) branch; new nodes go right after it."""
    node = graph[name]
    scope = linear_scope(graph, node)
    assert scope is not None
    before = set(graph.nodes)
    info = {"scope": scope, "kind": spec.kind, "scale": spec.scale, "rank": spec.rank}
    note = f"{spec.kind} r={spec.rank}"

    def add(op: str, inputs: list[str], attrs: dict[str, Any], hint: str, role: str) -> str:
        return _append(graph, sizes, op, inputs, attrs, hint, {"lora": {**info, "role": role}, "transform": note})

    if spec.kind == "randlora":
        delta = randlora_branch(graph, node, scope, spec, add, sizes)
    else:
        delta = _lora_branch(graph, node, scope, spec, add, sizes)
    w = graph[node.inputs[1]].tensor_type
    scale = add("const", [], {"value": spec.scale, "type": TensorType((), w.dtype)}, f"{scope}_lora_scale", "branch")
    scaled = add("mul", [delta, scale], {}, f"{name}_lora", "branch")
    total = add("add", [name, scaled], {}, f"{name}_adapted", "sum")
    for user in graph.users(name):
        if user.name != total:
            for i, src in enumerate(user.inputs):
                if src == name:
                    graph.set_input(user.name, i, total)
    graph.outputs = [total if o == name else o for o in graph.outputs]
    new = [n for n in graph.nodes if n not in before]
    after = list(graph.nodes)[list(graph.nodes).index(name) + 1:]
    anchor = next((n for n in after if n not in new), None)
    graph.move_before(new, anchor)
    mark(node.meta, note)


def _lora_branch(graph: Graph, node: Node, scope: str, spec: LoraSpec, add: Any, sizes: Any) -> str:
    w = graph[node.inputs[1]].tensor_type
    out_axis, in_axis = w.axes
    r = Axis("lora_r", sympy.Integer(spec.rank))
    std = 1.0 / math.sqrt(int(sizes.concrete(in_axis.size)))
    a = add("param", [], {"path": f"{scope}.lora_A", "type": TensorType((r, in_axis), w.dtype),
                          "init": ("normal", std)}, f"{scope}_lora_A", ADAPTER_ROLE)
    b = add("param", [], {"path": f"{scope}.lora_B", "type": TensorType((out_axis, r), w.dtype),
                          "init": ("zeros",)}, f"{scope}_lora_B", ADAPTER_ROLE)
    down = add("linear", [node.inputs[0], a], {"axis": node.attrs["axis"]}, f"{scope}_lora_down", "branch")
    return add("linear", [down, b], {"axis": r.name}, f"{scope}_lora_up", "branch")


def lora(model: Model, specs: list[str | LoraSpec] | tuple[str | LoraSpec, ...]) -> Model:
    """`model` with adapters on the linears matching `specs` and every other parameter frozen."""
    parsed = [parse_lora(s) for s in specs]
    used: set[LoraSpec] = set()
    linears: list[str] = []

    def decide(graph: Graph, prefix: str) -> tuple[tuple[str, LoraSpec], ...] | None:
        out = []
        for node in graph:
            scope = linear_scope(graph, node)
            if scope is None or "lora" in node.meta:
                continue
            linears.append(prefix + scope)
            spec = next((s for s in parsed if fnmatch.fnmatchcase(prefix + scope, s.pattern)), None)
            if spec is not None:
                used.add(spec)
                out.append((node.name, spec))
        return tuple(out) or None

    def edit(graph: Graph, decision: tuple[tuple[str, LoraSpec], ...]) -> None:
        for name, spec in decision:
            insert_adapter(graph, sizes, name, spec)

    sizes = model.dims
    out = specialize(model, decide, edit, "lora", note="lora " + " ".join(map(str, parsed)))
    for spec in parsed:
        if spec not in used:
            shown = ", ".join(dict.fromkeys(linears[:8])) or "none"
            raise TransformError(f"--lora {spec}: the pattern matches no linear with its own weight "
                                 f"(linears: {shown}{', ...' if len(linears) > 8 else ''})")
    for g in out.graphs():
        for node in g:
            if node.op == "param" and node.meta.get("lora", {}).get("role") != ADAPTER_ROLE and \
                    node.attrs.get("trainable", True):
                node.attrs["trainable"] = False
                node.meta["frozen_by"] = "lora"
                mark(node.meta, "frozen (lora)")
    out.transforms.append("lora " + " ".join(map(str, parsed)))
    return out


def trainable_parameters(model: Model) -> list[str]:
    """The full paths of the parameters an optimizer should update (`trainable` not false)."""
    return [path for path, node in param_nodes(model) if node.attrs.get("trainable", True)]


@dataclass(frozen=True)
class AdapterFold:
    """One adapter to fold: `{scope}.weight` += `scale` * delta_W, with delta_W from the adapter's parameters
    (`{scope}.lora_B @ {scope}.lora_A` for kind "lora"; the sum of randlora.py for "randlora")."""

    scope: str
    kind: str
    scale: float


@dataclass(frozen=True)
class MergePlan:
    """What merging the adapters of a model does, as plain data (`nnspec.backends.torch.transform_params.merge`
    applies it to tensors): the model without adapters (parameters unfrozen), the folds, and its parameter paths."""

    model: Model
    folds: tuple[AdapterFold, ...]
    params: frozenset[str]

    def keeps(self, path: str) -> bool:
        """Whether a given parameter stays: one of the merged model's, or any other that is no adapter's."""
        return path in self.params or not _is_adapter_path(path)


def plan_merge(model: Model) -> MergePlan:
    """How to fold every adapter of `model` into its linear's weight, so the merged model computes what `model`
    computes with the adapted parameters."""
    folds = tuple(AdapterFold(prefix + info["scope"], info["kind"], info["scale"])
                  for prefix, g in _instances_with_adapters(model) for node in g
                  if (info := node.meta.get("lora")) and info["role"] == "sum")
    merged = _strip(model)
    return MergePlan(merged, folds, frozenset(path for path, _ in param_nodes(merged)))


def _instances_with_adapters(model: Model) -> list[tuple[str, Graph]]:
    return [(p, g) for p, g in instances(model) if any("lora" in n.meta for n in g)]


def _is_adapter_path(path: str) -> bool:
    return path.rpartition(".")[2] in ("lora_A", "lora_B", "randlora_A", "randlora_B", "randlora_lambda",
                                       "randlora_gamma")


def _strip(model: Model) -> Model:
    """The graph without adapters: each adapted linear's users read the linear again."""
    out = copy_model(model)
    for g in out.graphs():
        for node in list(g):
            info = node.meta.get("lora")
            if node.name in g.nodes and info and info["role"] == "sum":
                base = node.inputs[0]
                g.replace_uses(node.name, base)
                unmark(g[base].meta, f"{info['kind']} r={info['rank']}")
        dead = True
        while dead:
            dead = [n for n in g if "lora" in n.meta and not list(g.nx.successors(n.name))
                    and n.name not in g.outputs]
            for n in dead:
                g.erase(n.name)
        for node in g:
            if node.meta.pop("frozen_by", None):
                node.attrs.pop("trainable", None)
                unmark(node.meta, "frozen (lora)")
    dedupe_templates(out)
    out.transforms.append("merge lora")
    return out
