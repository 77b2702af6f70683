"""Cloud-gap imputation vs temporal interpolation, per held-out series (model / linear / nearest on the same pixels).

    .venv/bin/python bench/imputation.py                      # trains the bundled finetune/tiny_imputation config
    .venv/bin/python bench/imputation.py --run-dir outputs/finetune/tiny_imputation --no-fit

Fits the shipped tiny config (unless ``--no-fit``), then scores its export with the fixed-mask
protocol (the masks of the config's test protocol) on each held-out test series apart: the
real Landsat dates of late July-October 2011 (all, and an irregular subset), the real InstaGeo
3-date chip (when ``../shared/data`` is present) and the generated series with known truth on
irregular dates. Prints one Markdown table per series (MAE / RMSE / PSNR / SSIM / pixels, then
MAE and SSIM per band), then one row per 3-date window of each series with the days between
its dates: MAE and SSIM of the model, of linear interpolation by day, of the nearest date, and
of linear interpolation by frame index (what counting dates instead of days gives).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="finetune/tiny_imputation")
    p.add_argument("--run-dir", default=str(REPO / "outputs" / "finetune" / "tiny_imputation"))
    p.add_argument("--no-fit", action="store_true", help="score the existing export of --run-dir")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    import torch

    from geofm.bands import MODEL_BANDS
    from geofm.tasks.evaluate_imputation import evaluate_checkpoint, format_table
    from geofm.tasks.finetune import build_datamodule, load_finetune_config, run_finetune

    torch.set_num_threads(1)
    cfg = load_finetune_config(args.config, [*args.overrides, f"run_dir={args.run_dir}"])
    t0 = time.perf_counter()
    if not args.no_fit:
        run_finetune(cfg, "fit")
        print(f"fit + test: {time.perf_counter() - t0:.0f} s")
    dm = build_datamodule(cfg, Path(args.run_dir))
    test = dm.test_set
    export = Path(args.run_dir) / "export"
    windows = ["| series | dates | days apart | MAE model | MAE auto | MAE linear | MAE nearest | MAE linear (index) | "
               "SSIM model | SSIM auto | SSIM linear | SSIM linear (index) | pixels |", "|---" * 13 + "|"]
    for s in test.series:
        scores = evaluate_checkpoint(export, [s], test.masks, target_frames=cfg.data.test_frames,
                                     stride=cfg.data.test_stride)
        auto = evaluate_checkpoint(export, [s], test.masks, target_frames=cfg.data.test_frames,
                                   stride=cfg.data.test_stride, correction="auto")
        print(f"\n### {s.name} ({len(s)} dates, {s.height}x{s.width} px)\n")
        print(format_table(scores))
        print(f"\nauto-correction (what geofm predict writes): MAE {auto['mae']:.4f}, RMSE {auto['rmse']:.4f}, "
              f"PSNR {auto['psnr']:.2f}, SSIM {auto['ssim']:.4f}; per band MAE "
              + ", ".join(f"{b} {auto[f'mae_{b}']:.4f}" for b in MODEL_BANDS))
        T = test.frames
        for t0 in range(len(s) - T + 1):
            part = replace(s, frames=s.frames[t0:t0 + T])
            undated = replace(s, frames=[replace(f, datetime=None) for f in part.frames])
            sc = evaluate_checkpoint(export, [part], test.masks, target_frames=cfg.data.test_frames)
            au = evaluate_checkpoint(export, [part], test.masks, target_frames=cfg.data.test_frames,
                                     correction="auto")
            idx = evaluate_checkpoint(export, [undated], test.masks, target_frames=cfg.data.test_frames)
            dates = [f.datetime for f in part.frames]
            if sc.get("pixels", 0) == 0:
                continue
            apart = "/".join(str((b - a).days) for a, b in zip(dates, dates[1:])) if all(dates) else "equal"
            when = ", ".join(d.strftime("%Y-%m-%d") for d in dates) if all(dates) else "undated"
            windows.append(f"| {s.name} | {when} | {apart} | {sc['mae']:.4f} | {au['mae']:.4f} | "
                           f"{sc['mae_linear']:.4f} | {sc['mae_nearest']:.4f} | {idx['mae_linear']:.4f} | "
                           f"{sc['ssim']:.4f} | {au['ssim']:.4f} | {sc['ssim_linear']:.4f} | "
                           f"{idx['ssim_linear']:.4f} | {int(sc['pixels'])} |")
    print("\n### Per window (middle date hidden)\n")
    print("\n".join(windows))


if __name__ == "__main__":
    main()
