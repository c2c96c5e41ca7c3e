"""torch, imported when first used rather than when a module is imported.

An op family file in `ops/` holds each op's reference lowering (which computes on tensors: torch) beside its code
emitter (which writes Python source: no torch), and code generation imports those files for their emitters. So they
take `torch`, `F` and `runtime` from here: `nnspec compile` then runs where torch is not installed (the torch extra
is for building and running models), and the first lowering to run imports the real module. Without torch, that
first use raises `ModuleNotFoundError` naming torch, which the command line reports as the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """A stand-in for the module `name`, imported on the first attribute read; each attribute read is then kept
    on the stand-in, so later reads cost what a module attribute costs."""

    def __init__(self, name: str) -> None:
        super().__init__(name)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):     # copy/pickle/inspect probing a stand-in must not import anything
            raise AttributeError(attr)
        value = getattr(importlib.import_module(self.__name__), attr)
        setattr(self, attr, value)
        return value


torch: Any = LazyModule("torch")
F: Any = LazyModule("torch.nn.functional")
nn: Any = LazyModule("torch.nn")
runtime: Any = LazyModule("nnspec.backends.torch.runtime")
