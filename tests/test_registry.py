"""Every op is defined once, documented, and lowered by every backend."""

from __future__ import annotations

import pytest

from nnspec.compiler.ops import OPS

torch_backend = pytest.importorskip("nnspec.backends.torch.ops")


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_is_documented(name: str) -> None:
    op = OPS[name]
    assert op.doc.strip() and op.family in {"source", "elementwise", "reduce", "normalize", "contract", "shape",
                                            "nn", "structure"}


def test_every_op_has_a_torch_lowering() -> None:
    missing = sorted(set(OPS) - set(torch_backend.LOWERINGS))
    assert not missing, f"ops without a torch lowering: {missing}"
    unknown = sorted(set(torch_backend.LOWERINGS) - set(OPS))
    assert not unknown, f"torch lowerings for ops that do not exist: {unknown}"
