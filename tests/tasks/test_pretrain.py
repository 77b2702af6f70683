"""MAE pretraining: config checks, a tiny run's outputs, exact resume after SIGKILL, DDP and FSDP on CPU."""

from __future__ import annotations

import csv
import json
import math
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from geofm.config import read_yaml
from geofm.errors import ConfigError
from geofm.models import create_encoder, create_model
from geofm.tasks.pretrain import PretrainConfig, load_pretrain_config, lr_factor, run_pretrain, to_dict

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(torch.get_num_threads()))
    return env


def _metrics(run_dir: Path) -> list[dict]:
    rows = []
    for f in sorted((run_dir / "logs").glob("version_*/metrics.csv")):  # one version per (resumed) session
        rows += list(csv.DictReader(open(f)))
    return rows


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "export" / "model.safetensors"))


# --------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1e-3", "unknown key(s) optim.lrr"),
    ("data.batch_size=many", "'data.batch_size'"),
    ("trainer.precision=8", "trainer.precision"),
    ("data.store=/nonexistent/chips.zarr", "not a usable chip store"),
    ("data.bands=[0,1,2]", "expects 6 bands"),
    ("model.overrides.patch_size=5", "not a multiple of the model's patch size"),
    ("model.name=prithvi_huge", "unknown model"),
    ("model.checkpoint=/nonexistent/model.safetensors", "cannot be found"),
    ("trainer.max_steps=-1", "set trainer.max_steps"),
])
def test_bad_config_fails_before_any_work(tiny_overrides, tmp_path, override, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=None) as err:
        run_pretrain(load_pretrain_config(None, tiny_overrides(out) + [override]))
    assert message in str(err.value)
    assert not out.exists()  # nothing written


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0) and f[12] == pytest.approx(0.1 + 0.9 * 0.5)  # cosine half way
    assert all(a >= b for a, b in zip(f[4:], f[5:])) and f[-1] > 0.1
    assert lr_factor(30, 4, 20, 0.1) == pytest.approx(0.1)


# --------------------------------------------------------------------------- a tiny run
def test_tiny_run_logs_checkpoints_quicklooks_and_exports(tiny_overrides, tmp_path):
    out = tmp_path / "run"
    cfg = load_pretrain_config(None, tiny_overrides(out, {"trainer.max_steps": 12, "trainer.checkpoint_every": 6,
                                                          "trainer.quicklook_every": 6, "data.val_fraction": 0.1}))
    assert run_pretrain(cfg) == out
    rows = _metrics(out)
    train = [r for r in rows if r.get("train/loss")]
    assert [int(r["step"]) for r in train] == list(range(12))
    losses = [float(r["train/loss"]) for r in train]
    assert all(math.isfinite(v) for v in losses) and np.mean(losses[-3:]) < np.mean(losses[:3])
    lrs = [float(r["train/lr"]) for r in train]  # logged after each step: the next step's lr
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    sps, tps = float(train[-1]["train/samples_per_s"]), float(train[-1]["train/tokens_per_s"])
    assert sps > 0 and tps == pytest.approx(16 * sps, rel=1e-4)  # (32/8)^2 tokens per one-frame chip
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "step0000012.ckpt"]
    pngs = sorted(p.name for p in (out / "quicklooks").iterdir())
    assert pngs == ["step0000006.png", "step0000012.png"]
    assert (out / "quicklooks" / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tb").glob("version_0/events.out.tfevents.*"))
    assert read_yaml(out / "config.yaml") == to_dict(cfg)
    # the export loads into create_model / create_encoder and equals the last checkpoint's weights
    mae = create_model(None, checkpoint=out / "export" / "model.safetensors")
    assert mae.config.embed_dim == 32 and mae.config.img_size == 32
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["ChipDataModule"] == {"epoch": 0, "batches": 12, "batch_size": 8}
    for k, v in mae.state_dict().items():
        assert torch.equal(v, ckpt["state_dict"]["model." + k]), k
    from_ckpt = create_model(None, checkpoint=out / "checkpoints" / "last.ckpt")  # Lightning checkpoints load too
    assert all(torch.equal(v, from_ckpt.state_dict()[k]) for k, v in mae.state_dict().items())
    enc = create_encoder(None, checkpoint=out / "export" / "model.safetensors")
    assert torch.equal(enc.patch_embed.proj.weight, mae.encoder.patch_embed.proj.weight)


def test_bf16_autocast_is_applied_and_close_to_fp32(tiny_overrides, tmp_path):
    losses = {}
    for precision in ("32", "bf16-mixed"):
        out = tmp_path / precision
        run_pretrain(load_pretrain_config(None, tiny_overrides(out, {"trainer.max_steps": 2,
                                                                     "trainer.precision": precision})))
        losses[precision] = [float(r["train/loss"]) for r in _metrics(out) if r.get("train/loss")]
    assert losses["32"] != losses["bf16-mixed"]  # autocast changed the arithmetic
    np.testing.assert_allclose(losses["bf16-mixed"], losses["32"], rtol=2e-2)


# --------------------------------------------------------------------------- exact resume
RESUME_SCRIPT = '''
import json, os, signal, sys
import torch
from lightning.pytorch.callbacks import Callback


class Recorder(Callback):
    """Appends the chip indices of every processed batch to a JSON-lines file."""

    def __init__(self, path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.path, "a") as f:
            f.write(json.dumps([trainer.current_epoch] + batch["index"].tolist()) + "\\n")


class Killer(Callback):
    """SIGKILLs this process at the first batch after step ``at`` once ``last.ckpt`` exists."""

    def __init__(self, at, ckpt):
        self.at, self.ckpt = at, ckpt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at and os.path.exists(self.ckpt):
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    from geofm.tasks.pretrain import load_pretrain_config, run_pretrain

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    record, kill_at, *overrides = sys.argv[1:]
    cfg = load_pretrain_config(None, overrides)
    run_pretrain(cfg, [Recorder(record), Killer(int(kill_at), os.path.join(cfg.out_dir, "checkpoints", "last.ckpt"))])
'''


def _batches(path: Path) -> list[list[int]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("accumulate, steps, workers", [(1, 8, 0), (2, 6, 2)])
def test_killed_and_resumed_run_ends_bitwise_identical(tiny_overrides, tmp_path, accumulate, steps, workers,
                                                       monkeypatch):
    """N steps straight == SIGKILL after the checkpoint at N/2, then resume; also the same chips, in order."""
    script = tmp_path / "resume_run.py"
    script.write_text(RESUME_SCRIPT)
    ns = runpy.run_path(str(script))
    np.save(tmp_path / "index.npy", np.arange(0, 80, 2))  # 40 chips: 5 batches of 8 per epoch, so epochs roll over
    extra = {"trainer.max_steps": steps, "trainer.checkpoint_every": steps // 2, "optim.accumulate": accumulate,
             "data.index": str(tmp_path / "index.npy"), "data.num_workers": workers}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    torch.set_num_threads(torch.get_num_threads())
    run_pretrain(load_pretrain_config(None, tiny_overrides(straight, extra)), [ns["Recorder"](tmp_path / "a.jsonl")])
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "b.jsonl"), str(steps // 2)]
                          + tiny_overrides(killed, extra), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]  # killed by SIGKILL, mid-run
    assert not (killed / "export").exists()
    cfg = load_pretrain_config(None, tiny_overrides(killed, extra))  # trainer.resume=auto picks last.ckpt
    from geofm.models import checkpoints

    reads = []
    real_load = checkpoints.load_torch_file
    monkeypatch.setattr(checkpoints, "load_torch_file", lambda p: reads.append(str(p)) or real_load(p))
    run_pretrain(cfg, [ns["Recorder"](tmp_path / "c.jsonl")])
    assert reads == [str(killed / "checkpoints" / "last.ckpt")]  # checked before the run, then handed to Lightning
    a, b, c = (_batches(tmp_path / f"{x}.jsonl") for x in "abc")
    assert len(a) == steps * accumulate - (1 if accumulate == 2 else 0) or len(a) >= steps
    assert b + c == a  # the resumed run saw exactly the chips the killed one had not, in the same order
    assert len(b) >= (steps // 2) * accumulate - 1 and len(c) > 0
    wa, wc = _weights(straight), _weights(killed)
    assert wa.keys() == wc.keys()
    for k in wa:
        assert torch.equal(wa[k], wc[k]), k
    init = create_model("prithvi_tiny", **load_pretrain_config(None, tiny_overrides(killed)).model.overrides)
    assert not torch.equal(init.state_dict()["encoder.patch_embed.proj.weight"], wa["encoder.patch_embed.proj.weight"])


# --------------------------------------------------------------------------- DDP and FSDP with 2 CPU processes
@pytest.fixture(scope="module")
def full_batch_single(tiny_overrides, tmp_path_factory):
    """One process, batch 32 = the whole 32-chip index, 3 steps (= 3 epochs)."""
    d = tmp_path_factory.mktemp("single")
    np.save(d / "index.npy", np.arange(100, 132))
    extra = {"data.index": str(d / "index.npy"), "data.batch_size": 32, "trainer.max_steps": 3,
             "trainer.checkpoint_every": 3, "trainer.deterministic": False}
    run_pretrain(load_pretrain_config(None, tiny_overrides(d / "run", extra)))
    return d, extra


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_training_matches_one_process(full_batch_single, tiny_overrides, tmp_path, strategy):
    """2 processes x 16 chips == 1 process x 32 chips (same chips, same per-chip masks): same weights."""
    d, extra = full_batch_single
    extra = dict(extra, **{"data.batch_size": 16, "trainer.strategy": strategy, "trainer.devices": 2})
    out = tmp_path / strategy
    proc = subprocess.run([sys.executable, "-m", "geofm.cli", "pretrain", "--config", "pretrain/tiny"]  # bundled, by name
                          + tiny_overrides(out, extra), env=_env(), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"run directory: {out}" in proc.stdout
    ref, got = _weights(d / "run"), _weights(out)
    init = create_model("prithvi_tiny", **load_pretrain_config(None, tiny_overrides(out)).model.overrides).state_dict()
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref)
    diff = max(float((ref[k] - got[k]).abs().max()) for k in ref)
    # Adam turns float-rounding differences of near-zero gradients into steps of up to lr (1e-3): allow a fraction
    assert moved > 0.1 and diff < 2.5e-4, (moved, diff)
    losses_ref = [float(r["train/loss"]) for r in _metrics(d / "run") if r.get("train/loss")]
    losses = [float(r["train/loss"]) for r in _metrics(out) if r.get("train/loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # logged loss is rank 0's half batch; all ranks together see the 32 chips each epoch
    assert float(_metrics(out)[-1]["train/samples_per_s"]) > 0 and losses_ref


# --------------------------------------------------------------------------- TL models get the chip metadata
def test_tl_model_gets_dates_and_locations_from_the_store(sample_store):
    from geofm.data.datamodule import ChipDataModule, ChipDataSection
    from geofm.tasks.pretrain import MAEPretrainTask

    dm = ChipDataModule(ChipDataSection(store=str(sample_store), val_fraction=0.0, batch_size=4), return_coords=True)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm._loader(dm.train_ds))), 0)
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (4, 6, 1, 32, 32)
    assert batch["temporal_coords"].shape == (4, 1, 2) and batch["location_coords"].shape == (4, 2)
    assert torch.equal(batch["temporal_coords"][0, 0], torch.tensor([2020.0, 1.0]))  # the sample store's placeholder
    lat, lon = batch["location_coords"].T
    assert torch.all(((lat > 28) & (lat < 29) & (lon < -99)) | ((lat > 37) & (lat < 39) & (lon.abs() < 2)))
    task = MAEPretrainTask("prithvi_tiny_tl", {"img_size": 32, "num_frames": 1, "coords_drop_rate": 0.0})
    task.eval()
    with torch.no_grad():
        loss = task(batch)[0]
        moved = dict(batch, location_coords=batch["location_coords"] + torch.tensor([10.0, 30.0]))
        assert task(dict(batch))[0] == loss  # masks are a function of (seed, epoch, chip): repeatable
        assert task(moved)[0] != loss  # the location reaches the model
        task.uses_coords = False
        assert task(moved)[0] == task(batch)[0]


def test_epochs_see_every_chip_once_and_warmup_in_epochs(tiny_overrides, tmp_path):
    from lightning.pytorch.callbacks import Callback

    seen: dict[int, list[int]] = {}

    class Seen(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).extend(batch["index"].tolist())

    np.save(tmp_path / "index.npy", np.arange(40, 60))  # 20 chips, batches of 8: 3 batches (8, 8, 4) per epoch
    out = tmp_path / "run"
    cfg = load_pretrain_config(None, tiny_overrides(out, {"trainer.max_steps": -1, "trainer.max_epochs": 2,
                                                          "data.index": str(tmp_path / "index.npy"),
                                                          "optim.warmup_steps": 0, "optim.warmup_epochs": 1.0}))
    run_pretrain(cfg, [Seen()])
    assert sorted(seen) == [0, 1]
    assert all(sorted(v) == list(range(40, 60)) for v in seen.values())  # each chip exactly once per epoch
    assert seen[0] != seen[1]  # reshuffled
    lrs = [float(r["train/lr"]) for r in _metrics(out) if r.get("train/lr")]
    assert lrs[:3] == pytest.approx([1e-3 * 2 / 3, 1e-3, 1e-3])  # warmup over the 3 steps of one epoch, then cosine
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_resume_auto_picks_the_newest_checkpoint(tmp_path):
    from geofm.tasks.pretrain import resolve_resume

    cfg = PretrainConfig()
    assert resolve_resume(cfg, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"x")
    hpc.write_bytes(b"x")
    os.utime(last, (1, 1))
    assert resolve_resume(cfg, tmp_path) == str(hpc)  # a SLURM pre-emption checkpoint newer than last.ckpt
    cfg.trainer.resume = str(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_resume(cfg, tmp_path)


def test_nodata_pixels_do_not_count_in_the_loss():
    from geofm.tasks.pretrain import MAEPretrainTask

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 1, 32, 32, generator=g)
    valid = torch.ones(2, 1, 32, 32, dtype=torch.bool)
    valid[:, :, :12, :20] = False  # a nodata corner, as ChipDataset marks it
    batch = {"image": x, "valid": valid, "index": torch.tensor([3, 7])}
    changed = dict(batch, image=torch.where(valid[:, None], x, torch.full_like(x, 50.0)))
    overrides = {"img_size": 32, "num_frames": 1, "embed_dim": 32, "depth": 1, "decoder_depth": 1}
    with torch.no_grad():
        task = MAEPretrainTask("prithvi_tiny", overrides, exclude_nodata=True).eval()
        # not a target any more: only the (small) effect of the visible nodata pixels as encoder input remains
        assert task(changed)[0] == pytest.approx(float(task(batch)[0]), rel=1e-2)
        task.exclude_nodata = False
        assert task(changed)[0] > 10 * task(batch)[0]


def test_progress_is_plain_lines_when_stdout_is_not_a_terminal(tiny_overrides, tmp_path, capsys, monkeypatch):
    """Lightning's bar would write carriage-return frames into a log file: plain lines instead."""
    monkeypatch.setenv("GEOFM_PROGRESS", "plain")
    monkeypatch.setenv("GEOFM_PROGRESS_EVERY", "0")
    out = tmp_path / "run"
    run_pretrain(load_pretrain_config(None, tiny_overrides(out, {"trainer.progress_bar": True,
                                                                 "trainer.max_steps": 4})))
    text = capsys.readouterr().out
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("train: ")]
    assert [line.split(",")[1].strip() for line in lines] == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert "train/loss" in lines[-1]
