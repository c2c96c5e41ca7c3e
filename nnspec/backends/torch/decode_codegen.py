"""The decoding step in the generated file: the step the compiler derives (`nnspec.compiler.decode`) written out
as code, next to `forward` and with the same lowerings at the same `-O` level.

For a model whose attention is causal over a sequence axis, the file gets
- a `decode_step(...)` method on the model's class and on each block class that runs (or calls a block that
  runs) a cache site or a position source: the block's graph emitted again, where
  - a cache site (causal attention over the sequence) takes this call's `KVCache` (`cache.pop(0)`: `cache`
    lists them in run order), writes the new tokens' keys and values at `cache_position` (`index_copy_`) and
    attends over the whole cache with `cache_mask` (causal and padding, [B, t, length]) as its mask: the
    forward's attention emitter at that level (SDPA at -O2, spelled out below), reading the cache, not k and v;
  - `arange` over the sequence is `cache_position`; `rotary` without positions rotates at `cache_position`; a
    sinusoidal table is indexed by it;
  - a scan over the sequence (a recurrent state: retention, an SSM) takes this call's `ScanState` off the same
    list, starts from it (from the spec's initial state when the step starts at position 0), runs the forward's
    recurrence over the new tokens and copies its final state back;
  - a block call or repeat whose block needs the step calls that block's `decode_step`; everything else is the
    forward's code (position-wise: it runs on the new tokens only);
- `KVCache` and `decode_mask` (and `ScanState` when there is a scan; copied from `decode_runtime.py`), and a
  `<Model>Decoder(model, batch, length)` module holding one `KVCache` per site execution and one `ScanState` per
  scan execution, in run order (the plan's shapes, in the model's dtype), whose
  `forward(input_ids, cache_position, key_mask, ...)` is what `nnspec.generate` runs.

Spelled-out attention (-O0/-O1 keep it as written) is first recognised (the `attention` pass, dropout off: the
step is for inference); models the derivation refuses get no step, nor does a scan whose step block holds a
cache site (`nnspec.generate` then runs the reference `decode.DecodeStep`; the explain output says so).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.context import ModuleContext
from nnspec.backends.torch.decode_layout import RUNTIME as GEMV_RUNTIME
from nnspec.backends.torch.decode_layout import cache_types, gemv_blocks, gemv_weight, step_call, step_weights_lines
from nnspec.backends.torch.decode_states import emit_scan, emit_window, mixed_cache, windows_of
from nnspec.backends.torch.function import FunctionGen
from nnspec.backends.torch.layout import permute
from nnspec.backends.torch.members import plan_members
from nnspec.backends.torch.pysrc import Expr, Lit, call, method
from nnspec.backends.torch.source import Stmt, Var, owns_block, size_expr
from nnspec.compiler.decode import DecodePlan, Site, cached_values, derive
from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType, repeat_plan
from nnspec.compiler.ops.attention import attention_types
from nnspec.compiler.passes import optimize
from nnspec.errors import SpecError

METHOD = "decode_step"
RUNTIME = ("KVCache", "decode_mask")    # what the file copies from decode_runtime.py (and STATE for a scan)
STATE = "ScanState"
_MASK, _POSITION = "\0cache_mask", "\0cache_position"   # pseudo-nodes: the step's mask and positions
_KEYS, _VALUES = "\0cache_keys", "\0cache_values"      # and the cache as stored (`cache_types`)


class DecodeCodegen:
    """The decoding code of one generated file (empty when the model has none). `methods(name)` after each
    class's `forward`, `module_level()` before the classes, `decoder()` after them."""

    def __init__(self, mg: ModuleContext) -> None:
        self.mg = mg
        self.plan: DecodePlan | None = None
        self.model: Model | None = None
        self.needs: set[str] = set()
        self.stateful: set[str] = set()
        self.gemvs = False   # whether a step multiplies by a weight through `step_gemv` (`decode_layout`)
        self._derive()

    @property
    def active(self) -> bool:
        return self.plan is not None

    def _derive(self) -> None:
        model = self.mg.model
        try:
            plan = derive(model)
        except SpecError:
            try:   # spelled-out attention (-O0, -O1): recognised for the step, dropout off
                model = optimize(model, passes=["attention", "dce"], training=False)
                plan = derive(model)
            except SpecError:
                return   # not a decoder: no step
        if not plan.sites and not plan.states:   # e.g. the sequence dim bound to a number (`--set T=5`)
            self.mg.note(f"torch: no {METHOD} in the file: no causal attention or scan runs over a free sequence "
                         f"dim (is {plan.seq} bound to a number?)")
            return
        why = self._unsupported(model, plan)
        if why is not None:
            self.mg.note(f"torch: no {METHOD} in the file: {why}; nnspec.generate runs the reference step "
                         "(nnspec.backends.torch.decode.DecodeStep)")
            return
        self.model, self.plan = model, plan
        self.needs = self._blocks_needing(model, plan)
        self.stateful = set(self.needs)   # the blocks running a cache site or a position source, or calling one
        if self.mg.options.fused_linear:   # blocks whose linears read the step's weight layouts
            self.needs |= gemv_blocks(model, self.needs)
        if plan.states:
            windows = sum(s.kind == "window" for s in plan.states)
            self.mg.note(f"torch: {METHOD} emitted in the file: {len(plan.states) - windows} scan state(s) and "
                         f"{windows} causal convolution window(s) over the sequence carried as the cache (ScanState, "
                         f"preallocated), {len(plan.sites)} KV cache site(s); nnspec.generate runs it")
        gen = getattr(self.mg, "function_gen", FunctionGen)
        if gen is not FunctionGen and plan.sites:   # another target's kernels
            if hasattr(gen, "cache_attention"):     # the target attends over the cache itself
                self.mg.note(f"template kernel: {METHOD} attention over the KV cache ({len(plan.sites)} call(s) per "
                             "step: written with index_copy_, read by the target's flash-decoding kernel up to the "
                             "last written position)")
            else:
                self.mg.note(f"torch fallback: {METHOD} attention over the KV cache ({len(plan.sites)} call(s) per "
                             "step: written with index_copy_, read by the torch backend's attention code; the rest of "
                             "the step runs this target's kernels)")

    def _unsupported(self, model: Model, plan: DecodePlan) -> str | None:
        if plan.batch is None:
            return "the inputs have no batch axis"
        first = next(iter(model.inputs))
        if any("default" not in model.graph[n].attrs for k, n in model.inputs.items() if k != first):
            return "an input other than the tokens has no default"
        known = {plan.seq, plan.batch, *self.mg.dim_names}
        for site in plan.sites:
            for t in (site.k_type, site.v_type):
                if any(not sympy.sympify(a.size).free_symbols <= known for a in t.axes):
                    return f"the cache of {site.graph}.{site.node} has a size the model's dims do not fix"
        for w in plan.states:
            node = (model.templates.get(w.graph) or model.graph)[w.node]
            if w.kind == "window" and list(w.type.names) != [node.attrs["axis"] if n == node.attrs["into"].name else n
                                                             for n in node.tensor_type.names]:
                return f"the window of {w.graph}.{w.node} is laid out unlike its prefix"
        for g in model.graphs():
            for node in g:
                if node.op == "scan" and any(b in self._blocks_needing(model, plan) for b in _blocks(node)):
                    return f"a scan ({g.name}.{node.name}) runs a block with a cache site"
        return None

    @staticmethod
    def _blocks_needing(model: Model, plan: DecodePlan) -> set[str]:
        """Templates whose step differs from their forward: they run a cache site or a position source, or call
        a template that does (every template of a repeat, so its loop calls one method)."""
        direct = {s.graph for s in plan.order} | {g for g, _ in plan.positions}
        needs = set(direct)
        changed = True
        while changed:
            changed = False
            for g in model.graphs():
                for node in g:
                    blocks = _blocks(node)
                    if blocks and needs & set(blocks) and not set(blocks) <= needs:
                        needs |= set(blocks)
                        changed = True
                    if g.name in model.templates and needs & set(blocks) and g.name not in needs:
                        needs.add(g.name)
                        changed = True
        return needs

    # -- the file's parts --
    def methods(self, template: str | None) -> str:
        """`decode_step` of a block class (`template`) or of the model's class (None), or ''."""
        if self.model is None:
            return ""
        graph = self.model.graph if template is None else self.model.templates[template]
        if template is not None and template not in self.needs:
            return ""
        name = self.mg.model_class if template is None else self.mg.class_names[template]
        base: type[FunctionGen] = getattr(self.mg, "function_gen", FunctionGen)
        gen_cls = _decode_gen(base)
        fn = gen_cls(self.mg, graph, plan_members(self.mg, graph, name), self.model if template is None else None)
        fn.setup(self)
        lines = fn.generate(METHOD)
        weights = step_weights_lines(fn.step_weights)
        self.gemvs |= bool(weights)
        if weights:
            self.mg.helper("weight_stamp")    # how step_gemv and choose_layouts tell a kept copy is current
        head = next(i for i, line in enumerate(lines) if line.rstrip().endswith(":") and "->" in line)
        doc = ("One decoding step: the new tokens only, keys and values written to and read from `cache` (one "
               "KVCache per causal attention call, in run order, each taken off the list by its call) at "
               "`cache_position`, `cache_mask` [B, t, length] the cache slots each new token sees.")
        if self.plan is not None and self.plan.states and not self.plan.sites:
            doc = ("One decoding step: the new tokens only, at `cache_position`; each scan over the sequence and each "
                   "causal convolution takes its ScanState off `cache` (in run order): it starts from the state (the "
                   "last inputs) the previous step left and leaves its own there.")
        elif self.plan is not None and self.plan.states:
            doc += (" Each scan over the sequence and each causal convolution takes its ScanState off `cache` too: "
                    "it starts from the state (the last inputs) the previous step left and leaves its own there.")
        if template is None:
            doc += " Returns what forward returns, for the new tokens."
        return "\n\n" + "\n".join([*weights, *([""] if weights else []), *lines[:head + 1],
                                   *P.docstring(doc, "        "), *lines[head + 1:]])

    def _stored(self, site: Site) -> tuple[TensorType, TensorType]:
        """The site's keys' and values' types as its cache stores them (`cache_types`)."""
        assert self.model is not None
        graph = self.model.templates.get(site.graph, self.model.graph)
        return cache_types(site.k_type, site.v_type, site.key, graph[site.node].attrs["dim"])

    def _kv_cache(self, size: Any) -> tuple[str, list[str], list[str]]:
        """The Decoder's cache of a model without scans: one (keys' shape, values' shape, dtype) per run of equal
        sites, each shape a variable (short lines)."""
        plan = self.plan
        assert plan is not None
        entries: list[tuple[tuple[str, str, str], int]] = []
        for site in plan.sites:
            shapes = tuple(P.src(P.TupleExpr(tuple(size(a, a.name == site.key) for a in t.axes)))
                           for t in self._stored(site))
            entry = (*shapes, f"torch.{site.k_type.dtype.value}")
            if entries and entries[-1][0] == entry:
                entries[-1] = (entry, entries[-1][1] + 1)
            else:
                entries.append((entry, 1))  # type: ignore[arg-type]
        shape_lines: list[str] = []
        groups: list[str] = []
        for i, ((k_shape, v_shape, dtype), n) in enumerate(entries):
            suffix = f"_{i + 1}" if len(entries) > 1 else ""
            if k_shape == v_shape:
                shape_lines.append(f"        shape{suffix} = {k_shape}")
                pair = f"shape{suffix}, shape{suffix}"
            else:
                shape_lines += [f"        k_shape{suffix} = {k_shape}", f"        v_shape{suffix} = {v_shape}"]
                pair = f"k_shape{suffix}, v_shape{suffix}"
            groups.append(f"[({pair}, {dtype})]" + (f" * {n}" if n > 1 else ""))
        comment = ("the keys' and the values' shape and dtype of each causal attention call, in the order a step "
                   "runs them")
        made = [f"        shapes = {' + '.join(groups)}",
                "        self.cache = nn.ModuleList([KVCache(k, v, dtype, device) for k, v, dtype in shapes])"]
        return comment, shape_lines, made

    def module_level(self) -> list[str]:
        if self.plan is None:
            return []
        return [_runtime_source(n) for n in (*RUNTIME, *([STATE] if self.plan.states else []),
                                             *(GEMV_RUNTIME if self.gemvs else ()))]

    def decoder(self) -> str:
        """The `<Model>Decoder` module: the static cache and the step's entry point."""
        if self.model is None or self.plan is None:
            return ""
        mg, model, plan = self.mg, self.model, self.plan
        cls = mg.globals.fresh(mg.model_class + "Decoder")
        first, *rest = model.inputs
        mask_input = plan.mask_input is not None and "attention_mask" in model.inputs
        others = [k for k in rest if not (mask_input and k == "attention_mask")]

        def size(a: Any, length: bool) -> Expr:
            if length:
                return P.Name("length")
            names = {plan.batch: P.Name("batch"), plan.seq: P.Name("length")}
            return size_expr(a.size, lambda s: names.get(s) or P.Name(mg.dim_names[s]))

        if plan.states:   # KVCache and ScanState entries, in the order a step takes them off the list
            comment, shape_lines, made = mixed_cache(plan, self._stored, size)
        else:
            comment, shape_lines, made = self._kv_cache(size)
        outputs = list(model.outputs)
        kwargs = [*([("attention_mask", P.Name("attention_mask"))] if mask_input else []),
                  *((k, P.Name(k)) for k in others), ("cache", P.call("list", P.dotted("self.cache"))),
                  ("cache_position", P.Name("cache_position")), ("cache_mask", P.Name("cache_mask"))]
        last = _last_position_cut(model.graph, self) is not None
        if last:
            kwargs.append(("last_only", P.Name("last_only")))
        step: Expr = P.Call(P.dotted(f"self.model.{METHOD}"), (P.Name(first),), tuple(kwargs))
        if len(outputs) > 1:
            step = P.Index(step, (P.Lit(outputs[0]),))
        params = ["self", f"{first}: torch.Tensor", "cache_position: torch.Tensor", "key_mask: torch.Tensor",
                  *(f"{k}: torch.Tensor | None = None" for k in others), "last_only: bool = False"]
        doc = (f"Incremental decoding with {mg.model_class}, as nnspec derives it from the spec: the keys and values "
               "of each causal attention call are kept in a static cache of `length` positions for `batch` "
               "sequences (in the model's dtype, allocated once); every other op runs on the new tokens only, "
               "positions at their absolute values.\n\n"
               f"forward({first}, cache_position, key_mask{''.join(', ' + k for k in others)}, last_only) returns the "
               f"{outputs[0]} of the new tokens `{first}` [B, t] written at the cache positions `cache_position` "
               "[t]; `key_mask` [B, length] is 1 where a slot holds a token, 0 at padding or not written yet; "
               "`last_only`: the last new token's only (a prefill's next-token logits).")
        if plan.states:
            doc = doc.replace("; every other op", "; each scan over the sequence keeps its state, and each causal "
                              "convolution its last inputs, in a ScanState; every other op")
        lines = [f"class {cls}(nn.Module):", *P.docstring(doc, "    "), "",
                 *P.signature("    ", "def __init__", ["self", f"model: {mg.model_class}", "batch: int", "length: int",
                                                         *(['weight_layout: str = "auto"'] if self.gemvs else [])],
                              " -> None:"),
                 "        super().__init__()",
                 "        self.model = model",
                 "        self.batch, self.length = batch, length",
                 "        device = next(model.parameters()).device",
                 f"        # {comment}",
                 *shape_lines,
                 *made,
                 *(["        # the layout the step reads each weight in (weight_layout: auto, the fastest measured",
                    "        # here, or one of LAYOUT_KINDS for all): its copies cost layout_bytes besides the model",
                    "        self.layout_bytes = choose_layouts(model, batch, weight_layout)"] if self.gemvs else []),
                 "",
                 "    def reset(self) -> None:",
                 '        """Empty the cache, for a new batch of prompts."""',
                 "        for buffer in self.cache.buffers():",
                 "            buffer.zero_()",
                 "",
                 "    def cache_bytes(self) -> int:",
                 '        """Bytes the cache holds (the cost model\'s KV-cache bytes for this batch and length)."""',
                 *(["        return sum(b.numel() * b.element_size() for b in self.cache.buffers())"]
                   if not plan.states else
                   ["        kv = [c for c in self.cache if isinstance(c, KVCache)]  # a scan's state is not counted",
                    "        return sum(b.numel() * b.element_size() for c in kv for b in c.buffers())"]),
                 "",
                 *P.signature("    ", "def forward", params, " -> torch.Tensor:"),
                 "        # (B, t, length): the cache slots each new token sees, the same for every attention call",
                 "        cache_mask = decode_mask(key_mask, cache_position)"]
        if mask_input:
            lines.append("        attention_mask = key_mask[:, cache_position]  # the new tokens' padding mask")
        if last:
            lines += P.statement("        ", "return ", step)
        else:   # the step computes every new position's output: the last one is cut from it
            out_t = model.graph[model.outputs[outputs[0]]].tensor_type
            # bound dims filled in (Mamba's scan axis is `T + conv_pad - 3`), the sequence and batch left symbolic
            known = {s: v for s, v in plan.values.items() if s not in (plan.seq, plan.batch)}
            axis = next(i for i, a in enumerate(out_t.axes) if sympy.sympify(a.size).xreplace(known) == plan.seq)
            lines += P.statement("        ", "out = ", step)
            lines += P.statement("        ", "return ", P.IfExp(P.Index(P.Name("out"), (*[P.Slice()] * axis,
                                                                                        P.Slice(Lit(-1)))),
                                                             P.Name("last_only"), P.Name("out")))
        return "\n".join(lines)


def _blocks(node: Node) -> list[str]:
    if not owns_block(node):
        return []
    if node.op == "repeat":
        return sorted({b for b, _ in repeat_plan(node.attrs)})
    return [node.attrs["block"]]


@cache
def _torch_emitters() -> Any:
    from nnspec.backends.torch.ops import EMITTERS
    return EMITTERS


@cache
def _runtime_source(name: str) -> str:
    """A definition (or a constant) in decode_runtime.py as written there (read, not imported: code generation
    stays torch-free)."""
    text = (Path(__file__).parent / "decode_runtime.py").read_text(encoding="utf-8")
    lines = text.split("\n")
    for node in ast.parse(text).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return "\n".join(lines[node.lineno - 1:node.end_lineno])
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == [name]:  # a constant
            return "\n".join(lines[node.lineno - 1:node.end_lineno])
    raise KeyError(name)


@cache
def _decode_gen(base: type[FunctionGen]) -> type[FunctionGen]:
    """The step's function generator over a target's own (`TorchFunctionGen`, Triton's)."""
    return type(f"Decode{base.__name__}", (_DecodeMixin, base), {})


class _DecodeMixin(FunctionGen):
    """A graph's `decode_step`: see the module's docstring."""

    def setup(self, codegen: DecodeCodegen) -> None:
        self.codegen = codegen
        self.plan_ = codegen.plan
        self.step_weights: list[tuple[str, str]] = []   # (submodule, parameter) of each linear (`decode_layout`)
        self.cache_name = self.names.fresh("cache")
        self.position_name = self.names.fresh("cache_position")
        self.mask_name = self.names.fresh("cache_mask")
        kinds = " | ".join([*(["KVCache"] if codegen.plan.sites else []),  # type: ignore[union-attr]
                            *(["ScanState"] if codegen.plan.states else [])])  # type: ignore[union-attr]
        self.extra_params = [f"{self.cache_name}: list[{kinds}]", f"{self.position_name}: torch.Tensor",
                             f"{self.mask_name}: torch.Tensor"]
        self.cut = _last_position_cut(self.graph, codegen) if self.model is not None else None
        if self.cut is not None:
            self.last_name = self.names.fresh("last_only")
            self.extra_params.append(f"{self.last_name}: bool = False")

    def _extra(self) -> tuple[Expr, ...]:
        return (P.Name(self.cache_name), P.Name(self.position_name), P.Name(self.mask_name))

    def emitter_for(self, node: Node) -> Callable[..., Expr | None] | None:
        emit = self._emitter_for(node)
        if node.name != self.cut or emit is None:
            return emit
        return lambda fn, n, ins: self._last_only(n, emit(fn, n, ins))

    def _last_only(self, node: Node, value: Expr | None) -> None:
        """`x = x[:, -1:]` when the caller wants the last position only (a prefill's next-token logits): every op
        after `node` is position-wise and reads the sequence only through it (`_last_position_cut`)."""
        n = node.name
        if value is not None:
            self.add(Stmt([(0, (Var(n), " = ", value))], n, pinned=True, inline_into=False, evaluates=[n]))
        t = node.tensor_type
        axis = next(i for i, a in enumerate(t.axes) if a.name in self.plan_.sequence_axes[self.graph.name])  # type: ignore
        last = P.Index(Var(n), (*[P.Slice()] * axis, P.Slice(Lit(-1))))
        comment = "only the last position's outputs are wanted: the ops below are position-wise"
        self.add(Stmt([(0, ("if ", P.Name(self.last_name), ":")), (1, (Var(n), " = ", last))], comment=comment,
                      inline_into=False, evaluates=[]))

    def _emitter_for(self, node: Node) -> Callable[..., Expr | None] | None:
        plan = self.plan_
        assert plan is not None
        role = plan.positions.get((self.graph.name, node.name))
        if role == "positions":
            return lambda fn, n, ins: P.Name(self.position_name)
        if role == "rotary" and len(node.inputs) == 1:
            return self._rotary
        if role == "table":
            return self._table
        if node.op == "attention" and node.attrs["causal"] and \
                node.attrs["key"] in plan.sequence_axes.get(self.graph.name, ()):
            return self._attend
        if node.op == "scan" and node.attrs["axis"].name in plan.sequence_axes.get(self.graph.name, ()):
            return self._scan
        if (self.graph.name, node.name) in windows_of(plan):
            return self._window
        if set(_blocks(node)) & self.codegen.needs:
            return self._repeat if node.op == "repeat" else self._call
        emit = super().emitter_for(node)
        # chosen weight layouts go with the fused `linear` helper (-O2): -O0/-O1 steps read as their forwards do
        if emit is None or not self.mg.options.fused_linear or gemv_weight(self.graph, node) is None:
            return emit
        return lambda fn, n, ins: step_call(self, n, emit(fn, n, ins), self.step_weights)   # the weight's layout

    def _window(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr | None:
        return emit_window(self, node, ins, super().emitter_for(node), self.plan_.values)  # type: ignore[union-attr]

    def _scan(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr | None:
        return emit_scan(self, node, ins, super().emitter_for(node))

    def _attend(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr | None:
        """Write the new keys and values into this call's cache, then the forward's attention over the cache."""
        a = node.attrs
        types = [self.in_type(node, i) for i in range(3)]
        # what the cache stores: k and v, or the values before an exact widening cast (`cached_values`: a bf16
        # model's float32 attention), widened on read
        values = cached_values(self.graph, node)
        narrow = [self.type_of(n) for n in values]
        stored = cache_types(narrow[0], narrow[1], a["key"], a["dim"])   # the cache's layout: as the attention reads
        kv = self.let(method(P.Name(self.cache_name), "pop", 0), "kv",
                      comment="this attention call's cache: " + _comment(stored[0], a["key"]))
        position = P.Name(self.position_name)
        reads = []
        for i, field in ((1, "keys"), (2, "values")):
            value = ins[i] if values[i - 1] == node.inputs[i] else self.value(values[i - 1])
            new = permute(value, [narrow[i - 1].index(n) for n in stored[i - 1].names])
            write = method(P.Attr(kv, field), "index_copy_", stored[i - 1].index(a["key"]), position, new)
            self.add(Stmt([(0, (write,))], evaluates=[]))
            read: Expr = P.Attr(kv, field)
            if narrow[i - 1].dtype != types[i].dtype:
                read = method(read, "to", self.dtype(types[i].dtype))
            reads.append(read)
        scores_t, _ = attention_types([*types, *(self.in_type(node, i) for i in range(3, len(ins)))], a,
                                      self.mg.model.dims)
        axes = [ax for ax in scores_t.axes if sympy.sympify(ax.size) == self.plan_.batch][:1]  # type: ignore
        axes += [scores_t.axis(a["query"]), scores_t.axis(a["key"])]
        self.types[_MASK] = TensorType(tuple(axes), DType.bool)  # type: ignore[arg-type]
        self.types[_KEYS], self.types[_VALUES] = (t.with_dtype(types[i + 1].dtype) for i, t in enumerate(stored))
        # the cache mask (`decode_mask`) shows each new token its own slot: no row is empty, so the forward's
        # NaN fix-up for empty rows (after SDPA) is not emitted
        attrs = {**a, "causal": False, "has_mask": True, "rows_see_a_key": True}
        cached = Node(node.name, node.op, [node.inputs[0], _KEYS, _VALUES, _MASK], attrs, node.type, node.span,
                      node.meta)
        args = [ins[0], *reads, P.Name(self.mask_name)]
        cache_attention = getattr(self, "cache_attention", None)   # a target's own kernel over the cache
        if cache_attention is not None:
            return cache_attention(cached, args, P.Name(self.position_name))   # type: ignore[no-any-return]
        return _torch_emitters()["attention"](self, cached, args)   # type: ignore[no-any-return]

    def _rotary(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr | None:
        """Rotated at the new tokens' absolute positions."""
        t = self.in_type(node, 0)
        self.types[_POSITION] = TensorType((t.axis(node.attrs["pos"]),), DType.int64)  # type: ignore[arg-type]
        at = Node(node.name, node.op, [node.inputs[0], _POSITION], node.attrs, node.type, node.span, node.meta)
        emit = super().emitter_for(node)
        assert emit is not None
        return emit(self, at, [ins[0], P.Name(self.position_name)])

    def _table(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
        """The sinusoidal table's rows at the new tokens' positions (a table as long as the cache)."""
        a = node.attrs
        length = P.Index(P.Attr(P.Name(self.mask_name), "shape"), (Lit(-1),))
        table = call(self.mg.helper("sinusoidal_table"), length, self.size(a["dim"].size), a["base"],
                     device=P.Attr(P.Name(self.position_name), "device"))
        return P.Index(table, (P.Name(self.position_name),))

    def _call(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr:
        return P.Call(P.Attr(self.member(node.attrs["scope"]), METHOD), (*ins, *self._extra()))

    def _repeat(self, fn: FunctionGen, node: Node, ins: list[Expr]) -> Expr | None:
        """The forward's loop (`for layer in self.h: x = layer(x)`), each iteration's `decode_step`."""
        a = node.attrs
        n = node.name
        result = a["result"]
        if isinstance(result, tuple):
            named = {u.attrs["index"]: u.name for u in self.users(n) if u.op == "getitem"}
            refs = [self.let(ins[i], named.get(i, f"state{i}")) for i in range(len(result))]
            carried: list[Expr] = [Var(r.node) for r in refs]
            rest = ins[len(result):]
        else:
            self.add(Stmt([(0, (Var(n), " = ", ins[0]))], n, pinned=True, inline_into=False))
            refs, carried, rest = [], [Var(n)], ins[1:]
        target: Expr = P.TupleExpr(tuple(carried), bare=True) if len(carried) > 1 else carried[0]
        scope = self.member(a["scope"])
        if a["shared"]:
            head: tuple[str | Expr, ...] = ("for _ in range(", Lit(a["count"]), "):")
            step = P.Call(P.Attr(scope, METHOD), (*carried, *rest, *self._extra()))
        else:
            layer = P.Name(self.fresh(self.mg.model.templates[a["block"]].meta.get("block", "layer")))
            head = ("for ", layer, " in ", scope, ":")
            step = P.Call(P.Attr(layer, METHOD), (*carried, *rest, *self._extra()))
        self.add(Stmt([(0, head), (1, (target, " = ", step))], inline_into=False, evaluates=[n]))
        return P.TupleExpr(tuple(refs)) if isinstance(result, tuple) else None


def _last_position_cut(graph: Graph, codegen: DecodeCodegen) -> str | None:
    """The model graph's node after which only the last position matters for the outputs: the last node that
    runs a cache site or a position source (or calls a block that does), when every node after it is
    position-wise, reads sequence-sized values only from it or from nodes after it, and the outputs come after
    it. None when there is no such node."""
    plan = codegen.plan
    assert plan is not None
    seq = plan.sequence_axes.get(graph.name, frozenset())
    nodes = list(graph)
    special = [i for i, n in enumerate(nodes) if (graph.name, n.name) in plan.positions or
               set(_blocks(n)) & codegen.stateful or (n.op == "attention" and n.attrs["key"] in seq) or
               (n.op == "scan" and n.attrs["axis"].name in seq) or (graph.name, n.name) in windows_of(plan)]
    if not special:
        return None
    cut = nodes[special[-1]]
    after = {n.name for n in nodes[special[-1] + 1:]}

    def sequenced(name: str) -> bool:
        t = graph[name].type
        return isinstance(t, TensorType) and any(a.name in seq for a in t.axes)
    if not sequenced(cut.name) or any(o not in after for o in graph.outputs):
        return None
    for n in nodes[special[-1] + 1:]:
        if any(sequenced(i) and i != cut.name and i not in after for i in n.inputs):
            return None
    return cut.name


def _comment(t: TensorType, key: str) -> str:
    return "(" + ", ".join(t.names) + f"), {key} as long as the cache"


__all__ = ["METHOD", "DecodeCodegen"]
