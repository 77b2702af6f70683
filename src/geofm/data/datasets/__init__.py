"""Fine-tuning datasets, one per file: ``sen1floods11`` (flood), ``burn_scars``, ``crops`` (multi-temporal
crop classification), ``imputation`` (cloud-gap series and masks); ``base`` (what the segmentation
datasets share: checked image/label pairs, tiles, splits, label fractions); ``synthetic_layouts``
(tiny generated datasets in the official on-disk layouts)."""
