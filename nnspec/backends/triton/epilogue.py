"""Matmul kernels with a fused epilogue, generated from an `epilogue` fusion group (a linear, then pointwise ops
on its result: bias + activation, dropout, a residual add).

The kernel is the tiled matmul of Triton's tutorials over `x` seen as [M, K] rows (every axis but the
contracted one flattened) and the weight `[N, K]`; the bias and the group's pointwise ops run on the fp32
accumulator tile before anything is stored, so the activation never makes a round trip through memory.
Other operands of the epilogue (a residual) are read as [M, N] views, broadcast ones with stride 0.
"""

from __future__ import annotations

from nnspec.backends.torch import pysrc as P
from nnspec.backends.torch.layout import align
from nnspec.backends.triton.elementwise import (
    KERNEL_WORDS,
    Kernel,
    kernel_names,
    launcher_head,
    tensor_operands,
    torch_dtype,
    wrap_params,
)
from nnspec.backends.triton.pointwise import TL_TYPES, Body, Unsupported, Value, loaded
from nnspec.compiler.ir import DType, Graph, TensorType

WORDS = KERNEL_WORDS | {"rm", "rn", "rk", "acc", "k0", "a", "b", "M", "N", "Kd", "BLOCK_M", "BLOCK_N", "BLOCK_K",
                        "UPCAST", "IEEE", "pid_m", "pid_n"}


def epilogue_kernel(graph: Graph, members: list[str], inputs: list[str], outputs: list[str], name: str,
                    fallback: str) -> Kernel:
    lin = graph[members[0]]
    if lin.op != "linear":
        raise Unsupported("an epilogue group starts with its linear")
    x_t, out_t = graph[lin.inputs[0]].tensor_type, lin.tensor_type
    if x_t.names[-1] != lin.attrs["axis"]:
        raise Unsupported("the linear's input axis is not the last")
    if x_t.dtype not in (DType.float32, DType.float16, DType.bfloat16):
        raise Unsupported(f"a {x_t.dtype} matmul")
    for m in members[1:]:
        t = graph[m].type
        if not isinstance(t, TensorType) or t.names != out_t.names:
            raise Unsupported(f"{m} is not laid out as the linear's output [{', '.join(out_t.names)}]")
    names = kernel_names(WORDS, name, fallback)
    var = {n: names.fresh(n) for n in [*inputs, *members]}
    body = Body(graph, lambda n: var[n])
    x, w = lin.inputs[0], lin.inputs[1]
    bias = lin.inputs[2] if len(lin.inputs) > 2 else None
    if x in members or w in members:
        raise Unsupported("the matmul's operands are computed inside the group")
    extra = tensor_operands(graph, [i for i in inputs if i not in (x, w, bias)], out_t.names, body, var)
    ptr = {n: names.fresh(f"{var[n]}_ptr") for n in [x, w, *([bias] if bias else []), *extra, *outputs]}
    sm = {n: names.fresh(f"{var[n]}_sm") for n in [*extra, *outputs]}
    sn = {n: names.fresh(f"{var[n]}_sn") for n in [*extra, *outputs]}
    lines = ["acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)",
             "for k0 in range(0, Kd, BLOCK_K):",
             f"    a = tl.load({ptr[x]} + rm[:, None] * x_sm + (k0 + rk)[None, :] * x_sk,",
             "                mask=(rm[:, None] < M) & ((k0 + rk)[None, :] < Kd), other=0.0)",
             f"    b = tl.load({ptr[w]} + rn[None, :] * w_sn + (k0 + rk)[:, None] * w_sk,",
             "                mask=(rn[None, :] < N) & ((k0 + rk)[:, None] < Kd), other=0.0)",
             "    if UPCAST:  # the interpreter mis-multiplies bf16",
             "        a = a.to(tl.float32)",
             "        b = b.to(tl.float32)",
             "    if IEEE:  # float32 operands: full precision, not tf32",
             '        acc = tl.dot(a, b, acc, input_precision="ieee")',
             "    else:",
             "        acc = tl.dot(a, b, acc)",
             "mask = (rm[:, None] < M) & (rn[None, :] < N)",
             "offs = rm[:, None].to(tl.int64) * N + rn[None, :]"]
    lin_expr = "acc"
    if bias:
        lines.append(f"{var[bias]} = tl.load({ptr[bias]} + rn, mask=rn < N, other=0.0).to(tl.float32)")
        lin_expr = f"acc + {var[bias]}[None, :]"
    if out_t.dtype != DType.float32:
        lin_expr = f"({lin_expr}).to({TL_TYPES[out_t.dtype]}).to(tl.float32)"
    lines.append(f"{var[lin.name]} = {lin_expr}")
    body.bind(lin.name, Value(var[lin.name], out_t.dtype))
    for e in extra:
        t = graph[e].tensor_type
        load = f"tl.load({ptr[e]} + rm[:, None] * {sm[e]} + rn[None, :] * {sn[e]}, mask=mask)"
        lines.append(f"{var[e]} = {loaded(load, t.dtype)}")
        body.bind(e, Value(var[e], t.dtype))
    for m in members[1:]:
        body.emit(graph[m], "offs")
    lines += body.lines
    for o in outputs:
        lines.append(f"tl.store({ptr[o]} + rm[:, None] * {sm[o]} + rn[None, :] * {sn[o]},")
        lines.append(f"         {var[o]}.to({ptr[o]}.dtype.element_ty), mask=mask)")
    ops = ", ".join(graph[m].op for m in members)
    strides = ["x_sm", "x_sk", "w_sn", "w_sk", *(s for e in extra for s in (sm[e], sn[e])),
               *(s for o in outputs for s in (sm[o], sn[o]))]
    params = [*ptr.values(), "M", "N", "Kd", *strides, "seed", "TRAINING: tl.constexpr", "UPCAST: tl.constexpr",
              "IEEE: tl.constexpr", "BLOCK_M: tl.constexpr", "BLOCK_N: tl.constexpr", "BLOCK_K: tl.constexpr"]
    src = ['@triton.autotune(configs=K.matmul_configs(), key=["M", "N", "Kd"])', "@triton.jit",
           f"def {name}_kernel(", *wrap_params(params), "):",
           f'    """{ops}: x[M, K] @ w[N, K]^T with the epilogue applied to each [BLOCK_M, BLOCK_N] tile."""',
           "    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)",
           "    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)",
           "    rk = tl.arange(0, BLOCK_K)",
           *(f"    {line}" for line in lines)]

    # ---- the launcher ----
    tensors = [x, w, *([bias] if bias else []), *extra]
    args = [var[n] for n in tensors]
    training = body.uses_seed
    xv, wv = var[x], var[w]
    lau = launcher_head(name, args, len(outputs), training, fallback,
                        f"{ops} as one matmul kernel with a fused epilogue (torch code when it cannot run).")
    lau += [f"    shape = (*{xv}.shape[:-1], {wv}.shape[0])",
           f"    rows = {xv}.reshape(-1, {xv}.shape[-1])",
           f"    M, N, Kd = rows.shape[0], {wv}.shape[0], rows.shape[1]"]
    for e in extra:
        t = graph[e].tensor_type
        aligned = P.src(align(P.Name(var[e]), t, out_t.names, full=True))
        lau.append(f"    {var[e]} = K.rows({aligned}, shape)")
    for o in outputs:
        lau.append(f"    {var[o]} = torch.empty(shape, dtype={torch_dtype(graph[o].tensor_type.dtype)}, "
                   f"device={xv}.device)")
    if training:
        lau.append("    seed = int(torch.randint(0, 2**31 - 1, ()).item()) if training else 0")
    launch = ["rows", wv, *([var[bias]] if bias else []), *(var[e] for e in extra), *(var[o] for o in outputs),
              "M", "N", "Kd", "*rows.stride()", f"*{wv}.stride()", *(f"*{var[e]}.stride()" for e in extra),
              *("N, 1" for _ in outputs),   # outputs are new contiguous [..., N] tensors
              "seed" if training else "0", f"TRAINING={'training' if training else 'False'}",
              "UPCAST=K.interpreting()", f"IEEE={xv}.dtype == torch.float32"]
    lau += ["    if M and N:",
            "        def grid(meta: dict) -> tuple[int, int]:",
            '            return triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"])',
            "",
            f"        {name}_kernel[grid](", *wrap_params(launch, "            "), "        )",
            f'        K.launched("{name}", {len(members) - 1})',
            f"    return {', '.join(var[o] for o in outputs)}"]
    return Kernel(name, "\n".join(src + lau), tensors, list(outputs), training, len(members) - 1,
                  f"{name}: matmul + {', '.join(graph[m].op for m in members[1:])} over [{', '.join(out_t.names)}]",
                  {ptr[n]: graph[n].tensor_type.dtype for n in ptr})
