"""The imputation task's training loss: every sample weighs the same; the anchor to the temporal baseline."""

import pytest
import torch

from geofm.bands import norm_stats
from geofm.tasks.imputation import ImputationTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_gap_loss_weighs_every_sample_the_same(loss):
    """A sample with one gap pixel counts as much as one with 100: the loss is the mean of the per-sample means."""
    task = _task(loss=loss)
    x = torch.zeros(3, 6, 3, 32, 32)
    filled = x.clone()
    gap = torch.zeros(3, 3, 32, 32, dtype=torch.bool)
    gap[0, 1, 0, 0] = True  # 1 gap pixel, error 2 in every band
    filled[0, :, 1, 0, 0] = 2.0
    gap[1, 1, :10, :10] = True  # 100 gap pixels, no error
    # sample 2: no gap pixel, an error outside the gaps that must not count
    filled[2] = 5.0
    per_pixel = 2.0 if loss == "l1" else 4.0
    assert task.gap_loss(filled, x, gap).item() == pytest.approx(per_pixel / 2)
    # a pixel-weighted mean would give per_pixel / 101; no gap at all gives 0, not NaN
    assert task.gap_loss(filled, x, torch.zeros_like(gap)).item() == 0.0


def _task(**kw):
    mean, std = norm_stats("v1")
    return ImputationTask({"name": "prithvi_tiny", "img_size": 32}, mean=mean, std=std, strategy="scratch", **kw)


@pytest.mark.parametrize("up_share, moves", [(0.6, False), (0.8, True)])
def test_baseline_anchor_moves_the_fill_only_where_most_of_the_evidence_agrees(up_share, moves):
    """L1 + 0.3 x L1-to-baseline: over a pixel whose truth is 1 above the baseline in ``up_share`` of the
    samples and 1 below in the rest, the best fill stays at the baseline unless up_share > (1 + 0.3) / 2."""
    task = _task(loss="l1", baseline_anchor=0.3)
    n = 10
    x = torch.zeros(n, 6, 3, 4, 4)
    up = int(up_share * n)
    x[:up, :, 1, 0, 0], x[up:, :, 1, 0, 0] = 1.0, -1.0
    base = torch.zeros_like(x)
    gap = torch.zeros(n, 3, 4, 4, dtype=torch.bool)
    gap[:, 1, 0, 0] = True
    offsets = torch.linspace(-1.5, 1.5, 61)
    losses = [task.training_loss(base + c, x, gap, base).item() for c in offsets]
    best = offsets[int(torch.tensor(losses).argmin())].item()
    assert best == pytest.approx(1.0 if moves else 0.0, abs=1e-6)
    # without the anchor the L1 optimum (the median) is the majority side in both cases
    plain = [_task(loss="l1").training_loss(base + c, x, gap).item() for c in offsets]
    assert offsets[int(torch.tensor(plain).argmin())].item() == pytest.approx(1.0, abs=1e-6)


def test_baseline_anchor_out_of_range_is_refused():
    with pytest.raises(ValueError, match="baseline_anchor"):
        _task(loss="l1", baseline_anchor=1.0)
