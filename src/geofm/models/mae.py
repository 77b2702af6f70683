"""Prithvi masked autoencoder: temporal ViT encoder + light transformer decoder.

Notation as in :mod:`geofm.models.vit`. The MAE follows He et al. (2022): position
embeddings are added before masking, ``len_keep = int(L * (1 - mask_ratio))`` tokens are
kept per sample by argsort of uniform noise, the encoder sees only kept tokens (+cls), the
decoder sees all tokens, and the loss is the per-patch MSE averaged over masked patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from geofm.models.vit import (
    Block,
    PrithviViT,
    add_coords,
    attach_coords_encoders,
    init_transformer_weights,
    interpolate_pos_embed,
    sincos_3d,
)


@dataclass
class PrithviConfig:
    """Every hyperparameter of a :class:`PrithviMAE` (what ``config.json`` stores)."""

    img_size: int = 224
    patch_size: tuple[int, int, int] = (1, 16, 16)  # (tubelet, p, p)
    num_frames: int = 3
    in_chans: int = 6
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    coords_encoding: tuple[str, ...] = ()
    coords_scale_learn: bool = False
    coords_drop_rate: float = 0.0
    # Data description carried with the weights (not used by the network itself).
    bands: tuple[str, ...] = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
    norm_stats: str = "v1"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ps = self.patch_size
        if isinstance(ps, int):
            ps = (1, ps, ps)
        self.patch_size = tuple(int(v) for v in ps)
        if len(self.patch_size) == 2:
            self.patch_size = (1, *self.patch_size)
        self.coords_encoding = tuple(self.coords_encoding or ())
        self.bands = tuple(self.bands)
        if len(self.bands) != self.in_chans:
            self.bands = tuple(f"band_{i}" for i in range(self.in_chans))
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        d["coords_encoding"] = list(self.coords_encoding)
        d["bands"] = list(self.bands)
        return d

    def encoder_kwargs(self) -> dict:
        keys = ("img_size", "patch_size", "num_frames", "in_chans", "embed_dim", "depth", "num_heads",
                "mlp_ratio", "norm_eps", "coords_encoding", "coords_scale_learn", "coords_drop_rate")
        return {k: getattr(self, k) for k in keys}


# --------------------------------------------------------------------------- patches and masks
def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, L, u*p*q*C): ``b c (t u) (h p) (w q) -> b (t h w) (u p q c)``."""
    b, c, T, H, W = x.shape
    u, p, q = patch_size
    t, h, w = T // u, H // p, W // q
    x = x.reshape(b, c, t, u, h, p, w, q).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(b, t * h * w, u * p * q * c)


def unpatchify(patches: torch.Tensor, patch_size: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, u*p*q*C) -> (B, C, T, H, W) with ``shape = (C, T, H, W)``."""
    c, T, H, W = shape
    u, p, q = patch_size
    t, h, w = T // u, H // p, W // q
    b = patches.shape[0]
    x = patches.reshape(b, t, h, w, u, p, q, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, T, H, W)


def random_masking(n_batch: int, n_tokens: int, mask_ratio: float, device: torch.device | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample random masking by argsort of uniform noise.

    Returns ``ids_keep`` (B, len_keep), ``mask`` (B, L) with 1 = masked, ``ids_restore`` (B, L).
    ``noise = torch.rand(B, L)`` is drawn exactly as the reference implementations do, so a
    shared seed hides the same patches.
    """
    len_keep = int(n_tokens * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n_batch, n_tokens, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(n_batch, n_tokens, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def masking_from_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Turn an explicit patch mask (B, L), nonzero = hidden, into ``ids_keep, mask, ids_restore, pad``.

    Samples may hide different numbers of patches: all samples keep ``max`` visible tokens and
    ``pad`` (B, len_keep) flags the kept slots that are really hidden (they are ignored as keys
    in attention and replaced by the mask token in the decoder); ``pad`` is None when unneeded.
    """
    hidden = mask.bool()
    ids_shuffle = torch.argsort(hidden.to(torch.int8), dim=1, stable=True)  # visible first, in order
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    n_visible = (~hidden).sum(dim=1)
    len_keep = int(n_visible.max())
    if len_keep == 0:
        raise ValueError("the patch mask hides every patch of a sample; at least one must stay visible")
    ids_keep = ids_shuffle[:, :len_keep]
    pad = torch.arange(len_keep, device=mask.device)[None, :] >= n_visible[:, None]  # (B, len_keep)
    return ids_keep, hidden.float(), ids_restore, (pad if bool(pad.any()) else None)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# --------------------------------------------------------------------------- decoder
class MAEDecoder(nn.Module):
    """Transformer decoder: kept latent tokens + mask tokens -> per-patch pixel predictions."""

    def __init__(self, grid_size: Sequence[int], patch_size: Sequence[int], in_chans: int, encoder_dim: int,
                 decoder_dim: int = 512, depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0,
                 norm_eps: float = 1e-6, coords_encoding: Sequence[str] = (), coords_scale_learn: bool = False,
                 coords_drop_rate: float = 0.0):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.coords_drop_rate = coords_drop_rate
        u, p, q = patch_size
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = torch.from_numpy(sincos_3d(decoder_dim, self.grid_size)).float().unsqueeze(0)
        self.register_buffer("decoder_pos_embed", pos)  # (1, 1+L, Dd), fixed
        attach_coords_encoders(self, decoder_dim, coords_encoding, coords_scale_learn, "dec")
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, True, norm_eps) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, u * p * q * in_chans)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        init_transformer_weights(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if grid == self.grid_size:
            return self.decoder_pos_embed
        key = (grid, self.decoder_pos_embed.device, self.decoder_pos_embed.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = interpolate_pos_embed(self.decoder_pos_embed, self.grid_size, grid)
        return self._pos_cache[key]

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int, int],
                temporal_coords: torch.Tensor | None = None, location_coords: torch.Tensor | None = None,
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B, 1+K, D) -> predictions (B, L, u*p*q*C). ``hidden`` (B, L) forces mask tokens."""
        return self.decoder_pred(self.features(latent, ids_restore, grid, temporal_coords, location_coords,
                                               hidden)[:, 1:])

    def features(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int, int],
                 temporal_coords: torch.Tensor | None = None, location_coords: torch.Tensor | None = None,
                 hidden: torch.Tensor | None = None) -> torch.Tensor:
        """latent (B, 1+K, D) -> normalized decoder tokens (B, 1+L, Dd), before ``decoder_pred``."""
        x = self.decoder_embed(latent)  # (B, 1+K, Dd)
        b, n_keep = x.shape[0], x.shape[1] - 1
        n_tokens = ids_restore.shape[1]
        filler = self.mask_token.expand(b, n_tokens - n_keep, -1)
        tokens = gather_tokens(torch.cat([x[:, 1:], filler], dim=1), ids_restore)  # (B, L, Dd), original order
        if hidden is not None:
            tokens = torch.where(hidden.bool().unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        pos = self.pos_embed_for(grid)
        tokens = tokens + pos[:, 1:]
        tokens = add_coords(self, tokens, "dec", grid[1] * grid[2], temporal_coords, location_coords,
                            self.coords_drop_rate)
        x = torch.cat([x[:, :1] + pos[:, :1], tokens], dim=1)  # (B, 1+L, Dd)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_norm(x)


# --------------------------------------------------------------------------- the MAE
class PrithviMAE(nn.Module):
    """Prithvi temporal ViT masked autoencoder.

    ``loss, pred, mask = model(x)`` with x (B, C, T, H, W) normalized reflectance;
    pred (B, L, u*p*q*C) in patch order; mask (B, L), 1 = masked.
    """

    def __init__(self, config: PrithviConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = PrithviConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a PrithviConfig or keyword arguments, not both")
        self.config = config
        self.encoder = PrithviViT(**config.encoder_kwargs())
        self.decoder = MAEDecoder(self.encoder.grid_size, config.patch_size, config.in_chans, config.embed_dim,
                                  config.decoder_embed_dim, config.decoder_depth, config.decoder_num_heads,
                                  config.mlp_ratio, config.norm_eps, config.coords_encoding,
                                  config.coords_scale_learn, config.coords_drop_rate)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.encoder.patch_size

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        return patchify(x, self.patch_size)

    def unpatchify(self, patches: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """(B, L, u*p*q*C) -> (B, C, T, H, W); ``shape`` = (C, T, H, W) or a full (B, C, T, H, W)."""
        return unpatchify(patches, self.patch_size, tuple(shape)[-4:])

    def encode(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
               location_coords: torch.Tensor | None = None,
               return_layers: Sequence[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Unmasked encoding: (B, 1+L, D) after the final norm, or the listed blocks' outputs."""
        return self.encoder(x, temporal_coords, location_coords, return_layers)

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, temporal_coords: torch.Tensor | None = None,
                        location_coords: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None):
        """Encode the visible tokens only. Returns latent (B, 1+K, D), mask (B, L), ids_restore (B, L), pad."""
        enc = self.encoder
        tokens, pos = enc.embed(x, temporal_coords, location_coords)  # (B, L, D)
        b, n = tokens.shape[:2]
        if mask is not None:
            if mask.shape != (b, n):
                raise ValueError(f"patch mask must be (B, L) = {(b, n)}, got {tuple(mask.shape)}")
            ids_keep, mask, ids_restore, pad = masking_from_mask(mask)
        else:
            ids_keep, mask, ids_restore = random_masking(b, n, mask_ratio, tokens.device, noise)
            pad = None
        h = enc.with_cls(gather_tokens(tokens, ids_keep), pos)  # (B, 1+K, D)
        attn_mask = None
        if pad is not None:  # padded slots must not be attended to
            keep = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1).logical_not()  # (B, 1+K)
            attn_mask = keep[:, None, None, :]
        for blk in enc.blocks:
            h = blk(h, attn_mask)
        return enc.norm(h), mask, ids_restore, pad

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     valid: torch.Tensor | None = None, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Per-patch MSE averaged over masked patches; ``valid`` (B, C, T, H, W) excludes nodata pixels.

        With ``ids`` (B, M), ``pred`` (B, M, u*p*q*C) holds only those patches (the masked ones).
        """
        target = self.patchify(x)
        if ids is not None:
            target = gather_tokens(target, ids)  # (B, M, P)
            mask = torch.ones(ids.shape, device=ids.device)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        err = (pred.float() - target.float()) ** 2  # (B, L, P)
        if valid is None:
            per_patch = err.mean(dim=-1)
        else:
            w = self.patchify(valid.expand_as(x).to(err.dtype))
            if ids is not None:
                w = gather_tokens(w, ids)
            per_patch = (err * w).sum(-1) / w.sum(-1).clamp_min(1.0)
            mask = mask * (w.sum(-1) > 0)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                valid: torch.Tensor | None = None, noise: torch.Tensor | None = None, return_pred: bool = True):
        """MAE forward. ``mask`` (B, L), nonzero = hidden, replaces random masking (imputation).

        ``return_pred=False`` (training): the prediction layer and the loss run on the masked
        tokens only (the loss is the same up to float summation order) and ``pred`` is None.
        """
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        grid = self.encoder.grid_of(x)
        latent, mask, ids_restore, pad = self.forward_encoder(x, ratio, temporal_coords, location_coords, mask, noise)
        hidden = mask if pad is not None else None
        if return_pred or pad is not None:  # pad: samples hide different counts of patches
            pred = self.decoder(latent, ids_restore, grid, temporal_coords, location_coords, hidden=hidden)
            return self.forward_loss(x, pred, mask, valid), pred, mask
        tokens = self.decoder.features(latent, ids_restore, grid, temporal_coords, location_coords)[:, 1:]
        n_keep = latent.shape[1] - 1
        ids = torch.argsort(mask, dim=1, stable=True)[:, n_keep:]  # (B, L-K) masked patches, ascending
        pred_masked = self.decoder.decoder_pred(gather_tokens(tokens, ids))  # (B, M, u*p*q*C)
        return self.forward_loss(x, pred_masked, mask, valid, ids), None, mask

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Image (B, C, T, H, W): visible patches from ``x``, masked ones from ``pred``.

        With ``norm_pix_loss`` the prediction is mapped back with each target patch's mean/std.
        """
        target = self.patchify(x)
        pred = pred.to(target.dtype)
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
            pred = pred * std + mean
        m = mask.bool().unsqueeze(-1)
        return self.unpatchify(torch.where(m, pred, target), x.shape)
