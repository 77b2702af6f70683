"""Shared test fixtures. Tests run on CPU, offline, seeded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from geofm.resources import sample_dir as _bundled_sample

REPO = Path(__file__).resolve().parents[1]
SAMPLE = _bundled_sample()
SHARED_DATA = REPO.parent / "shared" / "data"
# configs' {shared} paths resolve to the same folder from any working directory
os.environ.setdefault("GEOFM_SHARED_DATA", str(SHARED_DATA))

# Keep CPU tests on a fixed, small thread count so timings and results are stable.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """Bundled, permissively licensed sample data (``geofm/data/sample``, package data)."""
    return SAMPLE


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (fresh clone): skipping a test on shared sample files")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tiny models: as fast as two alone, and far faster when other processes
    share the cores (OpenMP workers spin-wait for each other). Use with ``pytest.mark.usefixtures``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
