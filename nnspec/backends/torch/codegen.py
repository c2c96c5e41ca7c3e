"""PyTorch code generation: a checked model -> one standalone Python file that imports only `torch`.

The file holds one `nn.Module` class per block template (CamelCase of the block's name) and one for the model
(named after the spec); submodules are named after scopes, so `state_dict()` keys are the spec's parameter
paths at every `-O` level. How each op becomes code is the table `EMITTERS` in `emit.py`. This module turns
one graph into statements, inlines single-use values where that keeps the order of effects (dropout's random
stream, batch-norm statistics) and the line short, names the variables, and prints the classes.

Determinism: everything is ordered by the IR (insertion order) or sorted; no set or hash order is printed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import sympy
from torch import nn

from nnspec import __version__
from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.pysrc import Expr, Ref
from nnspec.compiler.ir import DType, Graph, Model, Node, TensorType
from nnspec.errors import InternalError, SpecError

LINE_LIMIT = 100          # longest statement (indent included) that inlining may produce
OPT_LEVELS = (0, 1, 2)

# module-level names of every generated file
GLOBALS = frozenset({"torch", "nn", "F", "WEIGHT_MAPS", "OPTIONS"})
# attributes a scope or parameter must not take on a generated class
RESERVED_ATTRS = frozenset(dir(nn.Module)) | frozenset(vars(nn.Module())) | {"reset_parameters", "dynamic_shapes",
                                                                             "weight_maps"}
STRUCTURE = ("call", "repeat", "scan")


@dataclass(frozen=True)
class Var(Expr):
    """The variable of a node or temporary as an assignment target or loop-carried read; never inlined."""

    node: str


@dataclass
class Stmt:
    """One statement of a generated function: lines of parts (generated text or expressions) with indents."""

    lines: list[tuple[int, tuple[str | Expr, ...]]]
    defines: str | None = None          # node or temporary whose variable the first line assigns
    comment: str | None = None
    pinned: bool = False                # an assignment that is never inlined (shape comments, loop inits)
    inline_into: bool = True            # may single-use values move into this statement
    evaluates: list[str] = field(default_factory=list)  # nodes computed by this statement

    @property
    def value(self) -> Expr | None:
        """The right-hand side when the statement is exactly `var = value`."""
        if self.defines is not None and len(self.lines) == 1:
            parts = self.lines[0][1]
            if len(parts) == 3 and parts[0] == Var(self.defines) and parts[1] == " = ":
                return parts[2]  # type: ignore[return-value]
        return None

    def exprs(self) -> list[Expr]:
        return [p for _, parts in self.lines for p in parts if isinstance(p, Expr)]

    def substituted(self, mapping: dict[str, Expr]) -> Stmt:
        lines = [(ind, tuple(P.substitute(p, mapping) if isinstance(p, Expr) else p for p in parts))
                 for ind, parts in self.lines]
        return Stmt(lines, self.defines, self.comment, self.pinned, self.inline_into, list(self.evaluates))


# ---- sizes and conditions ----
def size_expr(e: sympy.Basic, name_of: Any) -> Expr:
    """A sympy size over dims as Python: `3 * N_EMBD`, `T // 2`, `(H - 16) // 16 + 1`."""
    e = sympy.sympify(e)
    if e.is_Integer:
        return P.Lit(int(e))
    if isinstance(e, sympy.Symbol):
        return name_of(e)
    num, den = sympy.fraction(sympy.together(e.args[0] if isinstance(e, sympy.floor) else e))
    if den != 1:   # an exact division (sizes are integers), or a floor
        return P.binop("//", size_expr(sympy.expand(num), name_of), size_expr(den, name_of))
    if isinstance(e, sympy.floor):
        return size_expr(num, name_of)
    if e.is_Add:
        terms = e.as_ordered_terms()
        out = size_expr(terms[0], name_of)
        for t in terms[1:]:
            negative = t.as_coeff_Mul()[0] < 0
            out = P.binop("-" if negative else "+", out, size_expr(-t if negative else t, name_of))
        return out
    elif e.is_Mul:
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:
            return P.Unary("-", size_expr(rest, name_of))
        factors = ([P.Lit(int(coeff))] if coeff != 1 else []) + [size_expr(f, name_of)
                                                                 for f in rest.as_ordered_factors()]
        out = factors[0]
        for f in factors[1:]:
            out = P.binop("*", out, f)
        return out
    elif e.is_Pow and e.exp.is_Integer and e.exp > 0:
        return P.binop("**", size_expr(e.base, name_of), P.Lit(int(e.exp)))
    elif isinstance(e, sympy.Mod):
        return P.binop("%", size_expr(e.args[0], name_of), size_expr(e.args[1], name_of))
    elif isinstance(e, (sympy.Min, sympy.Max)):
        return P.call("min" if isinstance(e, sympy.Min) else "max", *[size_expr(a, name_of) for a in e.args])
    raise InternalError(f"cannot generate code for the size {e}")


_RELATIONS = {sympy.Le: "<=", sympy.Lt: "<", sympy.Ge: ">=", sympy.Gt: ">", sympy.Eq: "==", sympy.Ne: "!="}


def condition_expr(e: sympy.Basic, name_of: Any) -> Expr:
    """A sympy relation or boolean over sizes as a Python condition."""
    for kind, op in _RELATIONS.items():
        if isinstance(e, kind):
            return P.binop(op, size_expr(e.lhs, name_of), size_expr(e.rhs, name_of))
    if isinstance(e, (sympy.And, sympy.Or)):
        parts = [condition_expr(a, name_of) for a in sorted(e.args, key=str)]
        out = parts[0]
        for p in parts[1:]:
            out = P.binop("and" if isinstance(e, sympy.And) else "or", out, p)
        return out
    if isinstance(e, sympy.Not):
        return P.Unary("not", condition_expr(e.args[0], name_of))
    raise InternalError(f"cannot generate code for the condition {e}")


# ---- names ----
def camel(name: str) -> str:
    """`layer` -> `Layer`, `self_attention` -> `SelfAttention`, `mlp_1` -> `Mlp1`."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Block"


class Names:
    """Hands out unique identifiers in one namespace, never a keyword or a Python builtin."""

    def __init__(self, reserved: set[str] | frozenset[str] = frozenset()) -> None:
        self.taken: set[str] = set(reserved)

    def fresh(self, hint: str) -> str:
        base = re.sub(r"\W", "_", hint).strip("_") if not P.is_identifier(hint) else hint
        if not base or not P.is_identifier(base) or not base.isascii():
            base = "v_" + re.sub(r"[^0-9A-Za-z_]", "_", hint)
        if base in P.BUILTIN_NAMES:
            base += "_"
        name, i = base, 1
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name


def refuse(what: str, name: str, why: str, span: Any = None) -> SpecError:
    return SpecError("E004", f"{what} '{name}' cannot be used in generated PyTorch code: {why}; choose another name",
                     span)


# ---- the members of one class ----
@dataclass
class Member:
    """One attribute of a generated class: a torch module, a block, a list of blocks or a container."""

    attr: str
    ctor: Expr | None                                 # `self.attr = ctor`; None for plain parameters
    inits: list[Expr] = field(default_factory=list)   # reset_parameters() statements
    # other __init__ statements: `target = value` pairs or calls (plain parameters, buffers, containers)
    setup: list[Expr | tuple[Expr, Expr]] = field(default_factory=list)

    def init_lines(self) -> list[str]:
        lines = [] if self.ctor is None else [f"self.{self.attr} = {P.src(self.ctor)}"]
        return lines + [f"{P.src(e[0])} = {P.src(e[1])}" if isinstance(e, tuple) else P.src(e) for e in self.setup]


@dataclass
class ClassPlan:
    name: str
    graph: Graph
    members: list[Member] = field(default_factory=list)   # in the order the graph first uses them
    module_of: dict[str, tuple[str, str]] = field(default_factory=dict)  # param/buffer node -> (attr, module kind)


class ModuleGen:
    """Generates the file for one model. Another backend (Triton) subclasses it: `function_gen` makes each
    `forward`, `file_header` and `preamble` add the imports and the module-level code it needs."""

    # how the file describes its dependencies, after the generator's name
    needs = "Needs only PyTorch."
    function_gen: ClassVar[type[FunctionGen]]
    reserved_globals: frozenset[str] = frozenset()   # module-level names the subclass's file defines

    def __init__(self, model: Model, *, spec_text: str, doc: str | None, opt: int = 0) -> None:
        if opt not in OPT_LEVELS:
            raise ValueError(f"opt must be one of {', '.join(map(str, OPT_LEVELS))}, got {opt!r}")
        from nnspec.backends.torch.emit import HELPERS
        self.model, self.doc, self.opt = model, doc, opt
        self.spec_hash = hashlib.sha256(spec_text.encode("utf-8")).hexdigest()
        self.globals = Names(GLOBALS | P.BUILTIN_NAMES | set(HELPERS) | self.reserved_globals)
        self.helpers: dict[str, None] = {}
        self.dim_names: dict[sympy.Symbol, str] = {}
        declared = list(model.dims.declared)
        for sym in sorted(model.dims.values, key=lambda s: (s.name not in declared,
                                                            declared.index(s.name) if s.name in declared else 0,
                                                            s.name)):
            self.dim_names[sym] = self.globals.fresh(sym.name.upper())
        self.order = self._template_order()
        self.model_class = self.globals.fresh(camel(model.name))
        self.class_names = {name: self.globals.fresh(camel(name)) for name in self.order}
        self._effectful: dict[str, bool] = {}
        self.explain: list[str] = []     # what the backend chose, for `--explain`

    def note(self, line: str) -> None:
        if line not in self.explain:
            self.explain.append(line)

    def _template_order(self) -> list[str]:
        """Templates the model uses, callees before callers (depth-first post-order)."""
        out: list[str] = []

        def visit(graph: Graph) -> None:
            for node in graph:
                if node.op in STRUCTURE and node.attrs["block"] not in out:
                    visit(self.model.templates[node.attrs["block"]])
                    if node.attrs["block"] not in out:
                        out.append(node.attrs["block"])
        visit(self.model.graph)
        return out

    def _passes_note(self) -> str:
        """`, passes cse,dce` when the passes that ran (`optimize` records them) are not the level's own."""
        from nnspec.compiler.passes import PIPELINES
        ran = self.model.graph.meta.get("passes")
        return "" if ran is None or ran == PIPELINES.get(self.opt) else f", passes {','.join(ran) or 'none'}"

    def graph_effectful(self, graph: Graph) -> bool:
        """Does running the graph draw random numbers or update state?"""
        if graph.name not in self._effectful:
            self._effectful[graph.name] = any(self.node_effectful(n) for n in graph)
        return self._effectful[graph.name]

    def node_effectful(self, node: Node) -> bool:
        from nnspec.backends.torch.emit import EFFECTFUL
        if node.op in STRUCTURE:
            return self.graph_effectful(self.model.templates[node.attrs["block"]])
        return node.op in EFFECTFUL or (node.op == "attention" and node.attrs.get("dropout", 0.0) > 0)

    def helper(self, name: str) -> Expr:
        from nnspec.backends.torch.emit import HELPERS
        for dep in HELPERS[name][1]:
            self.helper(dep)
        self.helpers[name] = None
        return P.Name(name)

    def check_attr(self, what: str, name: str, node: Node) -> None:
        if not P.is_identifier(name):
            raise refuse(what, name, "it is not a Python identifier", node.span)
        if name in RESERVED_ATTRS:
            raise refuse(what, name, "it is an attribute of torch.nn.Module", node.span)

    # -- the file --
    def generate(self) -> str:
        from nnspec.backends.torch.emit import HELPERS
        classes = [self._class(self.model.templates[t], self.class_names[t], None) for t in self.order]
        classes.append(self._class(self.model.graph, self.model_class, self.model))
        out = [f"# Generated by nnspec {__version__} (-O{self.opt}{self._passes_note()}) from the spec "
               f"{self.model.name}.",
               f"# Spec sha256: {self.spec_hash}",
               f"# Do not edit: change the spec and run `nnspec compile` again. {self.needs}",
               "import torch",
               *(["import torch.nn.functional as F"] if _uses_functional(classes, self.helpers) else []),
               "from torch import nn",
               *self.file_header(),
               "",
               "# Sizes this file was compiled for (`nnspec compile --set NAME=VALUE` changes them)."]
        out += [f"{name} = {int(self.model.dims.values[sym])}" for sym, name in self.dim_names.items()]
        out += ["# Options it was compiled with, for reference: the code below already specialises on them."]
        options = [f"    {P.string(k)}: {P.src(P.lit(_plain(v)))}," for k, v in self.model.options.items()]
        out += ["OPTIONS = {", *options, "}"] if options else ["OPTIONS = {}"]
        out += self._weight_maps()
        for name, (text, _) in HELPERS.items():
            if name in self.helpers:
                out += ["", "", text.strip("\n")]
        for text in self.preamble():
            out += ["", "", text.strip("\n")]
        for text in classes:
            out += ["", "", text]
        return "\n".join(out) + "\n"

    def file_header(self) -> list[str]:
        """Import lines after torch's (none for the torch backend)."""
        return []

    def preamble(self) -> list[str]:
        """Module-level code between the helpers and the classes (none for the torch backend)."""
        return []

    def _weight_maps(self) -> list[str]:
        """The spec's weight mappings as data, read by `nnspec.load_weights` / `save_weights`."""
        if not self.model.weight_maps:
            return ["WEIGHT_MAPS = {}"]
        lines = ["# Spec parameter path -> checkpoint key (`{i}` matches an index) and transforms, by source;",
                 "# nnspec.load_weights and nnspec.save_weights apply them.",
                 "WEIGHT_MAPS = {"]
        for source, rules in self.model.weight_maps.items():
            lines.append(f"    {P.string(source)}: [")
            for ours, theirs, transforms in rules:
                rule = P.TupleExpr((P.Lit(ours), P.Lit(theirs), P.TupleExpr(tuple(P.Lit(t) for t in transforms))))
                lines += P.statement("        ", "", rule, ",")
            lines.append("    ],")
        return [*lines, "}"]

    def _class(self, graph: Graph, name: str, model: Model | None) -> str:
        from nnspec.backends.torch.members import plan_members
        plan = plan_members(self, graph, name)
        forward = self.function_gen(self, graph, plan, model).generate()
        lines = [f"class {name}(nn.Module):", *self._docstring(graph, model)]
        if model is not None:
            lines += ["", "    weight_maps = WEIGHT_MAPS"]
        lines += ["", "    def __init__(self) -> None:", "        super().__init__()"]
        lines += ["        " + line for m in plan.members for line in m.init_lines()]
        inits = [e for m in plan.members for e in m.inits]
        if inits:
            lines += ["        self.reset_parameters()", "", "    def reset_parameters(self) -> None:",
                      '        """Initialise the parameters as the spec says."""']
            lines += [f"        {P.src(e)}" for e in inits]
        lines += ["", *forward]
        if model is not None:
            lines += ["", *self._dynamic_shapes(model)]
        return "\n".join(lines)

    def _docstring(self, graph: Graph, model: Model | None) -> list[str]:
        if model is None:
            ins = ", ".join(str(graph[n].type) for n in graph.inputs)
            outs = ", ".join(str(graph[n].type) for n in graph.outputs)
            return P.docstring(f"Block {graph.meta.get('block', graph.name)}: ({ins}) -> {outs}.", "    ")
        ins = ", ".join(f"{k}: {graph[v].type}" for k, v in model.inputs.items())
        outs = ", ".join(f"{k}: {graph[v].type}" for k, v in model.outputs.items())
        returns = "the output tensor" if len(model.outputs) == 1 else "a dict of the outputs by name"
        text = (self.doc.strip() + "\n\n" if self.doc and self.doc.strip() else "") + \
            f"forward({', '.join(model.inputs)}) returns {returns}.\ninputs: {ins}\noutputs: {outs}"
        return P.docstring(text, "    ")

    def _dynamic_shapes(self, model: Model) -> list[str]:
        """`dynamic_shapes()` for `torch.export.export`: one `Dim` per free dim, bounded by the guards."""
        free = sorted((s for s in model.dims.free.values() if s not in model.dims.values), key=lambda s: s.name)
        bounds: dict[sympy.Symbol, dict[str, int]] = {s: {} for s in free}
        multiple: dict[sympy.Symbol, int] = {s: 1 for s in free}
        for g in model.guards:
            e = sympy.sympify(g.expr)
            # `T % 2 == 0` (a split of T): T = 2 * a Dim of its own
            if isinstance(e, sympy.Eq) and e.rhs == 0 and isinstance(e.lhs, sympy.Mod) and e.lhs.args[0] in bounds \
                    and e.lhs.args[1].is_Integer:
                multiple[e.lhs.args[0]] = int(sympy.ilcm(multiple[e.lhs.args[0]], e.lhs.args[1]))
            if not isinstance(e, (sympy.Le, sympy.Lt, sympy.Ge, sympy.Gt)):
                continue
            if e.lhs.is_Integer and e.rhs in bounds:
                e = e.reversed
            if e.lhs in bounds and e.rhs.is_Integer:
                k, b = int(e.rhs), bounds[e.lhs]
                if isinstance(e, (sympy.Le, sympy.Lt)):
                    b["max"] = min(k - isinstance(e, sympy.Lt), b.get("max", k))
                else:
                    b["min"] = max(k + isinstance(e, sympy.Gt), b.get("min", k))
        names = Names(P.BUILTIN_NAMES | GLOBALS | set(self.dim_names.values()))
        lines = ["    @staticmethod",
                 "    def dynamic_shapes() -> dict:",
                 '        """`dynamic_shapes` for torch.export.export: each free dim a `Dim`, bounded as the spec '
                 'requires."""']
        var: dict[sympy.Symbol, str] = {}
        for s in free:
            var[s] = names.fresh(s.name)
            k = multiple[s]
            limits = {"max": bounds[s]["max"] // k} if "max" in bounds[s] else {}
            if "min" in bounds[s]:
                limits["min"] = -(-bounds[s]["min"] // k)
            dim: Expr = P.Call(P.dotted("torch.export.Dim"), (P.Lit(s.name if k == 1 else f"_{s.name}"),),
                               tuple((key, P.Lit(v)) for key, v in sorted(limits.items())))
            lines.append(f"        {var[s]} = {P.src(dim if k == 1 else P.binop('*', P.Lit(k), dim))}")
        entries = []
        for name, node in model.inputs.items():
            axes = tuple((P.Lit(i), P.Name(var[a.size])) for i, a in enumerate(model.graph[node].tensor_type.axes)
                         if a.size in var)
            entries.append((P.Lit(name), P.DictExpr(axes) if axes else P.Lit(None)))
        lines.append(f"        return {P.src(P.DictExpr(tuple(entries)))}")
        return lines


def member(path: str) -> Expr:
    """`self.h.attn.c_attn` for a dotted path."""
    e: Expr = P.Name("self")
    for part in path.split("."):
        e = P.Attr(e, part)
    return e


def _uses_functional(classes: list[str], helpers: dict[str, None]) -> bool:
    from nnspec.backends.torch.emit import HELPERS
    code = [line for text in classes for line in text.split("\n") if not line.lstrip().startswith(("#", '"'))]
    code += [HELPERS[h][0] for h in helpers]
    return any(re.search(r"(?<![\w.])F\.", line) for line in code)


def _plain(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)


def _indent(lines: list[str], level: int) -> list[str]:
    return [("    " * level + line) if line else "" for line in lines]


# ---- one forward() ----
class FunctionGen:
    """The statements of one graph's `forward`; the op emitters in `emit.py` build them through this."""

    def __init__(self, mg: ModuleGen, graph: Graph, plan: ClassPlan, model: Model | None) -> None:
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
        self.node: Node | None = None
        self._device: Expr | None = None
        self._temps = 0

    # -- for emitters --
    def type_of(self, name: str) -> TensorType:
        t = self.types[name]
        if not isinstance(t, TensorType):
            raise InternalError(f"{name} in {self.graph.name} is not a tensor")
        return t

    def in_type(self, node: Node, i: int) -> TensorType:
        return self.type_of(node.inputs[i])

    def size(self, e: sympy.Basic) -> Expr:
        return size_expr(e, self._size_name)

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
                    if node.op in ("param", "buffer"):
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
        from nnspec.backends.torch.emit import EMITTERS, PINNED
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
            emitter = self.emitter_for(node, EMITTERS)
            if emitter is None:
                raise InternalError(f"no PyTorch code generation for op {node.op!r}")
            ins = [self.value(i) for i in node.inputs]
            value = emitter(self, node, ins)
            if value is None:           # the emitter wrote the defining statements itself
                continue
            if _trivial(value):
                self.alias[node.name] = value
            else:
                pinned = node.op in PINNED
                self.add(Stmt([(0, (Var(node.name), " = ", value))], node.name,
                              _shape_comment(node.type) if pinned else None, pinned, evaluates=[node.name]))
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
            params.append(f"{pname}: torch.Tensor" + (" | None = None" if optional else ""))
        params += self.extra_params
        if model is not None:
            returns = "torch.Tensor" if len(model.outputs) == 1 else "dict[str, torch.Tensor]"
        else:
            n = len(self.graph.outputs)
            returns = "torch.Tensor" if n == 1 else f"tuple[{', '.join(['torch.Tensor'] * n)}]"
        if not method:
            return [*P.signature("", f"def {fn_name}", params, f" -> {returns}:"), *_indent(body, 1)]
        return [*P.signature("    ", f"def {fn_name}", params, f" -> {returns}:"), *_indent(body, 2)]

    def emitter_for(self, node: Node, table: dict[str, Any]) -> Any:
        """The emitter for `node`: the op's entry in the table (another backend may choose otherwise)."""
        return table.get(node.op)

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
        known = set(self.mg.dim_names) | bound
        for name in inputs:
            for i, a in enumerate(self.type_of(name).axes):
                rest = sympy.simplify(sympy.sympify(a.size) / s)
                if s not in rest.free_symbols and rest.free_symbols <= known and sympy.fraction(rest)[1] == 1 \
                        and a.size != rest:
                    shape = P.Index(P.Attr(P.Name(self.params[name]), "shape"), (P.Lit(i),))
                    return shape if rest == 1 else P.binop("//", shape, self.size(rest))
        raise InternalError(f"cannot recover the size {s} from the inputs of {self.graph.name}")

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
            if s.comment is not None or len(s.lines) != 1 or not any(_moves_axes(e) for e in s.exprs()):
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
                s.comment = _shape_comment(self.graph[node].type)

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
        names = {**{n: self.hints.get(n, n) for e in s.exprs() for n in P.refs(e) + _vars(e)}, **self.params}
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
                for t in _vars(part) if isinstance(part, Expr) else []:
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


ModuleGen.function_gen = FunctionGen


def spec_named(graph: Graph, node: Node) -> bool:
    """Does the node carry a name the spec's author gave it (a variable), not one nnspec derived from an op,
    a scope or an input (`einsum_1`, `c_attn`, `k_1`)?"""
    stems = {node.op}
    if node.op in STRUCTURE:
        stems.add(node.attrs["scope"])
    for i in node.inputs:
        stems.add(i)
        if graph[i].op in ("param", "buffer"):
            stems.add(graph[i].attrs["path"].split(".")[0])
    return not any(node.name == s or re.fullmatch(re.escape(s) + r"_\d+", node.name) for s in stems)


def _vars(e: Expr) -> list[str]:
    if isinstance(e, Var):
        return [e.node]
    return [v for c in P.children(e) for v in _vars(c)]


def _trivial(e: Expr) -> bool:
    """Values cheap and pure enough to repeat at each use rather than keep in a variable."""
    if isinstance(e, (P.Name, P.Lit, Ref)):
        return True
    if isinstance(e, P.Attr):
        return _trivial(e.obj)
    if isinstance(e, P.TupleExpr):  # a tuple of values (a scan's result), taken apart by getitem
        return all(_trivial(i) for i in e.items)
    if isinstance(e, P.Call):  # float("-inf")
        return e.fn == P.Name("float") and len(e.args) == 1 and isinstance(e.args[0], P.Lit) and not e.kwargs
    return False


MOVES_AXES = frozenset({"reshape", "view", "permute", "transpose", "movedim", "flatten", "unflatten"})


def _moves_axes(e: Expr) -> bool:
    """Does the expression reshape, permute or contract (`@`, `torch.einsum`)?"""
    if isinstance(e, P.Call) and ((isinstance(e.fn, P.Attr) and e.fn.name in MOVES_AXES) or
                                  e.fn == P.dotted("torch.einsum")):
        return True
    if isinstance(e, P.BinOp) and e.op == "@":
        return True
    return any(_moves_axes(c) for c in P.children(e))


def _shape_comment(t: Any) -> str | None:
    return "(" + ", ".join(t.names) + ")" if isinstance(t, TensorType) else None


def generate(model: Model, *, spec_text: str, doc: str | None = None, opt: int = 0) -> str:
    """The Python source of one standalone module for `model` (see the module docstring)."""
    return ModuleGen(model, spec_text=spec_text, doc=doc, opt=opt).generate()
