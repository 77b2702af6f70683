"""Segmentation scores on hand-made confusion matrices; masked reconstruction scores and baselines."""

import math

import pytest
import torch

from geofm.tasks.metrics import (
    confusion_metric, masked_image_scores, nearest_clear_frame, scores_from_confusion, temporal_linear,
)
from geofm.tasks.segmentation import dice_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_scores_from_hand_made_confusion():
    # rows = labels, columns = predictions
    cm = torch.tensor([[50, 10, 0],
                       [5, 35, 0],
                       [0, 0, 0]])  # class 2 absent from labels and predictions
    s = scores_from_confusion(cm, ["a", "b", "c"])
    assert s["IoU_a"] == pytest.approx(50 / (60 + 55 - 50))
    assert s["IoU_b"] == pytest.approx(35 / (40 + 45 - 35))
    assert math.isnan(s["IoU_c"])
    assert s["mIoU"] == pytest.approx((50 / 65 + 35 / 50) / 2)  # absent class left out of the mean
    assert s["aAcc"] == pytest.approx(85 / 100)
    assert s["mAcc"] == pytest.approx((50 / 60 + 35 / 40) / 2)
    assert s["F1_a"] == pytest.approx(2 * 50 / (60 + 55))
    assert s["mF1"] == pytest.approx((2 * 50 / 115 + 2 * 35 / 85) / 2)


def test_confusion_ignores_nodata_and_matches_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    g = torch.Generator().manual_seed(0)
    target = torch.randint(-1, 3, (4, 16, 16), generator=g)
    pred = torch.randint(0, 3, (4, 16, 16), generator=g)
    cm = confusion_metric(3)
    cm.update(pred, target)
    mat = cm.compute()
    assert int(mat.sum()) == int((target >= 0).sum())  # -1 pixels are not counted
    ours = scores_from_confusion(mat)
    ref = MulticlassJaccardIndex(num_classes=3, ignore_index=-1, average="none")(pred, target)
    for k in range(3):
        assert ours[f"IoU_{k}"] == pytest.approx(float(ref[k]), abs=1e-6)


def test_dice_loss_values():
    target = torch.tensor([[[0, 1], [1, -1]]])
    perfect = torch.tensor([[[[9.0, -9], [-9, 0]], [[-9.0, 9], [9, 0]]]])
    assert float(dice_loss(perfect, target, smooth=0.0)) == pytest.approx(0.0, abs=1e-6)
    wrong = -perfect
    assert float(dice_loss(wrong, target, smooth=0.0)) == pytest.approx(1.0, abs=1e-6)


def test_baselines_on_hand_made_series():
    # one pixel, 5 frames: values 0, 10, 20, 30, 40; frames 1, 2 and 4 hidden
    x = torch.tensor([0.0, 10, 20, 30, 40]).view(1, 1, 5, 1, 1)
    hidden = torch.tensor([False, True, True, False, True]).view(1, 5, 1, 1)
    near = nearest_clear_frame(x, hidden).flatten().tolist()
    lin = temporal_linear(x, hidden).flatten().tolist()
    assert near == [0, 0, 30, 30, 30]  # frame 1 -> frame 0 (closer), frame 2 -> frame 3, frame 4 -> frame 3
    assert lin == pytest.approx([0, 10, 20, 30, 30])  # exact between two clear frames; one-sided -> nearest
    everything = torch.ones(1, 5, 1, 1, dtype=torch.bool)
    x2 = torch.arange(10.0).view(1, 2, 5, 1, 1)
    assert torch.all(temporal_linear(x2, everything) == 0)  # nothing visible: per-band mean of visible = 0


def test_masked_image_scores():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 6, 3, 24, 24, generator=g) * 0.5
    hidden = torch.zeros(2, 3, 24, 24, dtype=torch.bool)
    hidden[:, 1, 8:16, 8:16] = True
    same = masked_image_scores(target, target, hidden)
    assert same["ssim"] == pytest.approx(1.0) and same["mae"] == 0 and same["n"] == 2 * 64
    pred = target.clone()
    pred[:, :, 1, 8:16, 8:16] += 0.1  # only the hidden pixels are wrong
    s = masked_image_scores(pred, target, hidden)
    assert s["mae"] == pytest.approx(0.1, rel=1e-4) and s["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert s["ssim"] < 0.99
    outside = target.clone()
    outside[:, :, 0] += 0.3  # errors outside the gaps do not count
    assert masked_image_scores(outside, target, hidden)["mae"] == 0
