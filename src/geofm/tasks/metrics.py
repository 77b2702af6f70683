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

from geofm.models.imputer import fill_hidden


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
def nearest_clear_frame(x: torch.Tensor, hidden: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
    """Fill hidden pixels from the frame nearest in days (``days`` (B, T); None: equally spaced) where
    the pixel is visible.

    x (B, C, T, H, W); hidden (B, T, H, W) bool. Ties prefer the earlier frame; pixels hidden in
    every frame get the per-band mean of the visible pixels of the sample.
    """
    return fill_hidden(x, hidden, linear=False, days=days)


def temporal_linear(x: torch.Tensor, hidden: torch.Tensor, days: torch.Tensor | None = None) -> torch.Tensor:
    """Fill hidden pixels by linear interpolation by acquisition day (``days`` (B, T)) between the closest
    visible frames before and after; pixels with a visible frame on one side only take it."""
    return fill_hidden(x, hidden, linear=True, days=days)


# --------------------------------------------------------------------------- reconstruction scores
def masked_image_scores(pred: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor,
                        data_range: float = 1.0) -> dict:
    """MAE, RMSE, PSNR (dB) and SSIM of ``pred`` vs ``target`` over ``hidden`` pixels, overall and per band.

    pred, target (B, C, T, H, W) in reflectance (0..1); hidden (B, T, H, W) bool (pixels that
    count: hidden and with data). SSIM is computed per frame and band with an 11×11 Gaussian
    window on the whole image (``pred`` keeps the visible pixels, so windows straddling a gap
    edge see real context) and averaged over the hidden pixels. Returns also ``n`` = hidden
    pixel count and ``bands`` = {"mae", "rmse", "ssim"}: lists with one value per band.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim_fn

    n = int(hidden.sum())
    b, c, T, h, w = target.shape
    if n == 0:
        nan = float("nan")
        return {"mae": nan, "rmse": nan, "psnr": nan, "ssim": nan, "n": 0,
                "bands": {"mae": [nan] * c, "rmse": [nan] * c, "ssim": [nan] * c}}
    m = hidden.unsqueeze(1).expand_as(target)
    diff = (pred - target).double().masked_fill(~m, 0.0)
    band_abs = diff.abs().sum((0, 2, 3, 4)) / n  # (C,)
    band_sq = (diff ** 2).sum((0, 2, 3, 4)) / n
    mse = float(band_sq.mean())
    psnr = float(10 * torch.log10(torch.tensor(data_range ** 2 / max(mse, 1e-12))))
    p2 = pred.clamp(0, data_range).permute(0, 2, 1, 3, 4).reshape(b * T, c, h, w).float()
    t2 = target.clamp(0, data_range).permute(0, 2, 1, 3, 4).reshape(b * T, c, h, w).float()
    ks = max(3, min(11, (min(h, w) // 2) * 2 - 1))
    if min(h, w) < ks:  # tiny images: pad by reflection so that the window fits
        padding = (ks - min(h, w) + 1) // 2 + 1
        p2 = torch.nn.functional.pad(p2, (padding,) * 4, mode="replicate")
        t2 = torch.nn.functional.pad(t2, (padding,) * 4, mode="replicate")
    else:
        padding = 0
    _, smap = ssim_fn(p2, t2, data_range=data_range, kernel_size=ks, sigma=1.5 * ks / 11, return_full_image=True)
    if padding:
        smap = smap[..., padding:padding + h, padding:padding + w]
    hid = hidden.reshape(b * T, 1, h, w).to(smap.dtype)
    band_ssim = (smap.double() * hid).sum((0, 2, 3)) / n  # (C,)
    return {"mae": float(band_abs.mean()), "rmse": mse ** 0.5, "psnr": psnr, "ssim": float(band_ssim.mean()), "n": n,
            "bands": {"mae": band_abs.tolist(), "rmse": band_sq.sqrt().tolist(), "ssim": band_ssim.tolist()}}


class ScoreSums:
    """Pixel-weighted running sums of :func:`masked_image_scores` results, one set per method
    ("model", "nearest", "linear", ...). ``result()`` gives ``mae``, ``rmse``, ``psnr``, ``ssim``
    (``_<method>`` suffix for methods other than "model"), per band too (``mae_<band>`` ...) and ``pixels``."""

    def __init__(self, bands: Sequence[str] | None = None):
        self.sums: dict[str, torch.Tensor] = {}
        self.bands = list(bands) if bands is not None else None

    def add(self, method: str, s: dict) -> None:
        if s["n"] == 0:
            return
        n = float(s["n"])
        bands = s["bands"]
        parts = {"abs": torch.tensor(bands["mae"], dtype=torch.float64) * n,
                 "sq": torch.tensor(bands["rmse"], dtype=torch.float64) ** 2 * n,
                 "ssim": torch.tensor(bands["ssim"], dtype=torch.float64) * n,
                 "n": torch.tensor(n, dtype=torch.float64)}
        for key, v in parts.items():
            k = f"{method}/{key}"
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def add_fills(self, model_fill: torch.Tensor, x: torch.Tensor, unusable: torch.Tensor, score: torch.Tensor,
                  to_reflectance=None, days: torch.Tensor | None = None) -> None:
        """Add the scores of the model's gap-filled image and of the baselines ("nearest", "linear", made here
        from ``x``, ``unusable`` and the acquisition ``days`` (B, T)) against ``x`` on the ``score`` pixels;
        images (B, C, T, H, W) go through ``to_reflectance`` first when given (normalized model inputs)."""
        conv = to_reflectance or (lambda t: t)
        target = conv(x).float()
        for method, image in (("model", model_fill), ("nearest", nearest_clear_frame(x, unusable, days)),
                              ("linear", temporal_linear(x, unusable, days))):
            self.add(method, masked_image_scores(conv(image).float(), target, score))

    def all_reduce(self, reduce_sum, methods: Sequence[str], n_bands: int) -> None:
        """Sum the sums of every process (``reduce_sum``: e.g. a Lightning strategy's ``reduce(t, "sum")``).

        Every process must call it, with the same ``methods`` and ``n_bands``: one packed tensor goes
        across, with zeros for what a process did not see (a process may have scored no pixel).
        """
        parts = (("abs", n_bands), ("sq", n_bands), ("ssim", n_bands), ("n", 1))
        flat = torch.cat([self.sums.get(f"{m}/{k}", torch.zeros(size, dtype=torch.float64)).reshape(-1)
                          for m in methods for k, size in parts])
        flat = reduce_sum(flat).to(torch.float64).reshape(-1)
        self.sums, i = {}, 0
        for m in methods:
            got = {}
            for k, size in parts:
                got[k] = flat[i:i + size] if k != "n" else flat[i]
                i += size
            if float(got["n"]) > 0:
                self.sums.update({f"{m}/{k}": v for k, v in got.items()})

    def methods(self) -> list[str]:
        return list(dict.fromkeys(k.split("/")[0] for k in self.sums))

    def result(self, data_range: float = 1.0) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.methods():
            n = float(self.sums[f"{m}/n"])
            suffix = "" if m == "model" else f"_{m}"
            abs_b, sq_b, ssim_b = (self.sums[f"{m}/{k}"] / n for k in ("abs", "sq", "ssim"))
            mse = float(sq_b.mean())
            out[f"mae{suffix}"] = float(abs_b.mean())
            out[f"rmse{suffix}"] = mse ** 0.5
            out[f"psnr{suffix}"] = float(10 * torch.log10(torch.tensor(data_range ** 2 / max(mse, 1e-12))))
            out[f"ssim{suffix}"] = float(ssim_b.mean())
            names = self.bands or [str(i) for i in range(len(abs_b))]
            for i, name in enumerate(names):
                out[f"mae{suffix}_{name}"] = float(abs_b[i])
                out[f"rmse{suffix}_{name}"] = float(sq_b[i]) ** 0.5
                out[f"ssim{suffix}_{name}"] = float(ssim_b[i])
            out["pixels"] = n
        return out


__all__ = ["ScoreSums", "confusion_metric", "masked_image_scores", "nearest_clear_frame", "scores_from_confusion",
           "temporal_linear"]
