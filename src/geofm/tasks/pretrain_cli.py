"""``geofm pretrain --config YAML [KEY=VALUE ...]``: MAE pretraining (see :mod:`geofm.tasks.pretrain`).

Light on imports: the config is read and checked before torch and Lightning are loaded.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file, or a bundled config by name: pretrain/tiny, pretrain/prithvi_eo_v1_100m, ...")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. trainer.max_steps=100 optim.lr=1e-4 data.batch_size=32")


def run(args: argparse.Namespace) -> int:
    from geofm.tasks.pretrain_config import check_config, load_pretrain_config, prepare_store

    cfg = load_pretrain_config(args.config, args.overrides)
    prepare_store(cfg)
    check_config(cfg)  # a bad config is refused before Lightning is imported
    from geofm.tasks.pretrain import run_pretrain

    run_dir = run_pretrain(cfg)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        print(f"run directory: {run_dir}")
        print(f"  exported MAE: {run_dir / 'export'} (model.safetensors + config.json)")
        print(f"  metrics: {run_dir / 'logs'}/version_*/metrics.csv; TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return 0
