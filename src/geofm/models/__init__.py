"""Prithvi ViT masked autoencoders: presets, checkpoints, necks and heads."""
