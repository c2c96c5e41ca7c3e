"""Hand-written Triton kernels that generated modules call, one module each: `norms` (layernorm, rmsnorm, with
a fused residual add), `softmax`, `rotary`, `attention` (flash attention forward), `embedding` and `moe`
(grouped GEMMs over the tokens routed to each expert).

Each module holds its @triton.jit kernels, a launcher (checks its inputs, allocates outputs, launches,
records `runtime.launched`) and the torch reference the launcher runs instead when `runtime.use_triton` says
no (recorded by `runtime.fell_back`). Launchers take and return torch tensors and are differentiable
(torch.autograd.Function); docs/triton.md lists them. Import the modules (`from ...kernels import norms`):
the package does not re-export the launchers, whose names would hide the modules of the same name.
"""
