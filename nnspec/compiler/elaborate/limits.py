"""How big a model elaboration agrees to build. Each limit stops a short spec from asking for an enormous graph (or
Python recursion deep enough to crash) with a located E005/E023 instead of exhausting memory."""

MAX_NODES = 200_000
MAX_REPEAT = 100_000
# parameter and buffer tensors once calls and repeats are unrolled (a 10^5-layer repeat of a 10^5-layer repeat is
# 15 lines of spec): building the model, and mapping weights, visit each one
MAX_PARAM_TENSORS = 200_000
# block instances (one nn.Module each when built) once calls and repeats are unrolled: nested repeats of a block
# without parameters pass the tensor limit, yet would build 10^10 modules
MAX_BLOCK_MODULES = 200_000
# `require:` lines: real models have a handful; each is a sympy proof of tens of milliseconds
MAX_REQUIREMENTS = 1_000
MAX_DIM_DEPTH = 100   # a dim defined by a dim defined by a dim ...
MAX_BLOCK_DEPTH = 64  # blocks calling blocks (real models nest a handful deep); each level is Python recursion
