"""Symbolic sizes: dims as sympy symbols, their concrete values, and proofs of (in)equality.

Every declared dim has a concrete value, so most facts are decided by substitution; what still depends
on free dims (batch, sequence) is either proved symbolically or kept as a run-time guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

MAX_SIZE = 1 << 32  # no axis anyone means is wider; 10^12 is a typo or an attack, refused as E023


def symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, integer=True, positive=True)


@dataclass
class Sizes:
    values: dict[sympy.Symbol, sympy.Integer] = field(default_factory=dict)   # declared (and bound free) dims
    free: dict[str, sympy.Symbol] = field(default_factory=dict)      # dims left symbolic
    declared: dict[str, sympy.Symbol] = field(default_factory=dict)
    # facts that depend on free dims, noted by shape rules; the elaborator turns them into located guards
    pending: list[tuple[sympy.Basic, str]] = field(default_factory=list)

    def assume(self, fact: sympy.Basic, text: str) -> None:
        self.pending.append((fact, text))

    def lookup(self, name: str) -> sympy.Symbol | None:
        return self.declared.get(name) or self.free.get(name)

    def free_symbol(self, name: str) -> sympy.Symbol:
        if name not in self.free:
            self.free[name] = symbol(name)
        return self.free[name]

    def concrete(self, expr: sympy.Basic | int) -> sympy.Expr:
        return sympy.sympify(sympy.sympify(expr).xreplace(self.values))

    def value(self, expr: sympy.Basic | int) -> int | None:
        """The integer value of a size, or None while it depends on a free dim."""
        c = self.concrete(expr)
        if c.is_Integer:
            return int(c)
        if c.is_Number:
            raise ValueError(f"size {expr} = {c} is not an integer")
        return None

    def equal(self, a: sympy.Basic | int, b: sympy.Basic | int) -> bool | None:
        """True or False when decided; None when it depends on free dims and cannot be proved."""
        diff = self.concrete(a) - self.concrete(b)
        if diff == 0:
            return True
        if diff.is_Number:
            return False
        diff = sympy.cancel(diff)
        if diff == 0:
            return True
        return False if diff.is_Number else None

    def describe(self, size: sympy.Basic) -> str:
        """`n_embd=768`, or the expression alone when it is a number or still symbolic."""
        c = self.concrete(size)
        text = str(size)
        if c.is_Number and str(c) != text:
            return f"{text}={c}"
        return text


# a polynomial in the free dims with more terms than this is kept as written (factored): the outer product of 20
# axes each the sum of 8 free dims expands to 888,030 terms, which takes sympy minutes and no one reads
MAX_EXPANDED_TERMS = 2_000


def expanded_terms(expr: sympy.Basic, limit: int = MAX_EXPANDED_TERMS) -> int:
    """An upper bound on the terms `sympy.expand(expr)` has (at most `limit + 1`: counting stops past the limit)."""
    if isinstance(expr, sympy.Add):
        total = 0
        for arg in expr.args:
            total += expanded_terms(arg, limit)
            if total > limit:
                return limit + 1
        return total
    if isinstance(expr, sympy.Mul):
        total = 1
        for arg in expr.args:
            total *= expanded_terms(arg, limit)
            if total > limit:
                return limit + 1
        return total
    if isinstance(expr, sympy.Pow) and expr.exp.is_Integer and int(expr.exp) > 0:
        k, n = expanded_terms(expr.base, limit), int(expr.exp)
        if k == 1:
            return 1
        if n > limit:
            return limit + 1
        total = 1                       # monomials of degree n in k terms: C(k + n - 1, n), computed stepwise
        for i in range(1, n + 1):
            total = total * (k + i - 1) // i
            if total > limit:
                return limit + 1
        return total
    return 1


def expand(expr: sympy.Basic, limit: int = MAX_EXPANDED_TERMS) -> sympy.Basic:
    """`sympy.expand(expr)`, unless that would have more than `limit` terms: then `expr` as it is (equal, and
    cheap to evaluate at given sizes, only not a sum of monomials)."""
    if expanded_terms(expr, limit) > limit:
        return expr
    return sympy.expand(expr)
