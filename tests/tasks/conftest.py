"""A chip store of real sample pixels and a tiny pretraining configuration."""

from __future__ import annotations

import pytest

from geofm.data.sample_store import build_sample_store


@pytest.fixture(scope="session")
def sample_store(sample_dir, tmp_path_factory):
    """305 real 32x32 chips (one frame, six HLS bands) cut from data/sample."""
    return build_sample_store(tmp_path_factory.mktemp("pretrain") / "chips.zarr", sample_dir=sample_dir)


@pytest.fixture(scope="session")
def tiny_overrides(sample_store):
    """``make(out_dir, {key: value}) -> ["key=value", ...]``: a seconds-long CPU run of a tiny MAE on 32 px chips."""
    return lambda out, extra=None: _tiny_overrides(sample_store, out, extra or {})


def _tiny_overrides(store, out, extra) -> list[str]:
    base = {
        "model.name": "prithvi_tiny",
        "model.overrides": "{img_size: 32, num_frames: 1, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, "
                           "decoder_embed_dim: 32, decoder_depth: 1, decoder_num_heads: 2}",
        "data.store": str(store), "data.batch_size": 8, "data.val_fraction": 0.0,
        "optim.lr": 1e-3, "optim.warmup_steps": 2, "optim.grad_clip": 1.0,
        "trainer.max_steps": 8, "trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.checkpoint_every": 4,
        "trainer.log_every": 1, "trainer.progress_bar": False, "trainer.deterministic": True,
        "out_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
