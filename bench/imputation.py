"""Cloud-gap imputation vs temporal interpolation, per held-out series (model / linear / nearest on the same pixels).

    .venv/bin/python bench/imputation.py                      # trains the bundled finetune/tiny_imputation config
    .venv/bin/python bench/imputation.py --run-dir outputs/finetune/tiny_imputation --no-fit

Fits the shipped tiny config (unless ``--no-fit``), then scores its export with the fixed-mask
protocol (the masks of the config's test protocol) on each held-out test series apart: the
real Landsat dates of late July-October 2011, the real InstaGeo 3-date chip (when
``../shared/data`` is present) and the generated series with known truth. Prints one Markdown
table per series (MAE / RMSE / PSNR / SSIM / pixels, then MAE and SSIM per band).
"""

from __future__ import annotations

import argparse
import time
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
    for s in test.series:
        scores = evaluate_checkpoint(Path(args.run_dir) / "export", [s], test.masks,
                                     target_frames=cfg.data.test_frames, stride=cfg.data.test_stride)
        print(f"\n### {s.name} ({len(s)} dates, {s.height}x{s.width} px)\n")
        print(format_table(scores))


if __name__ == "__main__":
    main()
