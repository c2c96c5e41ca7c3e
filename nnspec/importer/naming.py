"""Naming sizes: the config's integer keys become the spec's dims, and every axis size is written with them.

`Dims` holds the dims section (config key -> value, plus derived dims such as `head_dim = hidden_size /
num_attention_heads`) and answers "what is this size called": a dim whose value it is, else a product of a small
integer and dims (`3 * n_embd`, `num_key_value_heads * head_dim`), else the integer itself. Free sizes (the
example batch and sequence length) are named `B` and `T`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Config keys that are sizes a spec's axes use; others (ids, flags, counts of labels) stay out of dims.
_SIZE_WORDS = ("size", "dim", "heads", "embd", "head", "position", "type_vocab", "vocab", "layer", "channels",
               "experts",
               "inner", "ctx", "patch", "intermediate", "labels", "seq", "width", "hidden", "num_")
_NOT_SIZES = ("token_id", "_id", "initializer", "eps", "epsilon", "dropout", "pdrop", "theta", "factor")

# The order in which dims are preferred when several have one value (the more specific name first).
_PREFER = ("hidden_size", "n_embd", "d_model", "head_dim", "num_key_value_heads", "num_attention_heads", "n_head",
           "intermediate_size", "moe_intermediate_size", "vocab_size")
# Counts of embedded things: rarely an axis but of an embedding (`tied.py` names those), so named after last.
_COUNTS = ("vocab", "position", "max_len", "ctx", "labels")


@dataclass
class Dims:
    values: dict[str, int] = field(default_factory=dict)      # declared dims in order
    derived: dict[str, str] = field(default_factory=dict)     # name -> expression over dims
    free: dict[int, str] = field(default_factory=dict)        # example size -> free dim name
    used: set[str] = field(default_factory=set)
    aliases: dict[str, str] = field(default_factory=dict)    # a relabelled axis (`S`) -> the axis it renames (`T`)
    local: dict[str, int] = field(default_factory=dict)      # axes a call names (a conv's `gh`): their sizes
    # dims declared for one provenance (a grid's window count `nh`, a window's positions `N`): never a size's name
    placed: set[str] = field(default_factory=set)

    @classmethod
    def from_config(cls, config: dict[str, Any], free: dict[int, str], sizes: set[int] | None = None) -> Dims:
        """`sizes`: the sizes the model uses (`usage.used_sizes`); a key spelled like no size word (`d`, `k`,
        `depth`, `conv_kernel`) is a dim when its value is one of them, after the keys spelled as sizes."""
        dims = cls(free=dict(free))
        by_use = []
        for key, value in config.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                continue
            if any(w in key for w in _NOT_SIZES):
                continue
            if any(w in key for w in _SIZE_WORDS):
                dims.values[key] = value
            elif sizes is not None and value in sizes:
                by_use.append(key)
        dims.values.update((key, config[key]) for key in by_use)
        hidden = next((k for k in ("hidden_size", "n_embd", "d_model") if k in dims.values), None)
        heads = next((k for k in ("num_attention_heads", "n_head") if k in dims.values), None)
        if hidden and heads and dims.values[hidden] % dims.values[heads] == 0:
            hd = dims.values[hidden] // dims.values[heads]
            if config.get("head_dim") in (None, hd):
                dims.values.pop("head_dim", None)
                dims.derived["head_dim"] = f"{hidden} / {heads}"
                dims.values["head_dim"] = hd
        if config.get("id2label") and "num_labels" not in dims.values:
            dims.values["num_labels"] = len(config["id2label"])
        image, patch = dims.values.get("image_size"), dims.values.get("patch_size")
        if image and patch and image % patch == 0:
            # square images: the spatial axes need two names; a ViT's sequence is the patch grid plus a class token
            dims.derived.update(height="image_size", width="image_size", grid="image_size / patch_size",
                                seq="grid * grid + 1")
            dims.values.update(height=image, width=image, grid=image // patch, seq=(image // patch) ** 2 + 1)
        kv = dims.values.get("num_key_value_heads")
        if heads and kv and kv != dims.values[heads] and dims.values[heads] % kv == 0:
            dims.derived["groups"] = f"{heads} / num_key_value_heads"
            dims.values["groups"] = dims.values[heads] // kv
        return dims

    def numbered(self, name: str) -> bool:
        """`height0` beside `height`: a dim numbering another (a stage's resolution) names only the axes made from
        that one (`successor`), never an axis that only has its size (a channel width that happens to be 8)."""
        stem = name.rstrip("0123456789")
        return stem != name and stem in self.values

    def ordered(self) -> list[str]:
        pref = [n for n in _PREFER if n in self.values]
        rest = [n for n in self.values if n not in pref and not self.numbered(n) and n not in self.placed]
        # a width before a head's size (one head), counts of embedded things after the widths (a vocabulary as
        # large as the width), layer counts (repeat counts, rarely an axis) last: where sizes coincide, the name
        # is the one an axis of that size most likely comes from
        return sorted(pref + rest, key=lambda n: 2 if "layer" in n else 1 if any(w in n for w in _COUNTS) else 0)

    def name(self, size: int) -> str:
        """The best name for an axis of this size: a free dim, a dim, a small multiple or product of dims."""
        if size in self.free:
            return self.free[size]
        for n in self.ordered():
            if self.values[n] == size:
                self.used.add(n)
                return n
        return str(size)

    def expr(self, size: int) -> str:
        """A size as a spec expression (`3 * n_embd`, `num_key_value_heads * head_dim`, or the number)."""
        named = self.name(size)
        if named in self.free.values():     # a parameter's size is never a free dim, however large the batch
            named = next((n for n in self.ordered() if self.values[n] == size), str(size))
        if not named.isdigit():
            self.used.add(named)
            return named
        names = self.ordered()
        for a in names:
            if "head" not in a or a == "head_dim":
                continue
            if "head_dim" in self.values and self.values[a] * self.values["head_dim"] == size:
                self.used.update((a, "head_dim"))
                return f"{a} * head_dim"
        for k in range(2, 9):
            for n in names:
                if self.values[n] * k == size and "head" not in n and n != "groups":
                    self.used.add(n)
                    return f"{k} * {n}"
        return str(size)

    def axis(self, size: int) -> str:
        """The axis name the language gives an axis made by `expr(size)` (`3*n_embd`)."""
        return self.expr(size).replace(" ", "")

    def split(self, name: str, size: int, parts: list[int], source: str = "") -> list[str]:
        """Names for the pieces of an axis `name` (of `size`) split into `parts` sizes (product == size); `source`
        is the module that made the value (`v`), which picks among dims of one size (`dk`, `dv`: `by_source`)."""
        # a derived dim d = a / b factors a into (b, d): hidden_size -> (num_attention_heads, head_dim)
        if len(parts) == 2:
            for d, formula in self.derived.items():
                a, _, b = formula.partition(" / ")
                if a == name and b in self.values and [self.values[b], self.values[d]] == parts:
                    self.used.update((b, d))
                    return [b, d]
        # a merged axis (`T*groups`, free dims included) split back into its own pieces
        pieces = [p.strip() for p in name.split("*")]
        known = {**self.values, **{v: k for k, v in self.free.items()}}
        if len(pieces) == len(parts) and all(p in known or p.isdigit() for p in pieces) and [
                known[p] if p in known else int(p) for p in pieces] == parts:
            return pieces
        if len(parts) == 2 and self.values.get("head_dim") == parts[1] and name != "head_dim":
            # (heads, head_dim): the count of heads is a dim spelled `head`, not another of its size (`edge_dim`)
            heads = next((n for n in self.ordered() if "head" in n and n != "head_dim" and self.values[n] == parts[0]),
                         None)
            if heads is not None:
                self.used.update((heads, "head_dim"))
                return [heads, "head_dim"]
        out: list[str] = []
        for p in parts:
            # a piece of a configured axis is never the batch or sequence: skip the free names
            cand = by_source([n for n in self.ordered() if self.values[n] == p and n not in out], source) or str(p)
            out.append(cand)
        if len(set(out)) != len(out):
            raise ValueError(f"cannot name the pieces {parts} of axis {name}")
        return out

    def successor(self, source: str, size: int, taken: set[str]) -> str | None:
        """The dim that an axis made from axis `source` is named after: the one continuing `source`'s numbering
        (`height` -> `height0`, `height0` -> `height1`, a stage's grid after the previous stage's) when the config
        has it at this size. Where it came from, not its size, names it: a square grid's two axes stay apart."""
        stem = source.rstrip("0123456789")
        if not stem or not stem.isidentifier():
            return None
        k = source[len(stem):]
        name = f"{stem}{int(k) + 1 if k else 0}"
        if name not in self.values and not k:
            name = f"{stem[0]}0"                 # `height` -> `h0` (Swin's stage grids `h0`, `w0`, `h1`, ...)
        return name if self.values.get(name) == size and name not in taken else None

    def section(self) -> dict[str, Any]:
        return {k: (self.derived.get(k, v)) for k, v in self.values.items()}


def by_source(names: list[str], source: str) -> str | None:
    """The first of `names` (dims of one size), or the one named after the module that made the value: what sets
    it apart from the others (`dk`, `dv` differ in `k`, `v`) is the module's name (`v`, `v_proj`)."""
    if len(names) < 2 or not source:
        return names[0] if names else None
    head = _common(names)
    tail = _common([n[::-1] for n in names])
    own = source.rsplit(".", 1)[-1].removesuffix("_proj")
    for n in names:
        part = n[head:len(n) - tail] if len(n) - tail > head else n[head:]
        if part and (own == part or own.startswith(part + "_")):
            return n
    return names[0]


def _common(words: list[str]) -> int:
    """The length of the prefix every word shares."""
    k = 0
    while all(len(w) > k and w[k] == words[0][k] for w in words):
        k += 1
    return k
