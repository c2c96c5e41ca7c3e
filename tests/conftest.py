"""Shared test set-up: Hypothesis profiles, and the --runslow option for tests marked `slow`."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import settings

# Triton reads TRITON_INTERPRET when a kernel is defined, so it is set before any test imports a kernel: without
# a GPU, the Triton backend's kernels run in Triton's CPU interpreter.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every optimisation in the tests re-verifies the graph after each pass (nnspec.compiler.passes), wherever it runs:
# `nnspec.build`, `nnspec compile`, the cost model.
os.environ.setdefault("NNSPEC_VERIFY", "1")

# The default run is the same on every machine, with or without CI set: fixed examples ("ci"), so the README's
# test command passes as written and a failure reproduces. Random exploration is a separate, explicit run:
# `python -m pytest --hypothesis-profile=explore` (fresh examples each time, more of them).
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=25, print_blob=True)
settings.register_profile("explore", deadline=None, max_examples=200, print_blob=True)
settings.load_profile("ci")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
