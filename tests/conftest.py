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

# Under pytest-xdist each worker is its own process: share the cores between the workers instead of letting every
# worker's torch start one thread per core (oversubscribed threads make a 2-core run slower than one worker).
# Set before any test module imports torch, which reads the variable once.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _per_worker = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_per_worker))
    # xdist hands its workers the controller's terminal size as COLUMNS/LINES; the tests see output as piped
    # output is seen (the CLI's width rule reads COLUMNS), the same with one process or several
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)

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
