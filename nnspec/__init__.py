"""nnspec: a declarative model-spec compiler. Write an architecture once; check, draw, optimise and run it."""

from nnspec.compiler.check import CheckResult, check
from nnspec.compiler.elaborate import UsageError
from nnspec.errors import InternalError, SpecError

__version__ = "0.1.0"

__all__ = ["CheckResult", "InternalError", "SpecError", "UsageError", "__version__", "check"]
