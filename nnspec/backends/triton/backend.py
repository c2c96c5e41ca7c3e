"""The Triton backend behind the backend contract: the torch backend's file with kernels where the graph allows
(`codegen.TritonModuleGen`). Same options and refusals as the torch backend, whose generator it extends; its
files are loaded from the cache directory because `@triton.jit` reads kernel source from a real file."""

from __future__ import annotations

from types import ModuleType

from nnspec.backends.base import Generated
from nnspec.backends.loading import cache_dir, load_source
from nnspec.backends.torch.backend import TorchBackend
from nnspec.backends.triton.codegen import TritonModuleGen


class TritonBackend(TorchBackend):
    name = "triton"
    description = "the PyTorch module with generated and template Triton kernels (needs triton and nnspec)"
    generator = TritonModuleGen

    def load(self, generated: Generated, name: str) -> ModuleType:
        return load_source(generated.source, name, cache_dir())


BACKEND = TritonBackend()
