"""Writing lifted values as blocks and a body: one block per module (named after it), a `repeat` where a module
list's layers render to the same block, single-use values inlined, the rest bound to variables."""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Callable

from nnspec.importer.alike import passed_twice, slots
from nnspec.importer.errors import ImportFailure
from nnspec.importer.graph import L, annotation

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@functools.cache
def _reserved() -> frozenset[str]:
    from nnspec.compiler import builtins  # noqa: F401 - registers the built-in functions
    from nnspec.compiler.elaborate import BUILTINS, CONSTANTS

    return frozenset(BUILTINS) | frozenset(CONSTANTS)


def _is_view(n: L) -> bool:
    """`n` is its one operand written as is (a torch layout change with nothing to say in the language)."""
    return n.fmt == "{0}" and len(n.refs) == 1 and not n.annot and not n.fixed and not n.names and n.member is None


def _instance(scope: str) -> tuple[str, int]:
    """`(P, k)` for the scope of the k-th later call `P@k` of block P; `(scope, 0)` for any other scope."""
    m = re.fullmatch(r"(.*)@(\d+)", scope)
    return (m.group(1), int(m.group(2))) if m else (scope, 0)


def _parent(scope: str, scopes: set[str]) -> str:
    parts = scope.split(".")
    for k in range(len(parts) - 1, 0, -1):
        p = ".".join(parts[:k])
        if p in scopes:
            return p
    return ""


class Renderer:
    not_variables: frozenset[str] = frozenset()      # names a variable may not take (the dims)

    def __init__(self, outputs: list[L], layer_counts: dict[str, str], modules: set[str],
                 count_name: Callable[[int], str] = str) -> None:
        self.outputs = outputs
        self.layer_counts = layer_counts             # module-list path -> dim naming its length
        self.count_name = count_name                 # a shared repeat's count -> the dim naming it
        self.nodes: list[L] = []
        self.refcount: Counter[int] = Counter()
        seen: set[int] = set()
        stack = list(outputs)
        while stack:
            n = stack.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            self.nodes.append(n)
            deps = list(n.refs) + ([n.member[0]] if n.member else [])
            for r in deps:
                self.refcount[id(r)] += 1
                stack.append(r)
        for out in outputs:
            self.refcount[id(out)] += 1
        self.scopes = {n.scope for n in self.nodes if n.scope}
        for s in list(self.scopes):
            # a module computing nothing itself (BertLayer, BertAttention) is still a block around its children
            parts = s.split(".")
            self.scopes.update(".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in modules)
        self.parent = {s: _parent(s, self.scopes) for s in self.scopes}
        self.blocks: dict[str, str] = {}             # block name -> text (signature: body)
        self.block_of: dict[str, str] = {}          # scope -> block name
        self.weight_scopes: dict[str, str] = {}
        # a module list layer's scope -> indices of its carried inputs, in the order of the results fed back to them
        self.carried: dict[str, tuple[int, ...]] = {}
        self.unrolled: set[str] = set()             # module lists whose layers are separate calls (`layers_0`)

    # --- scope structure --------------------------------------------------------------------------------------
    def children(self, s: str) -> list[str]:
        return sorted((c for c in self.scopes if self.parent[c] == s), key=self.first_idx)

    def within(self, n: L, s: str) -> bool:
        return s == "" or n.scope == s or (n.scope.startswith(s + ".") and self._chain(n.scope, s))

    def _chain(self, inner: str, outer: str) -> bool:
        while inner and inner != outer:
            inner = self.parent.get(inner, "")
        return inner == outer

    def first_idx(self, s: str) -> float:
        return min(n.idx for n in self.nodes if self.within(n, s))

    def ins(self, s: str) -> list[L]:
        got: dict[int, L] = {}
        for n in self.nodes:
            if not self.within(n, s):
                continue
            for r in list(n.refs) + ([n.member[0]] if n.member else []):
                if not self.within(r, s):
                    got[id(r)] = r
        return sorted(got.values(), key=lambda r: r.idx)

    def outs(self, s: str) -> list[L]:
        got: dict[int, L] = {}
        for n in self.nodes:
            if self.within(n, s):
                continue
            for r in n.refs:
                if self.within(r, s):
                    got[id(r)] = r
        for out in self.outputs:
            if self.within(out, s):
                got[id(out)] = out
        return sorted(got.values(), key=lambda r: r.idx)

    # --- rendering ----------------------------------------------------------------------------------------------
    def render(self, s: str) -> tuple[list[str], dict[int, str], list[L]]:
        """Statements of scope `s`, the names of its parameters (by value), and its parameters in order."""
        names: dict[int, str] = {}
        used: set[str] = set()
        reserved = _reserved()

        def fresh(hint: str) -> str:
            base = hint if _IDENT.match(hint) and hint not in ("S", "T", "B") else "h"
            if base in reserved:
                base = f"{base}_out"         # a variable may not take a built-in function's name either
            cand, k = base, 1
            while cand in used or cand in self.not_variables:
                k += 1
                cand = f"{base}{k}"
            used.add(cand)
            return cand

        params = self.params_of(s) if s else []
        preset: set[int] = set()
        if not s:
            for n in self.nodes:     # the model's inputs are named already
                if not n.refs and n.idx < 0 and _IDENT.match(n.fmt):
                    names[id(n)] = n.fmt
                    preset.add(id(n))
                    used.add(n.fmt)
        for p in params:
            names[id(p)] = fresh("x")
        for n in self.nodes:
            if n.scope == s and n.member is None and n.names:
                n_names = [fresh(h) for h in n.names]
                names[id(n)] = ", ".join(n_names)
                n.names = n_names
        stmts: list[tuple[float, str]] = []
        child_vars: dict[int, str] = {}
        children = self.children(s)
        scans = {getattr(n, "scan_body", None): n for n in self.nodes if getattr(n, "scan_body", None)}
        for c in children:
            if c in scans:                       # a scan's step: written as a block, called by the scan
                ins = self.ins(c)
                self.carried[c] = (next((i for i, r in enumerate(ins) if r is scans[c].refs[0]), 0),)
                continue
            for r in self.ins(c):
                if r.scope == s and r.member is None:
                    r.bind = True
        returned = {id(o) for o in self.outs(s)} if s else set()
        bound = [n for n in self.nodes if n.scope == s and n.member is None and (
            n.bind or n.annot or self.refcount[id(n)] > 1 or n.names or id(n) in returned) and id(n) not in preset]
        # a layout-only view (`reshape` of tokens to `[(B T), H]`) of a named value is that name: not bound again
        named = {id(n) for n in bound} | set(names)
        # (a child block's result as this scope names it, `boundary.py`, is the child call's variable)
        bound = [n for n in bound if not (_is_view(n) and id(n) not in returned and (
            id(n.refs[0]) in named or n.refs[0].scope != s))]
        bound.sort(key=lambda n: n.idx)
        for n in bound:
            if n.fixed:
                used.add(n.fixed)
                names[id(n)] = n.fixed
            elif not n.names:
                names[id(n)] = fresh(n.hint)
        for group in self._groups([c for c in children if c not in scans]):
            stmts += [(pos, stmt) for stmt, pos in self._call(group, s, names, fresh, child_vars)]
        for c in scans:
            if c in children:
                self.block(c)

        def ref(r: L) -> str:
            if id(r) in child_vars:
                return child_vars[id(r)]
            if r.member is not None:
                tup, j = r.member
                return tup.names[j]
            if id(r) in names:
                return names[id(r)]
            return text(r)

        def text(n: L) -> str:
            if getattr(n, "scan_body", None):    # a scan reads its step block by name, not its step's values
                args = [ref(r) if is_atom(r) else f"({ref(r)})" for r in n.refs[:n.fmt.count("{")]]
                return n.fmt.format(*args).replace(f"<<block:{n.scan_body}>>", self.block_of[n.scan_body])
            args = []
            for r in n.refs:
                t = ref(r)
                if not is_atom(r) and n.fmt != "{0}":      # a value written as its one operand needs no brackets
                    t = f"({t})"
                args.append(t)
            return n.fmt.format(*args)

        def is_atom(r: L) -> bool:
            if id(r) in names or id(r) in child_vars or r.member is not None:
                return True
            if r.fmt == "{0}" and len(r.refs) == 1:
                return is_atom(r.refs[0])
            return r.atom

        self._ref = ref
        for n in bound:
            if n.names:
                stmts.append((n.idx, f"{names[id(n)]} = {text(n)}"))
                continue
            var = names[id(n)]
            target = f"{var}[{n.annot}]" if n.annot else var
            stmts.append((n.idx, f"{target} = {text(n)}"))
        lines = [st for _, st in sorted(stmts, key=lambda t: t[0])]
        self._names = names
        return lines, names, params

    def _groups(self, children: list[str]) -> list[list[str]]:
        """Consecutive children `P.0, P.1, ...` form one group (a repeat candidate); others stand alone."""
        groups: list[list[str]] = []
        for c in children:
            head, _, last = c.rpartition(".")
            base, k = _instance(c)
            if k and groups and _instance(groups[-1][-1]) == (base, k - 1):
                groups[-1].append(c)            # later calls `P@1, P@2, ...` of block P: a shared-weight repeat
            elif last.isdigit() and groups and groups[-1][-1].rpartition(".")[0] == head and \
                    int(groups[-1][-1].rpartition(".")[2]) == int(last) - 1:
                groups[-1].append(c)
            else:
                groups.append([c])
        return groups

    def _call(self, group: list[str], s: str, names: dict[int, str], fresh, child_vars: dict[int, str]) \
            -> list[tuple[str, float]]:
        """The statements calling the children in `group` (a repeat, or calls), each with its position."""
        head, _, last = group[0].rpartition(".")
        shared = _instance(group[-1])[1] > 0      # one block called repeatedly: `repeat(..., shared=true)`
        listed = (last.isdigit() and head in self.layer_counts) or shared   # `repeat` or refuse
        if listed:
            self.carried.update(self._carry_indices(group))
        saved = dict(self.blocks), dict(self.block_of)
        texts = [self.block(c) for c in group]
        first = group[0]
        attr = _instance(first)[0].rpartition(".")[2]      # a later call's scope `P@1.inner@2` is named `inner`
        ins = self.params_of(first)
        outs = self.outs(group[-1])
        pos = max([self.first_idx(first)] + [r.idx + 0.01 for r in ins if not self.within(r, s) or True])
        carry = len(self.carried.get(first, (0,)))      # values the repeat carries: `(h, e)` for two
        same = len(set(texts)) == 1 and self._chains(group) and (len(group) > 1 or (listed and len(outs) == carry))
        init = None if same or not listed or len(group) < 2 or len(set(texts[1:])) != 1 else passed_twice(self, group)
        if init is not None:
            # the first call passes one value to several parameters (`repeat(2, gate, x, x)`): the block is written
            # from the second call, whose parameters all differ, and the first call checked against it (`alike.py`)
            self.blocks, self.block_of = saved
            for c in group[1:]:
                self.block(c)
            self.block_of[first] = self.block_of[group[1]]
            ins, same = [init, *self.params_of(group[1])[1:]], True
        if listed and not same and shared:
            raise ImportFailure(f"the calls of block {first} differ or do not chain (each feeding the next as its "
                                "first input), which `repeat` cannot write", op="repeat", module=first)
        if listed and not same:
            # a module list whose layers differ (or do not chain): each layer its own call, `name=layers_0`, ...
            calls = {c: f"{head.rpartition('.')[2]}_{c.rpartition('.')[2]}" for c in group}
            taken = {_instance(c)[0].rpartition(".")[2] for c in self.scopes if self.parent[c] == s}
            if taken & set(calls.values()):
                raise ImportFailure(f"the layers of module list {head} differ, and their names as separate calls "
                                    f"({', '.join(sorted(taken & set(calls.values())))}) are taken", op="repeat",
                                    module=head)
            self.unrolled.add(head)
            return [self._one(c, s, names, fresh, child_vars, attr) for c, attr in calls.items()]
        args = [self._arg(r, s, names, child_vars) for r in ins]
        if same:
            # each layer's results feed the next layer's carried parameters, member by member: one variable each
            vars_ = [fresh(o.hint) for o in outs] or [fresh("h")]
            for c in group:
                for o, v in zip(self.outs(c), vars_, strict=False):
                    child_vars[id(o)] = v
            # a tuple carry is written as the language spells it: `h, e = repeat(N, layer, (h, e), adj, ...)`
            args = [args[0] if carry == 1 else f"({', '.join(args[:carry])})", *args[carry:]]
        if same and shared:
            return [(f"{', '.join(vars_)} = repeat({self.count_name(len(group))}, {self.block_of[first]}, "
                     f"{', '.join(args)}, name={attr}, shared=true)", pos)]
        if same:
            head = first.rpartition(".")[0]
            count = self.layer_counts.get(head, str(len(group)))
            name = self.block_of[first]
            list_name = head.rpartition(".")[2]
            return [(f"{', '.join(vars_)} = repeat({count}, {name}, {', '.join(args)}, name={list_name})", pos)]
        # one call, or children that differ: each called in turn
        return [self._one(c, s, names, fresh, child_vars, c.rpartition(".")[2]) for c in group]

    def _one(self, c: str, s: str, names: dict[int, str], fresh, child_vars: dict[int, str], attr: str) \
            -> tuple[str, float]:
        """`outs = block(ins, name=attr)` for child `c`, placed after what it reads."""
        ins, outs = self.params_of(c), self.outs(c)
        args = [self._arg(r, s, names, child_vars) for r in ins]
        pos = max([self.first_idx(c)] + [r.idx + 0.01 for r in ins])
        vars_ = [fresh(o.hint) for o in outs]
        for o, v in zip(outs, vars_, strict=False):
            child_vars[id(o)] = v
        return f"{', '.join(vars_)} = {self.block_of[c]}({', '.join(args)}, name={attr})", pos

    def _arg(self, r: L, s: str, names: dict[int, str], child_vars: dict[int, str]) -> str:
        if id(r) in child_vars:
            return child_vars[id(r)]
        if id(r) in names:
            return names[id(r)]
        if _is_view(r) and (id(r.refs[0]) in names or id(r.refs[0]) in child_vars):
            return self._arg(r.refs[0], s, names, child_vars)
        r.bind = True
        return r.hint

    def params_of(self, s: str) -> list[L]:
        """A block's parameters: what flows in, in graph order, but a repeated layer's carried value first."""
        ins = self.ins(s)
        ks = self.carried.get(s, (0,))
        if any(k >= len(ins) for k in ks):
            return ins
        return [ins[k] for k in ks] + [r for i, r in enumerate(ins) if i not in ks]

    def _carry_indices(self, group: list[str]) -> dict[str, tuple[int, ...]]:
        """Which inputs of each of a module list's layers are the values one layer hands the next, in the order of
        the layer's results (`repeat` carries its first argument, or a tuple of them: a graph layer's node and edge
        features `(h, e)`; the others, a padding mask, reach every layer as they are). Each layer's own: the inputs
        of two layers need not come in one graph order."""
        if len(group) == 1:             # one layer: the one input of each result's type
            ins, got = self.ins(group[0]), []
            for o in self.outs(group[0]):
                alike = [i for i, r in enumerate(ins) if r.axes == o.axes and i not in got]
                if len(alike) != 1:
                    return {group[0]: (0,)}
                got.append(alike[0])
            return {group[0]: tuple(got) or (0,)}
        carried: dict[str, tuple[int, ...]] = {}
        for a, b in itertools.pairwise(group):
            ins = self.ins(b)           # the next layer reads each result: the input it reads it as is carried
            ks = [[i for i, r in enumerate(ins) if r is o] for o in self.outs(a)]
            if not ks or any(len(k) != 1 for k in ks):
                return {c: (0,) for c in group}     # they do not chain: separate calls
            carried[b] = tuple(k[0] for k in ks)
        self.carried.update(carried)
        carried[group[0]] = self._first_carry(group) or carried[group[1]]
        return carried

    def _first_carry(self, group: list[str]) -> tuple[int, ...] | None:
        """The first layer's carried inputs: what it reads where the second reads its carried values, the two
        compared value by value (`alike.slots`), the other inputs being the very values the second reads."""
        n, params = len(self.carried[group[1]]), self.params_of(group[1])
        got = slots(self, group[0], group[1])
        if got is None or any(got[j] is not params[j] for j in range(n, len(params))):
            return None                 # (one value for several parameters: `alike.passed_twice`)
        ins = self.ins(group[0])
        ks = [next((i for i, r in enumerate(ins) if r is got[j]), None) for j in range(n)]
        return None if None in ks or len(set(ks)) != n else tuple(ks)  # type: ignore[arg-type]

    def _chains(self, group: list[str]) -> bool:
        n = len(self.carried.get(group[0], (0,)))
        rest = self.params_of(group[0])[n:]
        for a, b in itertools.pairwise(group):
            outs, ins = self.outs(a), self.params_of(b)
            if len(ins) != len(rest) + n or any(x is not y for x, y in zip(ins[n:], rest, strict=False)):
                return False                    # every layer must read the same other inputs
            if len(outs) != n or any(x is not y for x, y in zip(ins[:n], outs, strict=True)):
                return False                    # and its carried ones are the previous layer's results
        return True

    def block(self, s: str) -> str:
        """Render scope `s` as a block, register it under a name, and return its text."""
        if s in self.block_of:
            return self.blocks[self.block_of[s]]
        lines, names, params = self.render(s)
        outs = self.outs(s)
        ret = ", ".join(self._ref(o) for o in outs)
        sig_params = ", ".join(names[id(p)] for p in params)
        attr = _instance(s)[0].rpartition(".")[2]
        base = "layer" if attr.isdigit() else attr
        if base in _reserved():
            base = f"{base}_block"              # a block may not take a built-in function's name
        body = "\n".join(lines + [f"return {ret}"])
        text = f"({sig_params}): |\n" + "\n".join("    " + ln for ln in body.splitlines())
        name, k = base, 1
        while name in self.blocks and self.blocks[name] != text:
            k += 1
            name = f"{base}{k}"
        self.blocks[name] = text
        self.block_of[s] = name
        return text

    def body(self) -> list[str]:
        lines, _, _ = self.render("")
        return lines


del annotation
