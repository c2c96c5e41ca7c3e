"""Spec -> typed graph. Walks the statements, builds nodes and infers every node's type as it is made, so each
error is reported at the user's expression.

Blocks become templates (one `Graph` per distinct binding of argument types and static values); calls and repeats
refer to them, so nothing is unrolled.

Modules, lowest first (each imports only those above it in this list):
    limits, values            how big a model may get; what an expression evaluates to
    static_eval, dims         expressions known when the spec is checked; binding dims and options
    guards, tensor_types      run-time size guards; declared types
    axis_rules                broadcasts no operand covers (outer) are refused; size-1 axes' birthplaces in errors
    state                     model-wide state shared by every builder
    surface                   the builtin table and the narrow `Builder` API builtins may use
    views                     named-axis views, as functions of a type and an annotation
    nodes -> expressions -> statements -> blocks
                              the graph builder, one layer per idea; `blocks.Builder` is the whole of it
    signature                 a block call's own names, bound per call, and its results in the caller's names
    model                     `Elaborator`: the entry point
"""

from nnspec.compiler.elaborate.blocks import Builder
from nnspec.compiler.elaborate.dims import UsageError
from nnspec.compiler.elaborate.limits import MAX_BLOCK_DEPTH, MAX_DIM_DEPTH, MAX_NODES, MAX_PARAM_TENSORS, MAX_REPEAT
from nnspec.compiler.elaborate.model import Elaborator
from nnspec.compiler.elaborate.static_eval import CONSTANTS
from nnspec.compiler.elaborate.surface import BUILTINS, BuiltinDef, Surface, builtin
from nnspec.compiler.elaborate.values import FuncRef, TensorValue, TupleValue, kind_of

__all__ = ["BUILTINS", "CONSTANTS", "MAX_BLOCK_DEPTH", "MAX_DIM_DEPTH", "MAX_NODES", "MAX_PARAM_TENSORS", "MAX_REPEAT",
           "Builder", "BuiltinDef", "Elaborator", "FuncRef", "Surface", "TensorValue", "TupleValue", "UsageError",
           "builtin", "kind_of"]
