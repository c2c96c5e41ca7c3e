"""Pointwise kernels generated from the IR: one kernel per elementwise fusion group (or lone pointwise op).

The kernel walks the group's domain (the axes every member shares) as one flat range. Each program takes a
block of flat offsets, turns them into one index per axis, and reads every operand through its own strides,
so broadcast operands (a `[T, S]` causal mask against `[B, H, T, S]` scores) and permuted layouts are read in
place, without copies. Scalar constants become literals. The members are computed by `pointwise.Body`, and
each value used outside the group is stored.

The launcher beside it checks whether to run the kernel at all (`K.use_triton`: a GPU, or the interpreter)
and whether autograd needs the call (these kernels have no backward); otherwise it calls the group's torch
function, the same computation the torch backend generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.source import Names
from nnspec.backends.triton.pointwise import Body, Unsupported, Value, loaded
from nnspec.compiler.ir import DType, Graph, TensorType

KERNEL_WORDS = frozenset({"tl", "triton", "offs", "mask", "rest", "n", "seed", "BLOCK", "TRAINING", "pid",
                          # the launcher's own locals and the module-level names it reads: a spec value named
                          # `shape`, `block`, `K` or `torch` becomes `shape_1`, never shadowing them
                          "shape", "block", "K", "torch", "F", "nn", "math", "training", "rows", "grid", "meta",
                          "M", "N", "Kd"})


def kernel_names(words: frozenset[str], name: str, fallback: str, rank: int = 0) -> Names:
    """The one namespace of a kernel and its launcher: their fixed words, the index and size names of `rank` axes,
    and the module-level functions the launcher calls (itself, its kernel, its torch fallback)."""
    return Names(words | {f"i{j}" for j in range(rank)} | {f"size{j}" for j in range(rank)}
                 | {name, f"{name}_kernel", fallback})


@dataclass
class Kernel:
    """A generated kernel: its source (the @triton.jit function and its launcher) and how to call it."""

    name: str            # the launcher's name; the kernel is `{name}_kernel`
    source: str
    inputs: list[str]    # graph nodes passed to the launcher, in order
    outputs: list[str]   # graph nodes the launcher returns, in order
    training: bool       # the launcher takes the module's `training` flag (it holds a dropout)
    ops: int             # graph ops one launch computes (for the launch counter)
    summary: str         # one line for --explain
    pointers: dict[str, DType] = field(default_factory=dict)   # the kernel's pointer parameters and their dtypes


def domain_of(graph: Graph, members: list[str]) -> TensorType:
    """The axes every member shares, in the order of the last member's type."""
    last = graph[members[-1]].tensor_type
    for m in members:
        t = graph[m].type
        if not isinstance(t, TensorType) or sorted(t.names) != sorted(last.names):
            raise Unsupported(f"{m} does not cover the same axes as {members[-1]}")
    return last


def pointwise_kernel(graph: Graph, members: list[str], inputs: list[str], outputs: list[str], name: str,
                     fallback: str) -> Kernel:
    """Kernel and launcher for the pointwise `members` (in graph order) reading `inputs`, returning `outputs`."""
    domain = domain_of(graph, members)
    axes = domain.names
    rank = len(axes)
    names = kernel_names(KERNEL_WORDS, name, fallback, rank)
    var = {n: names.fresh(n) for n in [*inputs, *members]}
    body = Body(graph, lambda n: var[n])
    tensors = tensor_operands(graph, inputs, axes, body, var)
    dims = {i: tuple(graph[i].tensor_type.index(a) if a in graph[i].tensor_type.names else None for a in axes)
            for i in tensors}
    if not tensors:
        raise Unsupported("no tensor operand to take the domain's sizes from")
    offsets = "offs"
    ptr = {n: names.fresh(f"{var[n]}_ptr") for n in [*tensors, *outputs]}
    stride = {n: [names.fresh(f"{var[n]}_s{j}") for j in range(rank)] for n in [*tensors, *outputs]}
    for i in tensors:
        t = graph[i].tensor_type
        off = " + ".join(f"i{j} * {stride[i][j]}" for j in range(rank) if dims[i][j] is not None) or "offs * 0"
        load = f"tl.load({ptr[i]} + {off}, mask=mask)"
        if len(load) > 70:   # keep kernel lines short: the addresses first
            at = names.fresh(f"{var[i]}_at")
            body.lines.append(f"{at} = {ptr[i]} + {off}")
            load = f"tl.load({at}, mask=mask)"
        body.lines.append(f"{var[i]} = {loaded(load, t.dtype)}")
        body.bind(i, Value(var[i], t.dtype))
    for m in members:
        body.emit(graph[m], offsets)
    for o in outputs:
        off = " + ".join(f"i{j} * {stride[o][j]}" for j in range(rank)) or "offs * 0"
        at = names.fresh(f"{var[o]}_at")
        body.lines += [f"{at} = {ptr[o]} + {off}", f"tl.store({at}, {var[o]}.to({ptr[o]}.dtype.element_ty), mask=mask)"]

    stride_params = [s for n in tensors for j, s in enumerate(stride[n]) if dims[n][j] is not None] + \
        [s for o in outputs for s in stride[o]]
    params = [*(ptr[n] for n in tensors), *(ptr[o] for o in outputs), "n", *(f"size{j}" for j in range(rank)),
              *stride_params, "seed", "TRAINING: tl.constexpr", "BLOCK: tl.constexpr"]
    ops = ", ".join(graph[m].op for m in members)
    lines = ["@triton.jit", f"def {name}_kernel(", *wrap_params(params), "):",
             f'    """{ops} over [{", ".join(axes)}], one block of flat offsets per program."""',
             "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
             "    mask = offs < n"]
    if rank:
        lines.append("    rest = offs")
        for j in reversed(range(1, rank)):
            lines += [f"    i{j} = rest % size{j}", f"    rest = rest // size{j}"]
        lines.append("    i0 = rest")
    lines += [f"    {line}" for line in body.lines]

    # ---- the launcher ----
    training = body.uses_seed
    args = [var[n] for n in tensors]
    first = {a: next(n for n in tensors if a in graph[n].tensor_type.names) for a in axes}
    shape = [f"{var[first[a]]}.shape[{graph[first[a]].tensor_type.index(a)}]" for a in axes]
    lau = launcher_head(name, args, len(outputs), training, fallback,
                        f"Fused {ops} over [{', '.join(axes)}] (a generated kernel; torch code when it cannot run).")
    lau.append(f"    shape = ({', '.join(shape)}{',' if rank == 1 else ''})")
    device = f"{args[0]}.device"
    for o in outputs:
        t = graph[o].tensor_type
        order = ", ".join(f"shape[{axes.index(a)}]" for a in t.names)
        lau.append(f"    {var[o]} = torch.empty(({order}{',' if t.rank == 1 else ''}), dtype={torch_dtype(t.dtype)}, "
                   f"device={device})")
    lau.append("    n = " + (f"{var[outputs[0]]}.numel()"))
    if training:
        lau.append("    seed = int(torch.randint(0, 2**31 - 1, ()).item()) if training else 0")
    lau += ["    if n:", "        block = K.pointwise_block(n)"]
    launch_args = [*args, *(var[o] for o in outputs), "n", "*shape"]
    launch_args += [f"*K.strides({var[n]}, {_tuple(tuple(d for d in dims[n] if d is not None))})" for n in tensors
                    if any(d is not None for d in dims[n])]
    launch_args += [f"*K.strides({var[o]}, {_tuple(tuple(graph[o].tensor_type.index(a) for a in axes))})"
                    for o in outputs if rank]
    launch_args += ["seed" if training else "0", f"TRAINING={'training' if training else 'False'}", "BLOCK=block"]
    lau += [f"        {name}_kernel[(triton.cdiv(n, block),)](", *wrap_params(launch_args, "            "),
            "        )", f'        K.launched("{name}", {len(members)})']
    lau.append(f"    return {', '.join(var[o] for o in outputs)}")
    return Kernel(name, "\n".join(lines + lau), tensors, list(outputs), training, len(members),
                  f"{name}: {ops} over [{', '.join(axes)}]", {ptr[n]: graph[n].tensor_type.dtype for n in ptr})


def tensor_operands(graph: Graph, inputs: list[str], axes: tuple[str, ...], body: Body, var: dict[str, str]
                    ) -> list[str]:
    """The inputs a kernel reads from memory, in order; scalar constants are bound in `body` as literals."""
    tensors = []
    for i in inputs:
        node, t = graph[i], graph[i].type
        if not isinstance(t, TensorType):
            raise Unsupported(f"{i} is a tuple")
        if node.op == "const" and t.rank == 0:
            body.bind(i, Value(var[i], t.dtype, const=node.attrs["value"]))
            continue
        outside = [a for a in t.names if a not in axes]
        if outside:
            raise Unsupported(f"{i} has axes {outside} outside the kernel's domain [{', '.join(axes)}]")
        tensors.append(i)
    return tensors


def launcher_head(name: str, args: list[str], n_outputs: int, training: bool, fallback: str, doc: str) -> list[str]:
    """A launcher's signature, docstring and its way out: the torch function when no kernel can run."""
    sig = [f"{a}: torch.Tensor" for a in args] + (["training: bool = False"] if training else [])
    returns = "torch.Tensor" if n_outputs == 1 else f"tuple[{', '.join(['torch.Tensor'] * n_outputs)}]"
    return ["", "", *P.signature("", f"def {name}", sig, f" -> {returns}:"),
            f'    """{doc}"""',
            f"    if not K.runs_kernel({', '.join(args)}):",
            f'        K.fell_back("{name}")',
            f"        return {fallback}({', '.join(args + (['training'] if training else []))})"]


def torch_dtype(d: DType) -> str:
    """The torch dtype's name in generated source: an IR dtype's name is torch's (`torch.bfloat16`)."""
    return f"torch.{d.value}"


def _tuple(items: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, items)) + ("," if len(items) == 1 else "") + ")"


def wrap_params(params: list[str], indent: str = "    ", width: int = 100) -> list[str]:
    """Parameters or arguments, several to a line, each line ending in a comma."""
    lines: list[str] = []
    cur = indent
    for p in params:
        piece = p + ","
        if cur.strip() and len(cur) + 1 + len(piece) > width:
            lines.append(cur)
            cur = indent
        cur = cur + (" " if cur.strip() else "") + piece
    if cur.strip():
        lines.append(cur)
    return lines
