"""One generated function (`FunctionGen`): a graph's `forward` as statements, built by the op emitters
(`ops/`), then single-use values inlined where that keeps the order of effects (dropout's random stream,
batch-norm statistics) and the line short, variables named, and the lines printed.

Determinism: everything is ordered by the IR (insertion order) or sorted; no set or hash order is printed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import sympy

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.absent_masks import block_args, may_be_none
from nnspec.backends.torch.context import ModuleContext
from nnspec.backends.torch.members import ClassPlan
from nnspec.backends.torch.pysrc import Expr, Ref
from nnspec.backends.torch.source import (
    Names,
    Stmt,
    Var,
    condition_expr,
    holds_state,
    member,
    moves_axes,
    refuse,
    shape_comment,
    size_expr,
    spec_named,
    trivial,
    vars_of,
)
from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType
from nnspec.errors import InternalError

LINE_LIMIT = 100          # longest statement (indent included) that inlining may produce


class FunctionGen:
    """The statements of one graph's `forward`; the op emitters (`ops/`) build them through this."""

    def __init__(self, mg: ModuleContext, graph: Graph, plan: ClassPlan, model: Model | None) -> None:
        self.mg, self.graph, self.plan, self.model = mg, graph, plan, model
        self.stmts: list[Stmt] = []
        self.alias: dict[str, Expr] = {}          # nodes whose value is an expression repeated at each use
        self.types: dict[str, Any] = {n.name: n.type for n in graph}
        self.hints: dict[str, str] = {}           # temporary -> the variable name it would like
        self.same_var: dict[str, str] = {}        # temporary -> earlier temporary whose variable it rebinds
        self.free_names: dict[sympy.Symbol, str] = {}
        self.free_used: dict[sympy.Symbol, None] = {}
        self.names = Names(mg.globals.taken | {"self"})   # locals never shadow a module-level name
        self.params: dict[str, str] = {}          # input node -> forward() parameter
        self.extra_params: list[str] = []         # parameters after the inputs' (`training: bool`)
        self.given_flags: dict[str, str] = {}     # optional input -> `<input>_given`, set before its default fills it
        self.node: Node | None = None
        self._device: Expr | None = None
        self._temps = 0
        # a block's input axis whose size is an expression over free dims (floor(H/2)) -> a symbol bound
        # from that axis of the shape, for `_in_input_terms`
        self._shape_syms: dict[sympy.Basic, sympy.Symbol] = {} if model is not None else {
            size: sympy.Dummy(a.name) for n in graph.inputs if isinstance(graph[n].type, TensorType)
            for a in graph[n].tensor_type.axes
            if not (size := sympy.sympify(a.size)).is_Symbol and not size.is_number}

    # -- for emitters --
    def type_of(self, name: str) -> TensorType:
        t = self.types[name]
        if not isinstance(t, TensorType):
            raise InternalError(f"{name} in {self.graph.name} is not a tensor")
        return t

    def in_type(self, node: Node, i: int) -> TensorType:
        return self.type_of(node.inputs[i])

    def size(self, e: sympy.Basic) -> Expr:
        return size_expr(self._in_input_terms(e), self._size_name)

    def _in_input_terms(self, e: sympy.Basic) -> sympy.Basic:
        """A block's size over a caller's free dim that its inputs give only through a floor (`H` where the
        input is x[B, P, Q, C] with P = floor(H/2)): H cannot be recovered from the shape, so the size is
        rewritten over the input axes whose sizes it contains (`floor(H/2)*floor(W/2)` -> `P * Q`), and
        those are read from the shape. Sizes whose dims are recoverable print as before."""
        e = sympy.sympify(e)
        if self.model is not None or not self._shape_syms:
            return e
        direct = self._direct_syms()
        known = set(self.mg.dim_names) | direct
        lost = [s for s in e.free_symbols if s not in known
                and self._recovery(s, list(self.graph.inputs), known) is None]
        if not lost:
            return e
        # the largest sizes first, so that a merged input axis (P*Q) is used whole
        for size, sym in sorted(self._shape_syms.items(), key=lambda kv: -sympy.count_ops(kv[0])):
            e = e.subs(size, sym)
        return e

    def _direct_syms(self) -> set[sympy.Basic]:
        """The free dims that are exactly an axis size of one of this function's inputs."""
        return {size for n in self.graph.inputs for a in self.type_of(n).axes
                if isinstance(size := sympy.sympify(a.size), sympy.Symbol)}

    def _size_name(self, sym: sympy.Symbol) -> Expr:
        if sym in self.mg.dim_names:
            return P.Name(self.mg.dim_names[sym])
        self.free_used[sym] = None
        if sym not in self.free_names:
            self.free_names[sym] = self.names.fresh(sym.name)
        return P.Name(self.free_names[sym])

    def device_kw(self) -> dict[str, Expr]:
        """`device=` for new tensors: the first required input's device, else the first parameter's."""
        if self._device is None:
            for name in self.graph.inputs:
                if "default" not in self.graph[name].attrs:
                    self._device = P.Attr(P.Name(self.params[name]), "device")
                    break
            else:
                for node in self.graph:
                    if holds_state(node):
                        self._device = P.Attr(self.member(node.attrs["path"]), "device")
                        break
        return {} if self._device is None else {"device": self._device}

    @staticmethod
    def dtype(d: DType) -> Expr:
        return P.dotted(f"torch.{d.value}")

    member = staticmethod(member)

    def value(self, name: str) -> Expr:
        return self.alias.get(name, Ref(name))

    def users(self, name: str) -> list[Node]:
        return self.graph.users(name)

    def let(self, value: Expr, hint: str, *, rebind: Expr | None = None, comment: str | None = None) -> Ref:
        """A statement `hint = value` kept as written; `rebind` assigns the variable of an earlier `let`."""
        tmp = self._temp(hint)
        if isinstance(rebind, Ref) and rebind.node in self.hints:
            self.same_var[tmp] = rebind.node
        self.stmts.append(Stmt([(0, (Var(tmp), " = ", value))], tmp, comment, pinned=True,
                               evaluates=[self.node.name] if self.node else []))
        return Ref(tmp)

    def let_many(self, value: Expr, hints: list[str]) -> list[Ref]:
        """`a, b = value` into new temporaries."""
        temps = [self._temp(h) for h in hints]
        target = P.TupleExpr(tuple(Var(t) for t in temps), bare=True)
        self.stmts.append(Stmt([(0, (target, " = ", value))], pinned=True,
                               evaluates=[self.node.name] if self.node else []))
        return [Ref(t) for t in temps]

    def _temp(self, hint: str) -> str:
        self._temps += 1
        tmp = f"\0{self._temps}"
        self.hints[tmp], self.types[tmp] = hint, None
        return tmp

    def add(self, stmt: Stmt) -> None:
        self.stmts.append(stmt)

    def fresh(self, hint: str) -> str:
        return self.names.fresh(hint)

    # -- generation --
    def generate(self, fn_name: str = "forward", method: bool = True) -> list[str]:
        """The lines of `def forward(self, ...)` (a method), or of a module-level `def fn_name(...)`."""
        model = self.model
        for name in self.graph.inputs:
            node = self.graph[name]
            if model is not None:   # the model's inputs are its keyword API: refuse what would shadow
                pname = node.attrs["name"]
                if not P.is_identifier(pname) or pname in self.names.taken:
                    raise refuse("input", pname, "the generated forward() needs that name", node.span)
                self.names.taken.add(pname)
            else:
                pname = self.names.fresh(name)
            self.params[name] = pname
        for node in self.graph:
            if node.op == "input":
                continue
            self.node = node
            emitter = self.emitter_for(node)
            if emitter is None:
                raise InternalError(f"no PyTorch code generation for op {node.op!r}")
            ins = block_args(self, node, [self.value(i) for i in node.inputs])
            value = emitter(self, node, ins)
            if value is not None:       # else the emitter wrote the defining statements itself
                self.define(node, value)
        self.node = None
        if model is not None and len(model.outputs) > 1:
            ret: Expr = P.DictExpr(tuple((P.Lit(k), self.value(v)) for k, v in model.outputs.items()))
        elif len(self.graph.outputs) == 1:
            ret = self.value(self.graph.outputs[0])
        else:
            ret = P.TupleExpr(tuple(self.value(o) for o in self.graph.outputs), bare=True)
        self.stmts.append(Stmt([(0, ("return ", ret))]))
        self._inline()
        self._shape_comments()
        names = self._name_variables()
        body = (self._model_prologue() if model is not None else self._bind(list(self.graph.inputs))) + \
            [line for s in self.stmts for line in self._print(s, names)]
        params = ["self"] if method else []
        for name, pname in self.params.items():
            optional = model is not None and "default" in self.graph[name].attrs
            params.append(f"{pname}: torch.Tensor" + (" | None = None" if optional else
                                                      " | None" if may_be_none(self, name) else ""))
        params += self.extra_params
        params = _keyword_only_after_defaults(params)
        if model is not None:
            returns = "torch.Tensor" if len(model.outputs) == 1 else "dict[str, torch.Tensor]"
        else:
            n = len(self.graph.outputs)
            returns = "torch.Tensor" if n == 1 else f"tuple[{', '.join(['torch.Tensor'] * n)}]"
        if not method:
            return [*P.signature("", f"def {fn_name}", params, f" -> {returns}:"), *_indent(body, 1)]
        return [*P.signature("    ", f"def {fn_name}", params, f" -> {returns}:"), *_indent(body, 2)]

    def reads_none_masks(self) -> bool:
        """Do the attention emitters run here, which take a mask passed as None (`absent_masks`)? Not where a
        subclass picks its own emitters."""
        return type(self).emitter_for is FunctionGen.emitter_for

    def emitter_for(self, node: Node) -> Callable[..., Expr | None] | None:
        """The emitter for `node`: the op's entry in the backend's table (another backend may choose otherwise)."""
        return self.mg.emitters.get(node.op)

    def define(self, node: Node, value: Expr, *, pinned: bool = False) -> None:
        """`node`'s value: repeated at each use if trivial, else a statement; a `pinned` one is never inlined and
        carries the value's shape as a comment (a reshape, as nanoGPT comments its views)."""
        if trivial(value):
            self.alias[node.name] = value
        else:
            self.add(Stmt([(0, (Var(node.name), " = ", value))], node.name,
                          shape_comment(node.type) if pinned else None, pinned, evaluates=[node.name]))

    # -- binding free dims, checking inputs and guards --
    def _bind(self, inputs: list[str]) -> list[str]:
        """`B, T, _ = x.shape` for the free dims this function uses, from the given inputs."""
        need = list(self.free_used)
        bound: set[sympy.Symbol] = set()
        lines = []
        for name in inputs:
            targets = []
            for a in self.type_of(name).axes:
                s = sympy.sympify(a.size)
                s = self._shape_syms.get(s, s)
                if s in need and s not in bound:
                    targets.append(self.free_names[s])
                    bound.add(s)
                else:
                    targets.append("_")
            if any(t != "_" for t in targets):
                lines.append(", ".join(targets) + ("," if len(targets) == 1 else "") + f" = {self.params[name]}.shape")
        for s in need:
            if s not in bound:
                lines.append(f"{self.free_names[s]} = {P.src(self._recover(s, inputs, bound))}")
                bound.add(s)
        return lines

    def _recover(self, s: sympy.Symbol, inputs: list[str], bound: set[sympy.Symbol]) -> Expr:
        """A free dim no input axis is exactly: from an axis of size `s * (known sizes)`."""
        found = self._recovery(s, inputs, set(self.mg.dim_names) | bound)
        if found is None:
            raise InternalError(f"cannot recover the size {s} from the inputs of {self.graph.name}")
        name, i, rest = found
        shape = P.Index(P.Attr(P.Name(self.params[name]), "shape"), (P.Lit(i),))
        return shape if rest == 1 else P.binop("//", shape, self.size(rest))

    def _recovery(self, s: sympy.Basic, inputs: list[str],
                  known: set[sympy.Basic]) -> tuple[str, int, sympy.Basic] | None:
        """(input, axis, k) for an input axis of size `s * k` with `k` over `known` sizes, else None."""
        for name in inputs:
            for i, a in enumerate(self.type_of(name).axes):
                rest = sympy.simplify(sympy.sympify(a.size) / s)
                if s not in rest.free_symbols and rest.free_symbols <= known and sympy.fraction(rest)[1] == 1 \
                        and a.size != rest:
                    return name, i, rest
        return None

    def _model_prologue(self) -> list[str]:
        """Check each input's rank, dtype and sizes, bind the free dims, check the guards, fill defaults."""
        model = self.model
        assert model is not None
        required = [n for n in self.graph.inputs if "default" not in self.graph[n].attrs]
        optional = [n for n in self.graph.inputs if "default" in self.graph[n].attrs]
        lines: list[str] = []
        for name in required + optional:
            p, t = self.params[name], self.type_of(name)
            got = P.FString((f"{p} must be {t}, got ", P.Attr(P.Name(p), "dtype"), " of shape ",
                             P.call("tuple", P.Attr(P.Name(p), "shape"))))
            bad = f"{p}.dim() != {t.rank} or {p}.dtype != torch.{t.dtype.value}"
            lines += [f"if {p} is not None and ({bad}):" if name in optional else f"if {bad}:",
                      *P.statement("    ", "raise ", P.call("ValueError", got), offset=8)]
        body_used = set(self.free_used)
        binding: dict[sympy.Symbol, tuple[str, int]] = {}   # free dim -> the input axis it is read from
        for n in required:
            for i, a in enumerate(self.type_of(n).axes):
                size = sympy.sympify(a.size)
                if size in model.dims.free.values() and size not in model.dims.values:
                    binding.setdefault(size, (n, i))
        bound = set(binding)
        self.free_used = {}
        checks: list[str] = []
        known = set(self.mg.dim_names) | bound
        for name in required + optional:
            p = self.params[name]
            for i, a in enumerate(self.type_of(name).axes):
                if (name, i) in binding.values() or not sympy.sympify(a.size).free_symbols <= known:
                    continue
                got, want = P.Index(P.Attr(P.Name(p), "shape"), (P.Lit(i),)), self.size(a.size)
                cond: Expr = P.binop("!=", got, want)
                if name in optional:
                    cond = P.binop("and", P.binop("is not", P.Name(p), P.Lit(None)), cond)
                msg = P.FString((f"{p} axis {a.name} must have size ", want, ", got ", got))
                checks += [f"if {P.src(cond)}:", *P.statement("    ", "raise ", P.call("ValueError", msg), offset=8)]
        for g in model.guards:
            e = sympy.sympify(g.expr)
            syms = sorted(e.free_symbols, key=lambda s: s.name)
            if not set(syms) <= bound:
                continue
            negated = e.negated if isinstance(e, sympy.core.relational.Relational) else sympy.Not(e)
            parts: list[str | Expr] = [f"{model.name}: requirement {g.text} does not hold for "]
            for j, s in enumerate(syms):
                parts += [(", " if j else "") + f"{s.name}=", self._size_name(s)]
            checks += [f"if {P.src(condition_expr(negated, self._size_name))}:",
                       *P.statement("    ", "raise ", P.call("ValueError", P.FString(tuple(parts))), offset=8)]
        for name in optional:
            node, p = self.graph[name], self.params[name]
            if name in self.given_flags:   # read by `block_args` (absent_masks.py)
                checks.append(f"{self.given_flags[name]} = {p} is not None")
            shape = P.TupleExpr(tuple(self.size(a.size) for a in self.type_of(name).axes))
            fill = P.call("torch.full", shape, P.lit(node.attrs["default"]), dtype=self.dtype(node.tensor_type.dtype),
                          **self.device_kw())
            checks += [f"if {p} is None:", *P.statement("    ", f"{p} = ", fill, offset=8)]
        needed = body_used | set(self.free_used)
        self.free_used = {s: None for s in binding if s in needed}
        return lines + self._bind(required) + checks

    def _shape_comments(self) -> None:
        """`# (B, n_head, T, S)` on each statement that moves axes (reshape, permute, matmul, einsum), as
        nanoGPT comments its views: the shape of the value the statement assigns or returns."""
        said = {s.defines: s.comment for s in self.stmts if s.defines is not None and s.comment is not None}
        for s in self.stmts:
            if s.comment is not None or len(s.lines) != 1 or not any(moves_axes(e) for e in s.exprs()):
                continue
            root = s.defines
            while root in self.same_var:        # `scores = scores + ...`: the shape `scores` was made with
                root = self.same_var[root]
            if root in said:
                s.comment = said[root]
                continue
            if s.defines is not None and s.value is not None:
                node = s.defines
            elif s.lines[0][1][0] == "return " and len(self.graph.outputs) == 1 and \
                    (self.model is None or len(self.model.outputs) == 1):
                node = self.graph.outputs[0]
            else:
                continue
            if node in self.graph.nodes:
                s.comment = shape_comment(self.graph[node].type)

    # -- inlining --
    def _inline(self) -> None:
        """Move each single-use value into the statement that uses it, unless that would reorder effects or
        make the line too long; repeat until nothing moves."""
        changed = True
        while changed:
            changed = self._drop_unused()
            i = 0
            while i < len(self.stmts):
                if self._try_inline(i):
                    changed = True
                else:
                    i += 1

    def _drop_unused(self) -> bool:
        """Values nothing reads (`final, o = scan(...)` with `final` unused): gone if pure, else evaluated for
        their effect only."""
        used = {r for s in self.stmts for e in s.exprs() for r in P.refs(e)}
        changed = False
        for k, s in enumerate(list(self.stmts)):
            value = s.value
            if value is None or s.defines in used or s.defines not in self.graph.nodes or s.pinned:
                continue
            if self._effectful(s):
                self.stmts[k] = Stmt([(0, (value,))], evaluates=s.evaluates, inline_into=False)
            else:
                self.stmts[k] = Stmt([])
            changed = True
        self.stmts = [s for s in self.stmts if s.lines]
        return changed

    def _try_inline(self, i: int) -> bool:
        stmts = self.stmts
        s = stmts[i]
        value = s.value
        if value is None or s.defines is None or s.defines not in self.graph.nodes:
            return False
        node = s.defines
        uses = [j for j, t in enumerate(stmts) for e in t.exprs() for r in P.refs(e) if r == node]
        if len(uses) != 1 or uses[0] <= i or not stmts[uses[0]].inline_into:
            return False
        j = uses[0]
        # a reshape (pinned for its shape comment) may still become the return value, comment and all
        returned = stmts[j].lines == [(0, ("return ", Ref(node)))] and s.comment is not None
        if (s.pinned or spec_named(self.graph, self.graph[node])) and not returned:
            return False
        if self._effectful(s) and any(self._effectful(stmts[k]) for k in range(i + 1, j)):
            return False
        merged = stmts[j].substituted({node: value})
        merged.comment = merged.comment or s.comment
        if self._width(merged) > LINE_LIMIT:
            return False
        merged.evaluates = s.evaluates + merged.evaluates
        stmts[j] = merged
        del stmts[i]
        return True

    def _effectful(self, s: Stmt) -> bool:
        return any(n in self.graph.nodes and self.mg.node_effectful(self.graph[n]) for n in s.evaluates)

    def _width(self, s: Stmt) -> int:
        names = {**{n: self.hints.get(n, n) for e in s.exprs() for n in P.refs(e) + vars_of(e)}, **self.params}
        code = Stmt(s.lines, s.defines)
        return max(max(len(line) for line in self._print(code, names, wrap=False)),
                   max(len(line) for line in self._print(s, names, wrap=False)) - (P.MAX_LINE - LINE_LIMIT)) + 8

    # -- variables --
    def _name_variables(self) -> dict[str, str]:
        """A variable per statement-defined node; a dead variable of the same type is reused (`x = x + ...`,
        as a spec's `x += ...` or `h = f(h)`)."""
        last_use: dict[str, int] = {}
        for k, s in enumerate(self.stmts):
            for e in s.exprs():
                for r in P.refs(e):
                    last_use[r] = k
        names: dict[str, str] = dict(self.params)
        for k, s in enumerate(self.stmts):
            for part in (p for _, parts in s.lines for p in parts):
                for t in vars_of(part) if isinstance(part, Expr) else []:
                    if t in names:
                        continue
                    if t in self.same_var:
                        names[t] = names[self.same_var[t]]
                    else:
                        reuse = self._reusable(s, k, last_use, names) if t == s.defines else None
                        names[t] = reuse or self.names.fresh(self.hint(t))
        return names

    def _reusable(self, s: Stmt, k: int, last_use: dict[str, int], names: dict[str, str]) -> str | None:
        value, node = s.value, s.defines
        if value is None or node is None or node not in self.graph.nodes:
            return None
        first = next(iter(P.refs(value)), None)
        if first is None or first not in names or first not in self.graph.nodes or last_use.get(first) != k:
            return None
        n, src = self.graph[node], self.graph[first]
        if n.type != src.type:
            return None
        derived = n.name == n.op or n.name.startswith(n.op + "_") or re.fullmatch(re.escape(src.name) + r"_\d+",
                                                                                    n.name)
        # a repeat carries its input through the loop: `for layer in self.h: x = layer(x)`
        return names[first] if derived or n.op == "repeat" or self.hint(node) == self.hint(first) else None

    def hint(self, name: str, follow: bool = True) -> str:
        """The variable name a value would like: the spec's name for it (`h = embedding(...)` keeps the node
        `wte` but the variable `h`), a reshape's source's name (`qkv[B, T, (3 n_head head_dim)]`), or that of
        the one same-typed value it feeds (`p = dropout(softmax(s))`: the softmax is `p` too)."""
        if name in self.hints or name not in self.graph.nodes:
            return self.hints.get(name, name)
        node = self.graph[name]
        if spec_named(self.graph, node):
            return name
        if node.meta.get("var"):
            return str(node.meta["var"])
        if node.op == "rearrange":
            src = self.graph[node.inputs[0]]
            if spec_named(self.graph, src) or src.meta.get("var"):
                return self.hint(src.name, follow=False)
        users = self.graph.users(name)
        if follow and len(users) == 1 and (users[0].type == node.type or users[0].op == "rearrange") and \
                name not in self.graph.outputs and (spec_named(self.graph, users[0]) or users[0].meta.get("var")):
            return self.hint(users[0].name, follow=False)
        return name

    # -- printing --
    def _print(self, s: Stmt, names: dict[str, str], wrap: bool = True) -> list[str]:
        def resolve(e: Expr) -> Expr:
            return P.replace(e, lambda x: P.Name(names.get(x.node, x.node)) if isinstance(x, (Ref, Var)) else None)
        lines: list[str] = []
        for ind, parts in s.lines:
            resolved = [resolve(p) if isinstance(p, Expr) else p for p in parts]
            if len(resolved) == 3 and resolved[1] == " = " and resolved[0] == resolved[2]:
                continue  # `h = h`: the value is already in that variable
            comment = s.comment if not lines else None
            if isinstance(resolved[-1], Expr) and wrap:
                prefix = "".join(P.src(p) if isinstance(p, Expr) else p for p in resolved[:-1])
                lines += P.statement("    " * ind, prefix, resolved[-1], comment=comment, offset=8)
            else:
                text = "".join(P.src(p) if isinstance(p, Expr) else p for p in resolved)
                lines.append("    " * ind + text + (f"  # {P.comment_text(comment)}" if comment else ""))
        return lines




def _indent(lines: list[str], level: int) -> list[str]:
    return [("    " * level + line) if line else "" for line in lines]


def _keyword_only_after_defaults(params: list[str]) -> list[str]:
    """`x, mask=None, *, y` where a required input is declared after an optional one: Python refuses a required
    positional parameter after a defaulted one, so from the first default on they are keyword-only."""
    first = next((i for i, p in enumerate(params) if "=" in p), None)
    if first is None or all("=" in p for p in params[first:]):
        return params
    return [*params[:first], "*", *params[first:]]
