"""Executing generated source as a real module: what every backend's `load` does (`load_source`), and where a
backend whose runtime reads source from a file (Triton's `@triton.jit`) writes it first (`cache_dir`)."""

from __future__ import annotations

import hashlib
import linecache
import os
import sys
import types
from pathlib import Path

from nnspec.atomic import write_atomic

MAX_NAME = 80   # of a model's name in a cache file's name (with the hash, well under the usual 255 bytes)


def cache_dir() -> Path:
    """Where `build(target="triton")` writes generated files: `$NNSPEC_CACHE_DIR`, else ~/.cache/nnspec."""
    root = os.environ.get("NNSPEC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nnspec")
    return Path(root) / "generated"


def load_source(source: str, name: str, directory: Path | None = None, private: bool = False) -> types.ModuleType:
    """Execute generated source as a module registered in `sys.modules` (so pickling and torch.compile see
    a real module) with its text in `linecache` (so tracebacks show the generated lines). With `directory`,
    the source is first written there as `<name>_<hash>.py` (atomically) and executed from that file.
    `private`: a module of its own, shared with no other caller and not registered (its constants may be
    rewritten, as tensor parallelism makes head counts local)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    name = name[:MAX_NAME]     # a 300-character model name is a valid spec, not a valid file name
    modname = f"nnspec_generated.{name}_{digest}"
    if private:
        module = types.ModuleType(f"nnspec_private.{name}_{digest}")
        exec(compile(source, f"<nnspec generated {name} {digest}>", "exec"), module.__dict__)  # our own code
        return module
    if modname in sys.modules:
        return sys.modules[modname]
    if directory is not None:
        path = directory / f"{name}_{digest}.py"
        if not path.exists() or path.read_bytes() != source.encode("utf-8"):
            directory.mkdir(parents=True, exist_ok=True)
            write_atomic(path, source.encode("utf-8"))
        filename = str(path)
    else:
        filename = f"<nnspec generated {name} {digest}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(modname)
    module.__file__ = filename
    exec(compile(source, filename, "exec"), module.__dict__)  # our own generated code
    sys.modules[modname] = module
    return module
