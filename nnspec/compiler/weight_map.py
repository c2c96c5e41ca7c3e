"""Weight-map rules: a spec's `weights:` section matched against its parameters, without torch.

A rule maps one of our parameter paths to another checkpoint's key; `{name}` placeholders stand for layer
numbers (`"h.{i}.attn.c_attn.weight": "transformer.h.{i}.attn.c_attn.weight | transpose"`), and in their key a
placeholder may be affine in ours (`blocks.{2*i+1}`: a checkpoint that numbers flat the layers a spec pairs).
Checking resolves the rules against the model's parameters (`resolve`: every parameter matched by exactly one
rule, every rule used unless marked `optional`); the torch backend's checkpoint loader translates each state-dict
key with the resolved rules (`their_key`). Both read the same `rule_pattern`, so a path checking accepts is one
loading finds.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from nnspec.errors import SpecError
from nnspec.spec.load import KEY_PLACEHOLDER, Spec, rule_key_problem

# (our rule, their rule, transforms), as a checked model holds them (`Model.weight_maps[source]`)
ResolvedRule = tuple[str, str, tuple[str, ...]]


@lru_cache(maxsize=1024)   # a spec's rules are matched against every parameter path: compile each once
def rule_pattern(rule: str) -> re.Pattern[str]:
    """The regex for one rule: each `{name}` a run of digits captured under `name`, the rest literal, anchored.

    Raises ValueError for a rule checking refuses (`rule_key_problem`: adjacent placeholders would backtrack);
    a generated file's WEIGHT_MAPS can be edited by hand, so loading asks again."""
    problem = rule_key_problem(rule)
    if problem is not None:
        raise ValueError(f"weight rule {rule[:200]!r}: {problem}")
    return re.compile("".join(rf"(?P<{part[1:-1]}>\d+)" if part.startswith("{") else re.escape(part)
                              for part in re.split(r"(\{\w+\})", rule)) + "$")


def translate(path: str, rules: Iterable[ResolvedRule]) -> tuple[str, tuple[str, ...]] | None:
    """(their key, transforms) for our parameter `path` under the first rule matching it; None if none does."""
    for ours, theirs, transforms in rules:
        m = rule_pattern(ours).match(path)
        if m:
            return their_key(theirs, m), transforms
    return None


def their_key(theirs: str, match: re.Match[str]) -> str:
    """`theirs` with each placeholder filled from our path's `match`: `{i}` the index, `{2*i+1}` the affine form."""
    def fill(g: re.Match[str]) -> str:
        scale, name, offset = g.groups()
        return str(int(scale or 1) * int(match.group(name)) + int(offset or 0))
    return KEY_PLACEHOLDER.sub(fill, theirs)


def resolve(spec: Spec, paths: list[str]) -> dict[str, list[ResolvedRule]]:
    """Each weights source's rules that match a parameter, in the spec's order, `optional` dropped.

    Raises E027 for a parameter no rule (or two rules) match, and for a rule that matches nothing and is not
    `optional`."""
    maps: dict[str, list[ResolvedRule]] = {}
    for source, rules in spec.weights.items():
        compiled = [(rule_pattern(r.ours), r) for r in rules]
        used: set[int] = set()
        unmapped: list[str] = []
        for path in paths:
            hits = [i for i, (pat, _) in enumerate(compiled) if pat.match(path)]
            if not hits:
                unmapped.append(path)
            if len(hits) > 1:
                a, b = (compiled[i][1] for i in hits[:2])
                raise SpecError("E027", f"parameter {path} matches two rules: '{a.ours}' and '{b.ours}'",
                                b.span).with_note("the other rule", a.span)
            used.update(hits)
        if unmapped:
            _unmapped(spec, source, unmapped, [r for i, (_, r) in enumerate(compiled) if i not in used],
                      [r for _, r in compiled])
        for i, (_, r) in enumerate(compiled):
            if i not in used and "optional" not in r.transforms:
                raise SpecError("E027", f"weights.{source} rule '{r.ours}' matches no parameter", r.span)
        maps[source] = [(r.ours, r.theirs, tuple(t for t in r.transforms if t != "optional"))
                        for i, r in enumerate(rules) if i in used]
    return maps


def _unmapped(spec: Spec, source: str, paths: list[str], unused: list[Any], rules: list[Any]) -> None:
    """E027 for parameters no rule matches. A rule that matches nothing and is spelled like one of them is the
    likely typo: the error points at that rule and names both; otherwise it points at the source's key and offers
    the nearest rule pattern, if any is near."""
    def shape(text: str) -> str:   # `h.3.attn` and `h.{i}.attn` alike: indices and placeholders as `{}`
        return re.sub(r"\{\w+\}|(?<![^.])\d+(?![^.])", "{}", text)

    def near(path: str, pattern: str) -> float:
        return difflib.SequenceMatcher(None, shape(path), shape(pattern)).ratio()
    best = max(((near(p, r.ours), p, r) for p in paths for r in unused), default=None, key=lambda t: t[0])
    if best is not None and best[0] >= 0.75:
        _, path, rule = best
        parts, pattern = path.split("."), rule.ours.split(".")
        if len(parts) == len(pattern):   # h.0.fc.bias as the rule writes it: h.{i}.fc.bias
            path = ".".join(q if q.startswith("{") and p.isdigit() else p for p, q in zip(parts, pattern, strict=True))
        raise SpecError("E027", f"weights.{source} rule '{rule.ours}' matches no parameter; did you mean "
                        f"'{path}' (a parameter with no mapping)?", rule.span).with_note(
            f"under weights.{source} here", spec.weights_spans.get(source))
    path = paths[0]
    hint = difflib.get_close_matches(path, [r.ours for r in rules], n=1, cutoff=0.6)
    more = f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""
    raise SpecError("E027", f"parameter {path}{more} has no mapping under weights.{source}"
                    + (f"; the nearest rule is '{hint[0]}'" if hint else ""), spec.weights_spans.get(source))
