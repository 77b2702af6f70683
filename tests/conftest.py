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


@pytest.fixture(scope="session")
def land_water_export(tmp_path_factory) -> Path:
    """A geofm export of a tiny random 2-class (land, water) segmentation model, 64 px tiles."""
    import torch

    from geofm.bands import MODEL_BANDS, NORM_STATS
    from geofm.models import build_segmentation_model, save_finetuned

    torch.manual_seed(0)
    model = build_segmentation_model("prithvi_tiny", num_classes=2)
    mean, std = NORM_STATS["v1"]["mean"], NORM_STATS["v1"]["std"]
    return save_finetuned(model, tmp_path_factory.mktemp("seg") / "export", task="segmentation", mean=mean, std=std,
                          bands=MODEL_BANDS, class_names=["land", "water"], img_size=64)
