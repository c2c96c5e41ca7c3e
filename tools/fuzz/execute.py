"""The run stage's tools: inputs for a model, its outputs checked, a generated module run against the interpreter,
and dims shrunk so that a big seed runs."""

from __future__ import annotations

from typing import Any

from nnspec.errors import SpecError

SKIP_PARAM_BYTES = 32 << 20     # run only models whose parameters fit in 32 MiB ...
SKIP_NUMEL = 1 << 20            # ... and whose largest tensor has at most 1M elements ...
# ... and that run at most this many ops once repeats are unrolled: the run stage runs each model five times (the
# interpreter, two levels of two targets), and 1000 x 400 iterations of a shared relu take minutes there - the work
# the spec asks for, not a hang of nnspec (check and compile stay proportional to the spec: they are timed)
SKIP_EXECUTIONS = 20_000
RTOL, ATOL = 1e-4, 1e-5       # the same math in another order (einsum vs matmul, fused attention)


def executions(model: Any) -> int:
    """Op executions of one forward with calls and repeats unrolled, in closed form (a body is walked once)."""
    from nnspec.compiler.analysis import runs_block
    from nnspec.compiler.ir import repeat_counts
    memo: dict[int, int] = {}

    def count(graph: Any) -> int:
        if id(graph) not in memo:
            n = 0
            for node in graph:
                n += 1
                if node.op == "repeat":
                    n += sum(k * count(model.templates[b]) for b, k in repeat_counts(node.attrs, weights=False).items())
                elif runs_block(node):
                    n += count(model.templates[node.attrs["block"]])
            memo[id(graph)] = n
        return memo[id(graph)]
    return count(model.graph)


def run_generated(text: str, class_name: str, interp: Any, inputs: dict[str, Any], want: dict[str, Any],
                  torch: Any, label: str, directory: Any = None) -> None:
    """The generated module, given the interpreter's weights, computes the interpreter's outputs (eval mode).

    The Triton target's file is loaded from `directory` (`@triton.jit` reads its source from a file) and runs its
    torch fallbacks (no GPU, no interpreter: kernels would take seconds a mutant in Triton's interpreter)."""
    if directory is not None:
        from nnspec.backends.loading import load_source
        from nnspec.backends.triton import runtime
        namespace = vars(load_source(text, "fuzz", directory))
        interpreting, runtime.interpreting = runtime.interpreting, lambda: False
    else:
        namespace = {"__name__": "nnspec_fuzz_generated"}
        exec(compile(text, f"<generated {label}>", "exec"), namespace)  # nnspec's own output, not spec text
    try:
        _compare(namespace[class_name](), interp, inputs, want, torch, label)
    finally:
        if directory is not None:
            runtime.interpreting = interpreting


def _compare(module: Any, interp: Any, inputs: dict[str, Any], want: dict[str, Any], torch: Any, label: str) -> None:
    module.load_state_dict(interp.root.state_dict())
    with torch.no_grad():
        got = module.eval()(**inputs)
    got = got if isinstance(got, dict) else {next(iter(want)): got}
    if sorted(got) != sorted(want):
        raise AssertionError(f"generated {label} returns {sorted(got)}, the interpreter {sorted(want)}")
    for name, value in want.items():
        try:
            torch.testing.assert_close(got[name], value, equal_nan=True, rtol=RTOL, atol=ATOL)
        except AssertionError as e:
            raise AssertionError(f"generated {label}, output {name}: {e}") from None


def free_sizes(model: Any, value: int) -> dict[Any, Any] | None:
    """Every free dim bound to `value`, over the model's declared dims."""
    import sympy
    sizes = dict(model.dims.values)
    for sym in model.dims.free.values():
        if sym not in sizes:
            sizes[sym] = sympy.Integer(value)
    return sizes


def largest_numel(model: Any, sizes: dict[Any, Any]) -> int:
    """The element count of the largest tensor of any graph (templates included), with `sizes` bound."""
    import sympy

    from nnspec.compiler.ir import TensorType
    worst = 0
    for graph in (model.graph, *model.templates.values()):
        for node in graph:
            types = node.type if isinstance(node.type, tuple) else (node.type,)
            for t in types:
                if isinstance(t, TensorType):
                    n = sympy.sympify(t.numel()).xreplace(sizes)
                    if not n.is_Integer:
                        return 1 << 62
                    worst = max(worst, int(n))
    return worst


def make_inputs(model: Any, sizes: dict[Any, Any], torch: Any) -> dict[str, Any]:
    import sympy

    from nnspec.backends.torch.dtypes import TORCH_DTYPES
    gen = torch.Generator().manual_seed(0)
    out = {}
    for name, node_name in model.inputs.items():
        node = model.graph[node_name]
        t = node.type
        shape = [int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes]
        dtype = TORCH_DTYPES[t.dtype]
        if dtype.is_floating_point:
            out[name] = torch.randn(shape, generator=gen).to(dtype)
        elif dtype == torch.bool:
            out[name] = torch.rand(shape, generator=gen) < 0.7
        else:
            out[name] = torch.zeros(shape, dtype=dtype)     # indices: 0 is in range of every table
    return out


def check_outputs(model: Any, outputs: dict[str, Any], sizes: dict[Any, Any], torch: Any) -> None:
    import sympy

    from nnspec.backends.torch.dtypes import TORCH_DTYPES
    for name, node_name in model.outputs.items():
        t = model.graph[node_name].type
        want = tuple(int(sympy.sympify(s).xreplace(sizes)) for s in t.sizes)
        got = outputs[name]
        if tuple(got.shape) != want or got.dtype != TORCH_DTYPES[t.dtype]:
            raise AssertionError(f"output {name}: checked as {t} = {want}, ran as {tuple(got.shape)} {got.dtype}")


def shrink_dims(text: str) -> dict[str, int] | None:
    """`--set` values for a seed's integer dims that keep it valid and make it small; None if it is small.

    Every integer dim is first capped at one value (the smallest that still checks), then each is tried at 2 on
    its own (layer counts, heads): a 22-layer model of width 64 is still slow to run on every mutant."""
    import nnspec
    from nnspec.compiler.analysis import estimate_parameter_bytes
    from nnspec.spec.load import load

    def size(dims: dict[str, int]) -> int | None:
        try:
            return estimate_parameter_bytes(nnspec.check(text, **dims).model)
        except SpecError:
            return None

    if estimate_parameter_bytes(nnspec.check(text).model) <= SKIP_PARAM_BYTES // 8:
        return None
    ints = {n: d.value for n, d in load(text).dims.items() if isinstance(d.value, int)}
    for value in (8, 16, 4, 32, 2, 64):
        small = {n: min(v, value) for n, v in ints.items()}
        now = size(small)
        if now is not None and now <= SKIP_PARAM_BYTES // 8:
            break
    else:
        return None
    for name in sorted(small):
        if small[name] > 2:
            fewer = size({**small, name: 2})
            if fewer is not None and fewer <= now:
                small[name], now = 2, fewer
    return small
