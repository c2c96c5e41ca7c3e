"""Checkpoints in other naming schemes: `load_weights` and `save_weights` apply a spec's `weights:` mapping.

A generated model class carries its mapping as data (`weight_maps`, written into the file from the spec);
the reference `Interpreter` carries its model's. Loading accounts for every key on both sides before it
copies anything: each of the module's state-dict entries must be found (with the shape the transforms
imply), and each checkpoint key must be used, or be a tied copy of a used key (Hugging Face's state dicts
list a tied `lm_head.weight` beside `transformer.wte.weight`). Files are read lazily: `.safetensors`, a
sharded `model.safetensors.index.json`, a directory holding either, or a `torch.save`d state dict.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnspec.atomic import staged
from nnspec.compiler.weight_map import rule_pattern, their_key
from nnspec.progress import progress
from nnspec.spec import strict_json

__all__ = ["LoadReport", "WeightError", "load_weights", "save_weights", "to_source"]

MAX_LISTED = 10
MAX_INDEX_BYTES = 64 << 20   # a sharded checkpoint's index: a few MB for the largest models


class WeightError(ValueError):
    """A checkpoint does not fit a module: every missing, unexpected and mis-shaped key is listed."""


@dataclass(frozen=True)
class Transform:
    """How a parameter is stored in the other scheme: `load` maps theirs -> ours, `save` ours -> theirs.

    A rule's transforms are a pipe from the checkpoint's tensor to ours, in the order written (`c_attn.weight |
    transpose | split(0, 3, 1)`: transpose it, then take the second of three pieces along dim 0)."""

    load: Callable[[torch.Tensor], torch.Tensor]
    save: Callable[[torch.Tensor], torch.Tensor]
    their_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    split: tuple[int, int, int] | None = None    # (dim, pieces, index): one of several parameters in one tensor


TRANSFORMS: dict[str, Transform] = {
    # Hugging Face's Conv1D (GPT-2) keeps a linear weight as [in, out]
    "transpose": Transform(lambda t: t.t(), lambda t: t.t(), lambda s: tuple(reversed(s))),
    # a flag on the rule (it may match no parameter), not a change to the tensor
    "optional": Transform(lambda t: t, lambda t: t, lambda s: s),
}
_SQUEEZE = re.compile(r"(un)?squeeze\(\s*(\d+(?:\s*,\s*\d+)*)\s*\)$")
_SPLIT = re.compile(r"split\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)$")


def transform(name: str) -> Transform:
    """A transform by its name in a `weights:` rule, a step from the checkpoint's tensor towards ours:
    `squeeze(0, 1)` removes size-1 axes 0 and 1 the checkpoint has and the parameter lacks (ViT's
    `cls_token` is [1, 1, hidden]); `unsqueeze(0)` inserts a size-1 axis at 0 that the parameter has and the
    checkpoint lacks (the positions are the parameter's, as successive `torch.unsqueeze` calls take them);
    `split(D, N, I)`: the parameter is piece I of N equal pieces along dim D (GPT-2's fused c_attn for separate
    q, k and v projections). Saving joins the pieces (`to_source`), so `save` is the identity on one piece."""
    if name in TRANSFORMS:
        return TRANSFORMS[name]
    m = _SPLIT.match(name)
    if m is not None:
        d, n, i = (int(g) for g in m.groups())
        if not 0 <= i < n:
            raise WeightError(f"{name}: piece {i} of {n} does not exist")

        def grow(s: tuple[int, ...]) -> tuple[int, ...]:
            return (*s[:d], s[d] * n, *s[d + 1:]) if d < len(s) else s
        return Transform(lambda t: t.chunk(n, d)[i], lambda t: t, grow, (d, n, i))
    m = _SQUEEZE.match(name)
    if m is None:
        raise WeightError(f"unknown weight transform {name!r}")
    dims = [int(d) for d in m.group(2).split(",")]

    def with_ones(s: tuple[int, ...]) -> tuple[int, ...]:
        out = list(s)
        for d in dims:
            out.insert(d, 1)
        return tuple(out)

    def without(s: tuple[int, ...]) -> tuple[int, ...]:
        out = list(s)
        for d in reversed(dims):
            if d >= len(out) or out[d] != 1:
                raise WeightError(f"{name}: the tensor of shape {list(s)} has no size-1 axis {d} to remove")
            del out[d]
        return tuple(out)

    if m.group(1):   # unsqueeze: the checkpoint's tensor lacks the size-1 axes
        return Transform(lambda t: t.reshape(with_ones(tuple(t.shape))), lambda t: t.reshape(without(tuple(t.shape))),
                         without)
    return Transform(lambda t: t.reshape(without(tuple(t.shape))), lambda t: t.reshape(with_ones(tuple(t.shape))),
                     with_ones)


@dataclass
class LoadReport:
    """What `load_weights` did: each state-dict key of the module and the checkpoint key it came from, and
    the checkpoint keys accepted as tied copies (key -> the key it duplicates)."""

    loaded: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        """A summary (a 2-layer ViT has dozens of keys): counts, a few examples; the dicts hold the rest."""
        renamed = sum(ours != theirs for ours, theirs in self.loaded.items())
        shown = ", ".join(f"{ours} <- {theirs}" for ours, theirs in list(self.loaded.items())[:2])
        more = ", ..." if len(self.loaded) > 2 else ""
        tied = f", {len(self.tied)} tied ({', '.join(list(self.tied)[:2])}{', ...' if len(self.tied) > 2 else ''})" \
            if self.tied else ""
        examples = f": {shown}{more}" if shown else ""
        return f"LoadReport({len(self.loaded)} loaded, {renamed} renamed{examples}{tied})"


# ---- the mapping ----
def _target(module: nn.Module, source: str) -> tuple[nn.Module, list[tuple[str, str, tuple[str, ...]]]]:
    """The module holding the spec-path state dict, and the rules for `source`."""
    from nnspec.backends.torch.interpreter import Interpreter
    module = getattr(module, "_orig_mod", module)        # torch.compile's wrapper
    if isinstance(module, Interpreter):
        maps, target = module.model.weight_maps, module.root
    else:
        maps, target = getattr(module, "weight_maps", None), module
    if maps is None:
        raise WeightError(f"{type(module).__name__} carries no weight mappings; build it with nnspec.build or "
                          "`nnspec compile`")
    if source not in maps:
        known = ", ".join(sorted(maps)) or "none"
        raise WeightError(f"the spec has no `weights: {source}:` mapping (it has: {known})")
    rules = [(ours, theirs, tuple(tr)) for ours, theirs, tr in maps[source]]
    for ours, _, _ in rules:
        try:
            rule_pattern(ours)      # a hand-edited WEIGHT_MAPS is checked as the spec's rules are
        except (ValueError, TypeError) as e:
            raise WeightError(str(e)) from None
    return target, rules


def _their_key(path: str, rules: list[tuple[str, str, tuple[str, ...]]], buffers: set[str]
               ) -> tuple[str, tuple[str, ...]] | None:
    for ours, theirs, transforms in rules:
        m = rule_pattern(ours).match(path)
        if m:
            return their_key(theirs, m), transforms
    if path in buffers:
        # a module's state (batch-norm running statistics) follows its weight: P.running_mean -> Q.running_mean
        head, _, leaf = path.rpartition(".")
        found = _their_key(f"{head}.weight", rules, set()) if head else None
        if found is not None and found[0].endswith(".weight") and not found[1]:
            return found[0][: -len("weight")] + leaf, ()
    return None


def plan(module: nn.Module, source: str) -> tuple[nn.Module, dict[str, tuple[str, tuple[str, ...]]]]:
    """Each state-dict key of the module -> (checkpoint key, transforms)."""
    target, rules = _target(module, source)
    state = target.state_dict(keep_vars=True)
    buffers = {k for k, v in state.items() if not isinstance(v, nn.Parameter)}
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    unmapped = []
    for key in state:
        found = _their_key(key, rules, buffers)
        if found is None:
            unmapped.append(key)
        else:
            out[key] = found
    if unmapped:
        raise WeightError(f"no `weights: {source}:` rule for {_listing(unmapped)}")
    for key, (_, transforms) in out.items():
        if any(transform(t).split for t in transforms[:-1]):
            raise WeightError(f"{key}: split(...) must be the last transform of its rule ({' | '.join(transforms)})")
    groups: dict[str, list[str]] = {}
    for key, (theirs, _) in out.items():
        groups.setdefault(theirs, []).append(key)
    bad = [f"{theirs} ({', '.join(keys)})" for theirs, keys in groups.items()
           if not _pieces_fit([out[k][1] for k in keys])]
    if bad:
        raise WeightError(f"parameters that share a checkpoint key must be its split(D, N, I) pieces, each I of the "
                          f"same N along the same D once, with the same other transforms: {_listing(bad)}")
    return target, out


def _split_of(transforms: tuple[str, ...]) -> tuple[int, int, int] | None:
    return transform(transforms[-1]).split if transforms else None


def _pieces_fit(rules: list[tuple[str, ...]]) -> bool:
    """One parameter without a split, or the pieces 0..N-1 of one split, each once."""
    splits = [_split_of(r) for r in rules]
    if splits == [None]:
        return True
    if any(s is None for s in splits) or len({r[:-1] for r in rules}) != 1:
        return False
    (d, n, _), indices = splits[0], sorted(s[2] for s in splits if s is not None)
    return all(s is not None and s[:2] == (d, n) for s in splits) and indices == list(range(n))


def _their_shape(shape: tuple[int, ...], transforms: tuple[str, ...]) -> tuple[int, ...]:
    for name in reversed(transforms):      # undo the pipe from ours back to theirs: last transform first
        shape = transform(name).their_shape(shape)
    return shape


# ---- checkpoints, read lazily ----
class _Checkpoint:
    """Keys, shapes and tensors of a checkpoint without loading more than asked for."""

    def __init__(self, tensors: Mapping[str, torch.Tensor] | None = None, origin: str = "the state dict") -> None:
        self.tensors = tensors
        self.files: dict[str, Any] = {}      # key -> open safetensors file
        self.origin = origin                 # what errors name: the file given

    def names(self) -> list[str]:
        return list(self.tensors) if self.tensors is not None else list(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        if self.tensors is not None:
            return tuple(self.tensors[key].shape)
        with _reading(Path(self.origin), key):
            return tuple(self.files[key].get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        if self.tensors is not None:
            return self.tensors[key]
        with _reading(Path(self.origin), key):
            return self.files[key].get_tensor(key)

    def same(self, a: str, b: str) -> bool:
        """Is `a` a copy of `b` (the same storage in memory, or equal values in a file)?"""
        if self.shape(a) != self.shape(b):
            return False
        x, y = self.get(a), self.get(b)
        if x.dtype != y.dtype:
            return False
        if x.device == y.device and x.data_ptr() == y.data_ptr() and x.stride() == y.stride():
            return True
        return bool(torch.equal(x, y))


@contextlib.contextmanager
def _open(weights: Mapping[str, torch.Tensor] | str | os.PathLike[str]) -> Iterator[_Checkpoint]:
    if isinstance(weights, Mapping):
        bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise WeightError(f"state dict entry {str(bad[0])[:100]!r} is not a tensor under a string key")
        yield _Checkpoint(weights)
        return
    path = Path(weights)
    if path.is_dir():
        for name in ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise WeightError(f"{weights}: no model.safetensors(.index.json) or pytorch_model.bin inside")
    if path.name.endswith(".safetensors") or path.name.endswith(".json"):
        from safetensors import safe_open
        shards = _shards(path) if path.name.endswith(".json") else None
        with contextlib.ExitStack() as stack:
            ckpt = _Checkpoint()
            handles: dict[Path, Any] = {}
            for file in ([path] if shards is None else list(dict.fromkeys(shards.values()))):
                _regular(file)
                with _reading(file):
                    handles[file] = stack.enter_context(safe_open(str(file), framework="pt", device="cpu"))
            if shards is None:
                with _reading(path):
                    ckpt.files = {key: handles[path] for key in handles[path].keys()}  # noqa: SIM118
            else:
                for key, file in shards.items():
                    with _reading(file):
                        if key not in handles[file].keys():  # noqa: SIM118
                            raise WeightError(f"{file}: the index names {key[:100]!r} in this shard, which lacks it")
                ckpt.files = {key: handles[file] for key, file in shards.items()}
            ckpt.origin = str(path)
            yield ckpt
        return
    yield _Checkpoint(_torch_load(path), str(path))


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict, memory-mapped when it is a zip archive; a legacy (pre-1.6, non-zip) file is read
    without mmap. Only tensors by string keys are accepted (weights_only: no code is unpickled)."""
    import zipfile
    _regular(path)
    with _reading(path):
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if not isinstance(data, Mapping):
        raise WeightError(f"{path}: holds a {type(data).__name__}, not a state dict (a mapping of names to tensors)")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        k = bad[0]
        raise WeightError(f"{path}: entry {str(k)[:100]!r} is a {type(k).__name__} key holding a "
                          f"{type(data[k]).__name__}; a state dict maps names to tensors")
    return dict(data)


def _regular(path: Path) -> None:
    """A checkpoint file must be a regular file: a FIFO would block forever, a directory or device cannot be one."""
    try:
        st = path.stat()
    except OSError as e:
        raise WeightError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise WeightError(f"{path}: not a regular file")


@contextlib.contextmanager
def _reading(path: Path, key: str | None = None) -> Iterator[None]:
    """Errors reading a checkpoint (truncated, not a checkpoint at all, unreadable) as WeightError naming it."""
    try:
        yield
    except WeightError:
        raise
    except Exception as e:   # safetensors, pickle, zip and OS errors have no common base
        what = f"{path}" + (f", key {key[:100]!r}" if key is not None else "")
        raise WeightError(f"{what}: cannot be read as a checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def _shards(index_path: Path) -> dict[str, Path]:
    """Checkpoint key -> shard file, from a sharded checkpoint's index. The index is untrusted like the spec: a
    shard must be a plain file name beside it (no directory, `..` or absolute path), so it opens nothing else."""
    _regular(index_path)     # a symlink to /dev/zero or a FIFO is no index
    try:
        with open(index_path, "rb") as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except OSError as e:
        raise WeightError(f"{index_path}: cannot be read ({e.strerror})") from None
    if len(data) > MAX_INDEX_BYTES:
        raise WeightError(f"{index_path}: a checkpoint index larger than {MAX_INDEX_BYTES:,} bytes")
    try:
        index = strict_json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, strict_json.JSONProblem) as e:
        raise WeightError(f"{index_path}: not a JSON checkpoint index ({type(e).__name__}: {str(e)[:200]})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise WeightError(f"{index_path}: no \"weight_map\" mapping of checkpoint keys to shard files")
    out = {}
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or shard in ("", ".", "..") or "/" in shard or "\\" in shard \
                or "\x00" in shard:
            raise WeightError(f"{index_path}: shard {str(shard)[:100]!r} of {key[:100]!r} is not a file name beside "
                              "the index")
        out[key] = index_path.parent / shard
    return out


# ---- load and save ----
def load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor] | str | os.PathLike[str], *,
                 source: str = "hf") -> LoadReport:
    """Copy a checkpoint named in `source`'s scheme into `module` (a generated model or an Interpreter).

    Everything is checked before anything is copied; a `WeightError` lists every problem. Values are cast to
    each parameter's dtype and device; tied parameters stay tied.
    """
    target, mapping = plan(module, source)
    state = target.state_dict(keep_vars=True)
    report = LoadReport()
    with _open(weights) as ckpt:
        have = set(ckpt.names())
        missing = [t for t, _ in mapping.values() if t not in have]
        shapes = []
        for key, (theirs, transforms) in mapping.items():
            want = _their_shape(tuple(state[key].shape), transforms)
            if theirs in have and ckpt.shape(theirs) != want:
                shapes.append(f"{theirs}: {list(ckpt.shape(theirs))} in the checkpoint, {list(want)} expected "
                              f"(for {key})")
        used = {t for t, _ in mapping.values()}
        unexpected = []
        for key in ckpt.names():
            if key in used:
                continue
            twin = next((u for u in mapping.values() if u[0] in have and ckpt.same(key, u[0])), None)
            if twin is None:
                unexpected.append(key)
            else:
                report.tied[key] = twin[0]
        problems = [f"missing {_listing(missing)}"] if missing else []
        problems += [f"unexpected {_listing(unexpected)}"] if unexpected else []
        problems += [f"shape mismatch: {_listing(shapes)}"] if shapes else []
        if problems:
            raise WeightError(f"checkpoint does not fit {type(module).__name__} ({source} names): "
                              + "; ".join(problems))
        with torch.no_grad(), progress(f"loading {len(mapping)} tensors", len(mapping)) as advance:
            for key, (theirs, transforms) in mapping.items():
                tensor = ckpt.get(theirs)
                for name in transforms:
                    tensor = transform(name).load(tensor)
                state[key].copy_(tensor)
                advance(1)
                report.loaded[key] = theirs
    return report


def to_source(module: nn.Module, tensors: Mapping[str, torch.Tensor] | None = None, *, target: str = "hf"
              ) -> dict[str, torch.Tensor]:
    """The module's state dict (or `tensors` keyed by its state-dict keys, e.g. gradients) in `target` names."""
    mod, mapping = plan(module, target)
    values = tensors if tensors is not None else {k: v.detach() for k, v in mod.state_dict(keep_vars=True).items()}
    out = {}
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for key, (theirs, transforms) in mapping.items():
        if key not in values:
            continue
        t = values[key]
        split = _split_of(transforms)
        if split is not None:      # joined below, once every piece is there
            pieces.setdefault(theirs, {})[split[2]] = t
            continue
        for name in reversed(transforms):
            t = transform(name).save(t)
        out[theirs] = t
    for theirs, transforms in mapping.values():
        split = _split_of(transforms)
        if split is None or theirs in out or len(pieces.get(theirs, {})) != split[1]:
            continue
        t = torch.cat([pieces[theirs][i] for i in range(split[1])], dim=split[0])
        for name in reversed(transforms[:-1]):
            t = transform(name).save(t)
        out[theirs] = t
    return out


def save_weights(module: nn.Module, path: str | os.PathLike[str] | None = None, *, target: str = "hf"
                 ) -> dict[str, torch.Tensor]:
    """The module's weights under `target`'s names (tied parameters once, as `save_pretrained` writes them);
    written to `path` too when given (`.safetensors`, else `torch.save`), atomically."""
    out = {k: v.contiguous() for k, v in to_source(module, target=target).items()}
    if path is not None:
        path = Path(path)
        with staged([path]) as (tmp,):
            if path.name.endswith(".safetensors"):
                from safetensors.torch import save_file
                save_file(out, tmp, metadata={"format": "pt"})
            else:
                torch.save(out, tmp)
    return out


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")
