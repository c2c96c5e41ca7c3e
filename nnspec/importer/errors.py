"""The importer's error: what could not be lifted, with the aten op and the module path it came from."""

from __future__ import annotations


class ImportFailure(Exception):
    """A model (or part of one) nnspec cannot write as a spec; the message names the op and module path."""

    def __init__(self, message: str, *, op: str | None = None, module: str | None = None) -> None:
        self.op = op
        self.module = module
        where = ""
        if op is not None:
            where = f"{op} in module '{module or '<root>'}': "
        super().__init__(where + message)
