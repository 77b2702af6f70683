"""Training and evaluation: configs, LightningModules, the commands that run them, and experiments.

* Pretraining: ``pretrain_config`` (the config and its checks, Lightning-free), ``pretrain`` (the MAE
  LightningModule, trainer and run), ``pretrain_cli`` (``geofm pretrain``).
* Fine-tuning: ``finetune_config`` (the config, strategies and schedules, Lightning-free), ``base``
  (what the fine-tuning LightningModules share), ``segmentation`` and ``imputation`` (the
  LightningModules), ``metrics`` (mIoU, per-band scores), ``finetune`` (``geofm finetune``: fit /
  validate / test / predict), ``chip_predictions`` (the GeoTIFFs of ``--stage predict``),
  ``experiment`` (``geofm experiment``: the data-efficiency grid).
* ``evaluate_imputation`` + ``evaluate_imputation_cli``: a gap filler vs interpolation on real cloud masks.
* Shared by the runs: ``callbacks`` (throughput, quicklooks, progress lines), ``distributed``
  (DDP/CPU FSDP strategies and safe checkpoint IO).
"""
