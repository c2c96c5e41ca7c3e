"""Every (op, backend) pair has an entry in the backend's op tables, or is left out on purpose below with why.

Adding an op means one row in each table listed here; this test names each table the new op is missing from, so
none is forgotten. A new backend in `nnspec.backends.base.REGISTRY` must list its tables here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from nnspec.backends import base
from nnspec.compiler.ops import OPS

pytest.importorskip("torch")


def backend_tables() -> dict[str, dict[str, Mapping[str, Any]]]:
    """backend -> {table name: its table keyed by op}. Importing `nnspec.backends.torch.ops` fills both torch tables
    (each family file registers an op's lowering and emitter together)."""
    from nnspec.backends.torch.ops import EMITTERS, LOWERINGS
    from nnspec.backends.triton.lowering import TABLE
    return {
        "torch": {"emitters": EMITTERS, "interpreter lowerings": LOWERINGS},
        "triton": {"lowering table": TABLE},
    }


# (op, backend, table) pairs left out on purpose, each with why
LEFT_OUT: dict[tuple[str, str, str], str] = {
    # a forward() argument becomes a parameter of the generated signature, never a statement of its own
    ("input", "torch", "emitters"): "forward() arguments are the signature",
}


def test_every_registered_backend_lists_its_tables() -> None:
    assert set(backend_tables()) == set(base.names())


def test_every_op_has_an_entry_in_every_backend_table() -> None:
    missing = [f"{op} x {backend} ({name})"
               for backend, tables in backend_tables().items()
               for name, table in tables.items()
               for op in sorted(OPS)
               if op not in table and (op, backend, name) not in LEFT_OUT]
    assert not missing, "ops a backend has no entry for (add one, or list the pair in LEFT_OUT with why):\n  " + \
        "\n  ".join(missing)


def test_no_entry_names_an_op_that_does_not_exist() -> None:
    unknown = [f"{op} in {backend} ({name})"
               for backend, tables in backend_tables().items()
               for name, table in tables.items()
               for op in sorted(set(table) - set(OPS))]
    assert not unknown, f"table entries for ops that do not exist: {unknown}"


def test_every_left_out_pair_is_still_missing() -> None:
    """A pair that gained an entry leaves LEFT_OUT, so the list cannot grow stale."""
    tables = backend_tables()
    stale = [pair for pair in LEFT_OUT if pair[1] not in tables or pair[2] not in tables[pair[1]]
             or pair[0] not in OPS or pair[0] in tables[pair[1]][pair[2]]]
    assert not stale, f"LEFT_OUT entries that are no longer left out: {stale}"


def test_the_triton_table_has_a_kernel_rule_for_every_pointwise_op() -> None:
    """The Triton table's pointwise rows are the kernel generator's rules (`pointwise.RULES`): one per pointwise op,
    and none for an op the fusion passes never put in a pointwise kernel."""
    from nnspec.backends.triton.pointwise import RULES
    from nnspec.compiler.ops.registry import with_trait
    assert set(RULES) == with_trait("pointwise")
