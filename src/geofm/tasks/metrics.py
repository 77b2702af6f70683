"""Evaluation metrics: segmentation scores from a confusion matrix, masked image-reconstruction scores.

Segmentation: a torchmetrics ``MulticlassConfusionMatrix`` (ignore index -1) accumulates over
an epoch; :func:`scores_from_confusion` derives per-class IoU and F1, mIoU, mF1, aAcc (overall
pixel accuracy) and mAcc (mean per-class recall). Classes absent from both labels and
predictions get NaN and are left out of the means (the mmseg convention).

Imputation: MAE, RMSE, PSNR and SSIM on the hidden (gap) pixels only, in reflectance
(0..1 = reflectance ×10000 / 10000), plus the two baselines computed on the same gaps:
"nearest clear frame" and "temporal linear interpolation".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


# --------------------------------------------------------------------------- segmentation
def confusion_metric(num_classes: int, ignore_index: int = -1):
    """A torchmetrics confusion-matrix accumulator (rows = labels, columns = predictions)."""
    from torchmetrics.classification import MulticlassConfusionMatrix

    return MulticlassConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index)


def scores_from_confusion(cm: torch.Tensor, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Scores of a (K, K) confusion matrix (rows = labels): ``mIoU``, ``mF1``, ``aAcc``, ``mAcc``,
    ``IoU_<class>``, ``F1_<class>``, ``Acc_<class>`` (fractions in [0, 1]; NaN for absent classes)."""
    cm = cm.double()
    k = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(k)]
    tp = cm.diag()
    label_n = cm.sum(1)
    pred_n = cm.sum(0)
    union = label_n + pred_n - tp
    nan = torch.tensor(float("nan"), dtype=cm.dtype)
    iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
    f1 = torch.where(label_n + pred_n > 0, 2 * tp / (label_n + pred_n).clamp_min(1), nan)
    acc = torch.where(label_n > 0, tp / label_n.clamp_min(1), nan)
    total = cm.sum()
    out = {"mIoU": float(iou.nanmean()), "mF1": float(f1.nanmean()), "mAcc": float(acc.nanmean()),
           "aAcc": float(tp.sum() / total) if total > 0 else float("nan")}
    for i, n in enumerate(names):
        out[f"IoU_{n}"], out[f"F1_{n}"], out[f"Acc_{n}"] = float(iou[i]), float(f1[i]), float(acc[i])
    return out


# --------------------------------------------------------------------------- imputation baselines
def nearest_clear_frame(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Fill hidden pixels from the nearest frame (in time index) where the pixel is visible.

    x (B, C, T, H, W); hidden (B, T, H, W) bool. Ties prefer the earlier frame; pixels hidden in
    every frame get the per-band mean of the visible pixels of the sample.
    """
    return _temporal_fill(x, hidden, linear=False)


def temporal_linear(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """Fill hidden pixels by linear interpolation (in time index) between the closest visible frames
    before and after; pixels with a visible frame on one side only take it (nearest clear frame)."""
    return _temporal_fill(x, hidden, linear=True)


def _temporal_fill(x: torch.Tensor, hidden: torch.Tensor, linear: bool) -> torch.Tensor:
    b, c, T, h, w = x.shape
    vis = ~hidden  # (B, T, H, W)
    t_idx = torch.arange(T, device=x.device).view(1, T, 1, 1).expand_as(vis)
    big = T * 10
    out = x.clone()
    vis_f = vis.unsqueeze(1).to(x.dtype)
    fallback = (x * vis_f).sum((2, 3, 4), keepdim=True) / vis_f.sum((2, 3, 4), keepdim=True).clamp_min(1)
    for t in range(T):
        need = hidden[:, t]  # (B, H, W)
        if not need.any():
            continue
        before = torch.where(vis & (t_idx < t), t_idx, torch.full_like(t_idx, -big)).amax(1)  # (B, H, W)
        after = torch.where(vis & (t_idx > t), t_idx, torch.full_like(t_idx, big)).amin(1)
        has_b, has_a = before >= 0, after < T
        xb = torch.gather(x, 2, before.clamp(0, T - 1)[:, None, None].expand(b, c, 1, h, w)).squeeze(2)
        xa = torch.gather(x, 2, after.clamp(0, T - 1)[:, None, None].expand(b, c, 1, h, w)).squeeze(2)
        if linear:
            wgt = ((t - before) / (after - before).clamp_min(1)).to(x.dtype)[:, None]
            both = xb + (xa - xb) * wgt
        else:
            both = torch.where(((t - before) <= (after - t))[:, None], xb, xa)
        fill = torch.where((has_b & has_a)[:, None], both,
                           torch.where(has_b[:, None], xb, torch.where(has_a[:, None], xa,
                                                                        fallback[:, :, 0].expand(b, c, h, w))))
        out[:, :, t] = torch.where(need[:, None], fill, x[:, :, t])
    return out


# --------------------------------------------------------------------------- reconstruction scores
def masked_image_scores(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor,
                        data_range: float = 1.0) -> dict[str, float | int]:
    """MAE, RMSE, PSNR (dB) and SSIM of ``pred`` vs ``target`` over ``hidden`` pixels.

    pred, target (B, C, T, H, W) in reflectance (0..1); hidden (B, T, H, W) bool (pixels that
    count: hidden and with data). SSIM is computed per frame with an 11×11 Gaussian window on
    the whole image (``pred`` keeps the visible pixels, so windows straddling a gap edge see
    real context) and averaged over the hidden pixels. Returns also ``n`` = hidden pixel count.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    m = hidden.unsqueeze(1).expand_as(target)
    n = int(hidden.sum())
    if n == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "psnr": float("nan"), "ssim": float("nan"), "n": 0}
    diff = (pred - target)[m].double()
    mae = float(diff.abs().mean())
    mse = float((diff ** 2).mean())
    psnr = float(10 * torch.log10(torch.tensor(data_range ** 2 / max(mse, 1e-12))))
    b, c, T, h, w = target.shape
    p2 = pred.clamp(0, data_range).permute(0, 2, 1, 3, 4).reshape(b * T, c, h, w).float()
    t2 = target.clamp(0, data_range).permute(0, 2, 1, 3, 4).reshape(b * T, c, h, w).float()
    ks = min(11, (min(h, w) // 2) * 2 - 1)
    _, smap = ssim_fn(p2, t2, data_range=data_range, kernel_size=ks, sigma=1.5 * ks / 11, return_full_image=True)
    hid = hidden.reshape(b * T, 1, h, w).expand_as(smap)
    ssim = float(smap[hid].double().mean())
    return {"mae": mae, "rmse": mse ** 0.5, "psnr": psnr, "ssim": ssim, "n": n}


__all__ = ["confusion_metric", "masked_image_scores", "nearest_clear_frame", "scores_from_confusion",
           "temporal_linear"]
