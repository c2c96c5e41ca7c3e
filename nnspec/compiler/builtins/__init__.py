"""The spec language's built-in functions, registered in `BUILTINS` on import (one module per family)."""

from nnspec.compiler.builtins import core, indexing, moe, positional, spatial, structure  # noqa: F401
