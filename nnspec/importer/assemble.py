"""Putting the spec together: dims from the config, inputs and outputs, the rendered blocks and body, and the
`hf_config` and `weights: hf:` sections that make `--config config.json` and `nnspec.load_weights` work."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnspec.importer import moe
from nnspec.importer.capture import Captured
from nnspec.importer.dead import dead_parameters, write_dead
from nnspec.importer.errors import ImportFailure
from nnspec.importer.graph import L, annotation
from nnspec.importer.lift import Lifter, instance_of
from nnspec.importer.naming import Dims
from nnspec.importer.render import Renderer
from nnspec.importer.rules import RULES
from nnspec.importer.usage import used_sizes

_DTYPES = {torch.float32: "float32", torch.int64: "int64", torch.float16: "float16", torch.bfloat16: "bfloat16",
           torch.int32: "int32", torch.bool: "bool"}
_BOOKKEEPING = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "id2label",
                "label2id", "_name_or_path", "return_dict", "output_attentions", "output_hidden_states"}


def _free_map(cap: Captured) -> dict[int, str]:
    free: dict[int, str] = {}
    for name, t in cap.inputs.items():
        if name == "input_ids" and t.dim() == 2:
            free[t.shape[0]] = "B"
            free[t.shape[1]] = "T"
        elif t.dim() >= 1:
            free.setdefault(t.shape[0], "B")
    # a sequence axis of other inputs (`features[B, T, d]`): the second dim, when its size is no config value
    taken = {v for v in cap.config.values() if isinstance(v, int) and not isinstance(v, bool)}
    clash = sorted(set(free) & taken)
    if clash:
        raise ImportFailure(f"the example inputs' batch or sequence size {clash[0]} equals a config value, so the "
                            "importer cannot tell those axes apart: trace at sizes no config value has",
                            op="inputs", module="")
    # a channels-last grid (`x[B, H, W, C]`, windowed attention): its rows and columns are free axes `H`, `W`
    for t in cap.inputs.values():
        hw = {int(s) for s in t.shape[1:3]}
        if t.dim() == 4 and t.is_floating_point() and t.shape[3] in taken and len(hw) == 2 \
                and not hw & (taken | set(free)) and "H" not in free.values():
            free[t.shape[1]], free[t.shape[2]] = "H", "W"
    # and of integer inputs (`ids[B, T]`, `segments[B, T]`: token indices, whatever the input's name)
    for t in cap.inputs.values():
        seq_like = t.dim() >= 3 or (t.dim() == 2 and not t.dtype.is_floating_point)
        if seq_like and t.shape[1] not in taken and t.shape[1] not in free and "T" not in free.values():
            free[t.shape[1]] = "T"
    return free


def _flatten(model: nn.Module) -> set[str]:
    """The root and its base model (the child holding most parameters) are the body, not blocks."""
    flat = {""}
    total = sum(p.numel() for p in model.parameters()) or 1
    def names(m: nn.Module) -> set[str]:
        return {n for n, _ in m.named_children()} | {n for n, _ in m.named_parameters(recurse=False)}

    for name, child in model.named_children():
        if not isinstance(child, nn.ModuleList) and any(True for _ in child.children()) \
                and sum(p.numel() for p in child.parameters()) > total / 2 \
                and not names(child) & (names(model) - {name}):     # its names would clash with the root's
            flat.add(name)
    return flat


def _layer_counts(model: nn.Module, dims: Dims, flat: set[str]) -> dict[str, str]:
    counts = {}
    for path, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 1:
            n = len(mod)
            key = next((k for k in dims.values if ("layer" in k or "depth" in k) and dims.values[k] == n), None)
            if key:
                dims.used.add(key)
            counts[path] = key or str(n)
    return counts


def assemble(cap: Captured, *, name: str) -> str:
    free = _free_map(cap)
    dims = Dims.from_config(cap.config, free, used_sizes(cap))
    lifter = Lifter(cap, dims, RULES)
    lifter.flattened = _flatten(cap.model)
    # a block called repeatedly (`shared@1`, ...) is a shared-weight `repeat`, never the body
    lifter.flattened -= {instance_of(p) for n in cap.program.graph.nodes for p in lifter.stack(n) if "@" in p}
    lifter.rope_theta = None
    dead = dead_parameters(cap, lifter)
    outputs = []
    for oname, out_node in _output_nodes(cap):
        out = lifter.lift(out_node)
        if not isinstance(out, L):
            raise ImportFailure(f"the model's output {oname} is not a tensor computed from its inputs")
        if any(len(g) != 1 for g in out.axes):
            from nnspec.importer.graph import Unwritable
            from nnspec.importer.ops import merge_groups

            try:
                out = merge_groups(lifter, out, list(range(len(out.axes))), out_node)
            except Unwritable as exc:               # refused at the output, as the lifter refuses at a node
                raise lifter.fail(out_node, str(exc)) from None
        out = _named_axes(lifter, out, out_node)
        axes = ", ".join(g[0] for g in out.axes)
        if out.scope or out.annot is None:        # bind the output by name in the body, checked against its axes
            out = L("{0}", [out], out.axes, out.order, "", out.idx + 0.001, hint=oname, bind=True)
            out.annot = axes
        out.hint, out.bind, out.fixed = oname, True, oname
        outputs.append((oname, out, axes, _DTYPES[lifter.value(out_node).dtype]))
    modules = {p for p, m in cap.model.named_modules() if p not in lifter.flattened and any(True for _ in m.children())
               and not isinstance(m, nn.ModuleList)}
    renderer = Renderer([o for _, o, _, _ in outputs], _layer_counts(cap.model, dims, lifter.flattened), modules,
                        count_name=lambda n: _count_name(dims, n))
    renderer.not_variables = frozenset(dims.values) | frozenset(dims.local)     # a variable never takes a dim's name
    dead_paths = write_dead(lifter, renderer, dead)
    body = renderer.body()
    lines = [
        "nnspec: 1",
        f"name: {name}",
        f"doc: Imported from {type(cap.model).__name__} by `nnspec import` (torch.export at example inputs).",
        "",
        "dims:                           # the config's key names",
    ]
    lines += [f"  {k}: {v}" for k, v in dims.section().items()] or ["  {}"]
    options = _options(lifter)
    if options:
        lines += ["", "options:"] + [f"  {ln}" for ln in options]
    lines += ["", "inputs:"]
    for k, t in cap.inputs.items():
        axes = [lifter.input_axis(k, i, s) for i, s in enumerate(t.shape)]
        lines.append(f"  {k}: {_DTYPES[t.dtype]}[{', '.join(axes)}]")
    lines += ["outputs:"] + [f"  {o}: {dt}[{ax}]" for o, _, ax, dt in outputs] + [""]
    seconds = getattr(lifter, "seconds", {})      # two free dims of one size (`windows.second_free`)
    if seconds:
        lines += ["require:"] + [f"  - {b} == {a}" for a, b in seconds.items()] + [""]
    if renderer.blocks:
        lines.append("blocks:")
        for bname, text in renderer.blocks.items():
            lines.append(f"  {bname}{text}")
            lines.append("")
    lines.append("body: |")
    lines += [f"  {ln}" for stmt in body for ln in stmt.splitlines()]
    lines += ["", "hf_config:"] + [f"  {ln}" for ln in _hf_config(cap, dims, lifter)]
    rules = _weights(cap.model, lifter, renderer, dead_paths)
    lines += ["", "weights:", "  hf:" if rules else "  hf: {}"] + [f"    {ln}" for ln in rules]
    return "\n".join(lines) + "\n"


def _count_name(dims: Dims, n: int) -> str:
    """The dim naming how often a shared block is applied (a `depth` or layer count first), else the number."""
    keys = sorted((k for k, v in dims.values.items() if v == n), key=lambda k: ("layer" not in k and "depth" not in k))
    if keys:
        dims.used.add(keys[0])
    return keys[0] if keys else str(n)


def _named_axes(lifter: Lifter, out: L, node: Any) -> L:
    """An output's type names each axis: a merged axis (`n_heads*head_dim`) is relabelled to a dim of its size
    or to the number."""
    from nnspec.importer.ops import _size_of_name
    from nnspec.importer.patterns import relabel

    renames = {}
    for g in out.axes:
        if g and "*" in g[0]:
            size = _size_of_name(lifter, g[0], node)
            new = lifter.dims.name(size)
            renames[g[0]] = new if "*" not in new else str(size)
    if len(renames) == 1:
        (old, new), = renames.items()
        return relabel(lifter, out, old, new, out.scope, out.idx + 0.0005)
    if renames:            # several merged axes (a window grid's `(nh wh)`, `(nw ww)`): one relabel names them all
        for old, new in renames.items():
            lifter.dims.aliases.setdefault(new, old)
        if not out.atom:
            out.bind = True
        items = [renames.get(a, a) for a in out.order]
        out = L("{0}" + annotation(items), [out], [tuple(renames.get(a, a) for a in g) for g in out.axes], items,
                out.scope, out.idx + 0.0005, hint=out.hint)
    return out


def _output_nodes(cap: Captured) -> list[tuple[str, Any]]:
    """The model's tensor outputs, named as its output object names them (`logits`, `last_hidden_state`)."""
    out = next(n for n in cap.program.graph.nodes if n.op == "output")
    nodes = list(out.args[0]) if isinstance(out.args[0], (list, tuple)) else [out.args[0]]
    with torch.no_grad():
        got = cap.model(**cap.inputs)
    keys = list(got.keys()) if hasattr(got, "keys") else [f"output{i}" for i in range(len(nodes))]
    return [(k, n) for k, n in zip(keys, nodes, strict=False) if n is not None]


def _options(lifter: Lifter) -> list[str]:
    out = []
    if getattr(lifter, "rope_theta", None) is not None:
        rp = lifter.cap.config.get("rope_parameters")
        key = "rope_parameters.rope_theta" if isinstance(rp, dict) and "rope_theta" in rp else "rope_theta"
        out.append(f"rope_theta: {{default: {lifter.rope_theta!r}, hf: {{key: {key}}}}}")
    return out


def _hf_config(cap: Captured, dims: Dims, lifter: Lifter) -> list[str]:
    """Every key that is not a dim is ignored: the import fixed what it computes (eps, activation, rope theta are
    written as the values the model used), so a config that changes them needs a new import."""
    consumed = set(dims.values)
    if getattr(lifter, "rope_theta", None) is not None:
        consumed.add("rope_parameters" if isinstance(cap.config.get("rope_parameters"), dict) else "rope_theta")
    keys = sorted(k for k in cap.config if k not in consumed and k not in _BOOKKEEPING)
    out = []
    line = "ignore: ["
    for k in keys:
        piece = k + ", "
        if len(line) + len(piece) > 100:
            out.append(line.rstrip())
            line = "         "
        line += piece
    out.append(line.rstrip().rstrip(",") + "]")
    return out


def _weights(model: nn.Module, lifter: Lifter, renderer: Renderer, dead: dict[str, tuple[str, str]]) -> list[str]:
    """Spec path -> checkpoint key: the spec's scopes are the module names, less the flattened base model, with
    a module list's index written `{i}`; a parameter no output reads at the path of its `param` (`dead.py`)."""
    prefixes = sorted((p + "." for p in lifter.flattened if p), key=len, reverse=True)

    def paths(key: str) -> tuple[str, str]:
        """(spec path, checkpoint pattern) of a key: each repeated module list's index a placeholder of its own,
        outermost `{i}` (nested repeats: `{j}`, ...); a list whose layers are separate calls (`layers_0`) keeps
        its index in the key and joins it to the list's name in the spec."""
        parts, letters = key.split("."), iter("ijklmnpq")
        spec: list[str] = []
        pat: list[str] = []
        for k, p in enumerate(parts):
            owner = ".".join(parts[:k])
            if p.isdigit() and owner in renderer.unrolled and spec:
                spec[-1] = f"{spec[-1]}_{p}"
                pat.append(p)
                continue
            if p.isdigit() and owner in renderer.layer_counts:
                p = f"{{{next(letters)}}}"
            spec.append(p)
            pat.append(p)
        path = ".".join(spec)
        return next((path[len(q):] for q in prefixes if path.startswith(q)), path), ".".join(pat)

    def pattern(key: str) -> str:
        return paths(key)[1]

    rules: dict[str, str] = {}
    by_moe = {key: (path, r) for path, r in lifter.moe.items() for key in moe.weight_keys(r)}
    for key, _ in model.named_parameters():
        if key in by_moe:
            # `moe`'s parameters: router, gate_proj and up_proj (halves of the fused gate_up_proj), down_proj
            path, r = by_moe[key]
            for mine, theirs in moe.weight_rules(r, paths(path)[0], pattern).items():
                rules.setdefault(mine, theirs)
            continue
        mine, pat = paths(key)
        if key in dead:              # a parameter no output reads: below its block, the key's path is literal
            owner, name = dead[key]
            mine = paths(f"{owner}.{name}" if owner else name)[0]
            pat = f"{paths(owner)[1]}.{key[len(owner) + 1:]}" if owner else key
        module = key.rsplit(".", 1)[0]
        suffix = " | transpose" if module in lifter.transposed and key.endswith(".weight") else ""
        if key in lifter.squeezed:
            suffix = f" | squeeze({', '.join(map(str, lifter.squeezed[key]))})"
        rules.setdefault(mine, pat + suffix)
    return [f"{k}: {v}" for k, v in rules.items()]
