"""LightningModules: MAE pretraining, segmentation, imputation."""
