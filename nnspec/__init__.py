"""nnspec: a declarative model-spec compiler. Write an architecture once; check, draw, optimise and run it."""

from nnspec.compiler.check import CheckResult, check
from nnspec.compiler.elaborate import UsageError
from nnspec.errors import InternalError, ResourceError, SpecError

__version__ = "0.1.0"

__all__ = ["CheckResult", "InternalError", "ResourceError", "SpecError", "UsageError", "__version__", "build", "check",
           "load_weights", "save_pretrained", "save_weights"]

# need torch: imported on first use, so `import nnspec` (and `nnspec check`) does not load it
_LAZY = {"build": "nnspec.generated", "load_weights": "nnspec.backends.torch.weights",
         "save_weights": "nnspec.backends.torch.weights", "save_pretrained": "nnspec.export.hf"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nnspec' has no attribute {name!r}")
