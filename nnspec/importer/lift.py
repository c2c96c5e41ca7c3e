"""Lifting the captured aten graph into `L` values, demand-driven from the model's output.

Only what the output needs is lifted (mask and position bookkeeping nobody reads never appears). Three kinds of
node are handled apart from the generic op table (`ops.py`):
- nodes inside a **leaf module** (one without submodules: Linear, Conv1D, Embedding, LayerNorm, an RMSNorm,
  an activation, Dropout) become one call of the language's function, recognised from the module and checked
  against the captured values (`leaves.py`);
- **static** nodes (computed from sizes and buffers only: position ids, causal masks, rotary tables) are
  recognised by their value (`patterns.py`), or refused;
- patterns spanning several ops (rotary, grouped-query attention) are recognised where their last op is reached.
"""

from __future__ import annotations

import operator
import re
from typing import Any

import torch
from torch import fx

from nnspec.importer.boundary import leaving
from nnspec.importer.capture import Captured
from nnspec.importer.errors import ImportFailure
from nnspec.importer.graph import L, Unwritable
from nnspec.importer.naming import Dims
from nnspec.importer.routing import Routed, routed

# Ops that pass their input through unchanged at inference (same dtype casts, copies, eval-mode dropout).
_ALIASES = {"aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default",
            "aten.lift_fresh_copy.default", "aten.dropout.default", "aten._to_copy.default", "aten.to.dtype",
            "aten.to.dtype_layout", "aten.to.device", "aten.type_as.default"}


def op_name(n: fx.Node) -> str:
    return str(n.target) if n.op == "call_function" else n.op


def ancestors(n: fx.Node) -> set[fx.Node]:
    """`n` and every node it reads, directly or not."""
    seen, todo = set(), [n]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(m.all_input_nodes)
    return seen


class Lifter:
    def __init__(self, cap: Captured, dims: Dims, rules: Any) -> None:
        self.rules = rules                    # `rules.RULES`: the op table and recognisers (they import this module)
        self.cap = cap
        self.dims = dims
        self.graph = cap.program.graph
        self.index = {n: i for i, n in enumerate(self.graph.nodes)}
        sig = cap.program.graph_signature
        self.params: dict[str, str] = dict(sig.inputs_to_parameters)
        self.buffers: dict[str, str] = dict(sig.inputs_to_buffers)
        self.user_inputs = set(sig.user_inputs)
        self.modules = Modules(cap.model.named_modules())
        self._calls: dict[fx.Node, dict[str, str]] = {}
        self.cache: dict[fx.Node, Any] = {}
        self.consumers: list[fx.Node] = []    # the nodes being lifted, innermost last (who reads a lifted value)
        self.renamed: dict[tuple[int, str], L] = {}   # a block's result as a scope outside it reads it
        self.embedding_counts: dict[str, str] = {}    # embedding path -> its count's name (`tied.py`)
        self.static = self._static_nodes()
        self.blocks: set[str] = set()         # module paths that are blocks (non-leaf, not flattened)
        self.flattened: set[str] = {""}
        self.leaf_calls: list[tuple[str, str]] = []   # (module path, leaf kind) for the weights mapping
        self.transposed: set[str] = set()     # module paths whose weight the checkpoint stores transposed
        self.squeezed: dict[str, list[int]] = {}
        self.moe: dict[str, Routed] = {}           # module paths lifted as `moe` (their weights map specially)
        self.scan_bodies: set[str] = set()         # block scopes written as a `scan`'s step, not called
        self.param_reads: dict[tuple[str, str], L] = {}   # (parameter, scope reading it) -> its value there

    # --- structure ---------------------------------------------------------------------------------------------
    def stack(self, n: fx.Node) -> list[str]:
        """The module paths computing `n`, outermost first; a later call of a block (a module with children) is
        its own scope `path@k` (a block applied repeatedly with shared weights), its submodules under it."""
        return list(self.calls(n))

    def calls(self, n: fx.Node) -> dict[str, str]:
        """(Instance) module path -> the export's key for the call of it computing `n` (`L__self__proj@1` for its
        second call): nodes of one call of a module share the key, nodes of another call of it do not."""
        got = self._calls.get(n)
        if got is None:
            got, parent, parent_clean, parent_k = {}, "", "", "0"
            for key, (path, _cls) in (n.meta.get("nn_module_stack") or {}).items():
                clean = _clean(path)
                k = key.rpartition("@")[2] if "@" in key else "0"
                inst = parent + clean[len(parent_clean):] if clean.startswith(parent_clean) else clean
                mod = self.modules.get(clean)
                if k != parent_k and k != "0" and mod is not None and not self.is_leaf(clean):
                    inst = f"{inst}@{k}"
                got[inst] = key
                parent, parent_clean, parent_k = inst, clean, k
            self._calls[n] = got
        return got

    def is_leaf(self, path: str) -> bool:
        """A module lifted as one function call: one without submodules, or a routed mixture of experts (its
        routing is data-dependent code the language has as one function, `moe`)."""
        mod = self.modules.get(path)
        if mod is None or path == "":
            return False
        if not any(True for _ in mod.children()) and not any(True for _ in mod.parameters()) \
                and not type(mod).__module__.startswith(("torch.", "transformers.")):
            return False       # user code without weights (a generated scan step): its ops are lifted one by one
        return not any(True for _ in mod.children()) or routed(self.modules, path) is not None

    def leaf_of(self, n: fx.Node) -> str | None:
        for path in self.stack(n):
            if self.is_leaf(path):
                return path
        return None

    def scope_of(self, n: fx.Node) -> str:
        """The innermost block module computing `n` ("" for the body)."""
        best = ""
        for path in self.stack(n):
            if path in self.modules and not self.is_leaf(path) and path not in self.flattened:
                best = path
                self.blocks.add(path)
        return best

    def _static_nodes(self) -> set[fx.Node]:
        """Nodes that depend on neither a user input's values nor a parameter: functions of sizes and buffers."""
        dynamic: set[fx.Node] = set()
        for n in self.graph.nodes:
            if n.op == "placeholder":
                if n.name in self.user_inputs or n.name in self.params:
                    dynamic.add(n)
            elif any(a in dynamic for a in n.all_input_nodes):
                dynamic.add(n)
        return {n for n in self.graph.nodes if n not in dynamic and n.op == "call_function"}

    # --- lifting -----------------------------------------------------------------------------------------------
    def resolve(self, n: Any) -> Any:
        """Look through ops that do not change the value (casts to the same dtype, copies, eval dropout)."""
        while isinstance(n, fx.Node) and op_name(n) in _ALIASES and n.args and isinstance(n.args[0], fx.Node):
            src = n.args[0]
            a, b = self.cap.values.get(n.name), self.cap.values.get(src.name)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype != b.dtype:
                break
            n = src
        return n

    def lift(self, n: Any) -> Any:
        n = self.resolve(n)
        if not isinstance(n, fx.Node):
            return n
        consumer = self.consumers[-1] if self.consumers else None
        if n.op == "placeholder" and n.name in self.params and consumer is not None:
            # a weight read directly in several calls of a shared block: each call names it in its own scope
            key = (n.name, self.scope_of(consumer))
            if key not in self.param_reads:
                self.param_reads[key] = self._param(n, key[1])
            return leaving(self, self.param_reads[key], n, consumer)
        if n in self.cache:
            return leaving(self, self.cache[n], n, consumer)
        self.consumers.append(n)
        try:
            out = self._lift(n)
        except Unwritable as exc:
            raise self.fail(n, str(exc)) from None
        finally:
            self.consumers.pop()
        self.cache[n] = out
        # a block's result read outside it: named as the caller sees it (`boundary.py`)
        return leaving(self, out, n, consumer)

    def _lift(self, n: fx.Node) -> Any:
        rules = self.rules
        if n.op == "placeholder":
            out = self._placeholder(n)
        elif n in self.static:
            out = rules.static_value(self, n)
        elif n.target is operator.getitem:
            out = rules.getitem(self, n)
        elif (leaf := self.leaf_of(n)) is not None:
            out = rules.lift_leaf(self, leaf, n)
        else:
            out = rules.match(self, n)
            if out is None:
                out = rules.lift_op(self, n)
        return out

    def _placeholder(self, n: fx.Node) -> L:
        if n.name in self.user_inputs:
            val = self.cap.values[n.name]
            axes = [(self.input_axis(n.name, i, s),) for i, s in enumerate(val.shape)]
            return L(n.name, [], axes, [a[0] for a in axes], "", -1, hint=n.name)
        if n.name in self.params:
            return self._param(n)
        raise ImportFailure("a buffer used outside a recognised module", op="buffer",
                            module=self.buffers.get(n.name, n.name))

    def _param(self, n: fx.Node, scope: str | None = None) -> L:
        """A raw learned tensor (ViT's class token): `param(sizes, name=attr)`, its size-1 dims squeezed away by
        the weights mapping."""
        key = self.params[n.name]
        val = self.cap.values[n.name]
        ones = [i for i, s in enumerate(val.shape) if s == 1]
        axes = [() if s == 1 else (self.dims.name(s),) for s in val.shape]
        if ones:
            self.squeezed[key] = ones
        names = [a[0] for a in axes if a]
        if scope is None:
            scope = self.scope_of(next(iter(n.users)))
        first_use = min([self.index[u] for u in n.users if self.scope_of(u) == scope] or
                        [self.index[u] for u in n.users])
        attr = key.rsplit(".", 1)[-1]
        owner, _, _ = key.rpartition(".")
        parent, _, owner_attr = owner.rpartition(".")
        if owner and self.is_leaf(owner) and val.dim() == 2 and not ones \
                and (parent == instance_of(scope) or (not scope and parent in self.flattened)):
            # a weight of a sibling call read directly (a projection tied to `up.weight`): the language names it so
            out_in = [(self.dims.axis(val.shape[0]),), (self.dims.name(val.shape[1]),)]
            if out_in[0] == out_in[1]:          # a square weight: the language names its input axis `d_in`
                out_in[1] = (f"{out_in[1][0]}_in",)
            return L(f"{owner_attr}.{attr}", [], out_in, [a[0] for a in out_in], scope, first_use - 0.5, hint=attr)
        # two axes of one size: the language names the later `L_1` (`param(heads, L, L)` is `[heads, L, L_1]`)
        own = [f"{a}_{names[:i].count(a)}" if a in names[:i] else a for i, a in enumerate(names)]
        self.dims.local.update({o: val.shape[i] for o, i in zip(own, [i for i, g in enumerate(axes) if g],
                                                                 strict=True) if o not in names})
        axes = [(own.pop(0),) if g else () for g in axes]
        return L(f"param({', '.join(names)}, name={attr})", [], axes, [g[0] for g in axes if g], scope,
                 first_use - 0.5, hint=attr, bind=True)

    def input_axis(self, name: str, i: int, size: int) -> str:
        shape = self.cap.values[name].shape
        if len(shape) == 4 and i >= 2 and shape[2] == shape[3] and "height" in self.dims.values:
            return ("height", "width")[i - 2]
        if size in self.dims.free:
            if self.dims.free[size] != "B" and size in [int(s) for s in shape[1:i]]:
                # `adj[B, T, S]`: a later node axis of the same free size is a free dim of its own
                return self.rules.second_free(self, self.dims.free[size])      # `windows.second_free`
            return self.dims.free[size]
        return self.dims.name(size)

    def value(self, n: Any) -> Any:
        n = self.resolve(n)
        return self.cap.values.get(n.name) if isinstance(n, fx.Node) else n

    def fail(self, n: fx.Node, why: str) -> ImportFailure:
        stack = self.stack(n)
        return ImportFailure(why, op=op_name(n), module=stack[-1] if stack else "")

    def param_path(self, n: fx.Node) -> str | None:
        n = self.resolve(n)
        if isinstance(n, fx.Node) and n.op == "placeholder":
            return self.params.get(n.name)
        return None


def instance_of(path: str) -> str:
    """The module path of an instance path (`shared@2.attn` -> `shared.attn`)."""
    return re.sub(r"@\d+", "", path)


class Modules(dict):
    """Module path -> module, looked up also by instance path (a later call `shared@2.attn` is `shared.attn`)."""

    def __getitem__(self, path: str) -> Any:
        return super().__getitem__(instance_of(path))

    def get(self, path: str, default: Any = None) -> Any:
        return super().get(instance_of(path), default)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and super().__contains__(instance_of(path))


def _clean(path: str) -> str:
    """nn_module_stack paths look like `L['self'].model.layers[0]` in some versions and `model.layers.0` in
    others; both become `model.layers.0`."""
    path = path.replace("L['self'].", "").replace("L['self']", "")
    out = []
    for part in path.replace("[", ".").replace("]", "").split("."):
        if part:
            out.append(part.strip("'\""))
    return ".".join(out)
