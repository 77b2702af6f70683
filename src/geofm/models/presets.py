"""Named model presets and the factories ``create_model`` / ``create_encoder``."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch

from geofm.errors import CheckpointError, ConfigError
from geofm.models import checkpoints
from geofm.models.checkpoints import guess_grid
from geofm.models.mae import PrithviConfig, PrithviMAE
from geofm.models.vit import PrithviViT

log = logging.getLogger(__name__)

_TL = {"coords_encoding": ("time", "location"), "coords_scale_learn": True, "coords_drop_rate": 0.1}
_V2 = {"num_frames": 4, "norm_stats": "v2", "decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}

#: Hyperparameters of the released models (Jakubik et al. 2023; Szwarcman et al. 2024).
PRESETS: dict[str, dict[str, Any]] = {
    "prithvi_eo_v1_100m": dict(img_size=224, patch_size=(1, 16, 16), num_frames=3, in_chans=6, embed_dim=768,
                               depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8,
                               decoder_num_heads=16, norm_stats="v1"),
    "prithvi_eo_v2_300m": dict(img_size=224, patch_size=(1, 16, 16), embed_dim=1024, depth=24, num_heads=16, **_V2),
    "prithvi_eo_v2_300m_tl": dict(img_size=224, patch_size=(1, 16, 16), embed_dim=1024, depth=24, num_heads=16,
                                  **_V2, **_TL),
    "prithvi_eo_v2_600m": dict(img_size=224, patch_size=(1, 14, 14), embed_dim=1280, depth=32, num_heads=16, **_V2),
    "prithvi_eo_v2_600m_tl": dict(img_size=224, patch_size=(1, 14, 14), embed_dim=1280, depth=32, num_heads=16,
                                  **_V2, **_TL),
    # A few hundred thousand parameters: for tests, demos and laptop experiments.
    "prithvi_tiny": dict(img_size=64, patch_size=(1, 8, 8), num_frames=3, in_chans=6, embed_dim=64, depth=4,
                         num_heads=4, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4, norm_stats="v1"),
}
PRESETS["prithvi_tiny_tl"] = dict(PRESETS["prithvi_tiny"], **_TL)


def list_models() -> list[str]:
    return sorted(PRESETS)


def build_config(name: str | None = None, base: dict | None = None, **overrides: Any) -> PrithviConfig:
    """Config of preset ``name`` (or ``base``) with ``overrides``.

    ``patch_size`` may be an int (spatial size; the tubelet comes from ``tubelet_size``, default
    the preset's) or a (tubelet, p, p) triple.
    """
    if name is not None:
        if name not in PRESETS:
            raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
        cfg = dict(PRESETS[name])
    else:
        cfg = {}
    cfg.update(base or {})
    fields = {f.name for f in dataclasses.fields(PrithviConfig)}
    unknown = set(overrides) - fields - {"tubelet_size"}
    if unknown:
        raise ConfigError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(fields | {'tubelet_size'})}")
    cur = cfg.get("patch_size", PrithviConfig.patch_size)
    cur = (1, cur, cur) if isinstance(cur, int) else tuple(cur)
    tubelet = overrides.pop("tubelet_size", None)
    ps = overrides.pop("patch_size", None)
    if ps is not None:
        cur = (cur[0], int(ps), int(ps)) if isinstance(ps, int) else tuple(ps)
    if tubelet is not None:
        cur = (int(tubelet), cur[1], cur[2])
    cfg["patch_size"] = cur
    cfg.update(overrides)
    try:
        return PrithviConfig(**cfg)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid model configuration for {name or 'custom model'}: {e}") from e


def create_model(name: str | None, checkpoint: str | os.PathLike | None = None, *, strict: bool = True,
                 encoder_only: bool = False, **overrides: Any) -> PrithviMAE:
    """Build a :class:`PrithviMAE` from preset ``name`` with ``overrides``, optionally loading weights.

    ``checkpoint`` is any layout :func:`geofm.models.checkpoints.read_checkpoint` reads. With
    ``name=None`` the configuration comes from the checkpoint (``config.json`` or Lightning
    hyperparameters). ``encoder_only=True`` accepts checkpoints without a decoder.
    """
    ckpt = checkpoints.read_checkpoint(checkpoint) if checkpoint is not None else None
    if name is None:
        if ckpt is None or ckpt.config is None:
            raise ConfigError("create_model(None, ...) needs a checkpoint that carries its configuration")
        config = build_config(None, ckpt.config, **overrides)
    else:
        config = build_config(name, None, **overrides)
    model = PrithviMAE(config)
    if ckpt is not None:
        checkpoints.load_into(model, ckpt.state_dict, strict=strict, encoder_only=encoder_only, source=ckpt.source)
    return model


def create_encoder(name: str | None, checkpoint: str | os.PathLike | None = None, *, strict: bool = True,
                   **overrides: Any) -> PrithviViT:
    """Build the encoder (:class:`PrithviViT`) only; decoder weights in the checkpoint are ignored."""
    mae = create_model(name, checkpoint, strict=strict, encoder_only=True, **overrides)
    encoder = mae.encoder
    encoder.config = mae.config
    return encoder


def infer_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Model options read off the tensor shapes of an adapted state dict.

    Head counts are not stored in weights: they come from the preset with the same width
    and depth when one exists, else 64 (encoder) and 32 (decoder) dims per head.
    """
    w = state_dict["encoder.patch_embed.proj.weight"]  # (D, C, u, p, q)
    d, c, u, p, _ = w.shape
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("encoder.blocks.")})
    cfg: dict[str, Any] = {"embed_dim": d, "in_chans": c, "patch_size": (u, p, p), "depth": depth,
                           "mlp_ratio": state_dict["encoder.blocks.0.mlp.fc1.weight"].shape[0] / d}
    n_tokens = state_dict["encoder.pos_embed"].shape[1] - 1
    match = [dict(v) for v in PRESETS.values() if v["embed_dim"] == d and v["depth"] == depth]
    preset = match[0] if match else {}
    cfg["num_heads"] = preset.get("num_heads", max(1, d // 64))
    grid = guess_grid(n_tokens, (preset.get("num_frames", 1) // u or 1, 0, 0), (u, p, p))
    if grid is None:
        raise CheckpointError(f"cannot infer the token grid from {n_tokens} position-embedding tokens")
    cfg["num_frames"], cfg["img_size"] = grid[0] * u, grid[1] * p
    if "decoder.decoder_embed.weight" in state_dict:
        dd = state_dict["decoder.decoder_embed.weight"].shape[0]
        cfg["decoder_embed_dim"] = dd
        cfg["decoder_depth"] = len({k.split(".")[2] for k in state_dict if k.startswith("decoder.decoder_blocks.")})
        cfg["decoder_num_heads"] = preset.get("decoder_num_heads", max(1, dd // 32))
    coords = [n for n, key in (("time", "encoder.temporal_embed_enc.scale"),
                               ("location", "encoder.location_embed_enc.scale")) if key in state_dict]
    if coords:
        cfg["coords_encoding"] = tuple(coords)
        cfg["coords_scale_learn"] = True
    for key in ("norm_stats",):
        if key in preset:
            cfg[key] = preset[key]
    return cfg
