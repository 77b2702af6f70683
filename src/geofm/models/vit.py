"""Temporal Vision Transformer encoder of the Prithvi models.

Notation: B batch, C bands, T frames, H/W pixels, ``(u, p, p)`` the tubelet/patch size,
``(t, h, w) = (T/u, H/p, W/p)`` the token grid, L = t*h*w tokens (t-major), D width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geofm.models.fast_cpu import CastCachingLinear, attention_in_fp32


# --------------------------------------------------------------------------- position embeddings
def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """1D sin-cos embedding: (N,) positions -> (N, dim) = [sin(pos*omega), cos(pos*omega)]."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.asarray(pos, dtype=np.float64).reshape(-1)[:, None] * omega[None, :]  # (N, dim/2)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d(dim: int, grid: Sequence[int], cls_token: bool = True) -> np.ndarray:
    """Fixed 3D sin-cos position embedding of a (t, h, w) token grid, t-major token order.

    Width and height get ``dim/16*6`` dims each, time ``dim/16*4``, concatenated (w, h, t).
    Returns (1 + t*h*w, dim) with a zero row for the cls token (or (t*h*w, dim)).
    """
    if dim % 16:
        raise ValueError(f"embed_dim must be divisible by 16 for the 3D sin-cos embedding, got {dim}")
    t, h, w = grid
    d_w = d_h = dim // 16 * 6
    d_t = dim // 16 * 4
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")  # (t, h, w) each
    emb = np.concatenate(
        [sincos_1d(d_w, ww.reshape(-1)), sincos_1d(d_h, hh.reshape(-1)), sincos_1d(d_t, tt.reshape(-1))], axis=1
    )  # (t*h*w, dim)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb


def sincos_1d_torch(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """Torch twin of :func:`sincos_1d` for data-dependent positions (dates, coordinates): (N,) -> (N, dim)."""
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = pos.reshape(-1, 1).float() * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def interpolate_pos_embed(pos_embed: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int],
                          always: bool = False) -> torch.Tensor:
    """Resize a (1, 1+t*h*w, D) position embedding from ``src_grid`` to ``dst_grid``.

    Time is resized linearly, height/width bicubically (per frame). The cls row is kept.
    ``always`` resamples height/width even to the same size (an identity), for graphs where
    the destination grid is symbolic.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if not always and src_grid == dst_grid:
        return pos_embed
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    t, h, w = src_grid
    d = grid.shape[-1]
    if grid.shape[1] != t * h * w:
        raise ValueError(f"pos_embed has {grid.shape[1]} tokens, expected {t}*{h}*{w} for grid {src_grid}")
    x = grid.reshape(1, t, h, w, d).permute(0, 4, 1, 2, 3).float()  # (1, D, t, h, w)
    nt, nh, nw = dst_grid
    if nt != t:
        x = F.interpolate(x.reshape(1, d, t, h * w), size=(nt, h * w), mode="bilinear", align_corners=False)
        x = x.reshape(1, d, nt, h, w)
    if always or (nh, nw) != (h, w):
        x = x.permute(0, 2, 1, 3, 4).reshape(nt, d, h, w)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False)
        x = x.reshape(1, nt, d, nh, nw).permute(0, 2, 1, 3, 4)
    x = x.permute(0, 2, 3, 4, 1).reshape(1, nt * nh * nw, d).to(pos_embed.dtype)
    return torch.cat([cls, x], dim=1)


# --------------------------------------------------------------------------- building blocks
class PatchEmbed3D(nn.Module):
    """(B, C, T, H, W) -> (B, L, D) with one Conv3d of kernel = stride = (u, p, p)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: Sequence[int]):
        super().__init__()
        self.patch_size = tuple(int(s) for s in patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected input (B, C, T, H, W), got shape {tuple(x.shape)}")
        u, p, q = self.patch_size
        _, c, t, h, w = x.shape
        if t % u or h % p or w % q:
            raise ValueError(f"input (T, H, W) = {(t, h, w)} is not divisible by the patch size {self.patch_size}")
        if c != self.proj.in_channels:
            raise ValueError(f"expected {self.proj.in_channels} bands, got {c}")
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, L, D), tokens ordered (t, h, w)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and SDPA kernels."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = CastCachingLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = CastCachingLinear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, D); ``attn_mask`` (B, 1, 1, N) bool, False = key ignored."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim) each
        if attention_in_fp32(q, attn_mask):
            with torch.autocast(q.device.type, enabled=False):  # else autocast casts the inputs back
                x = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=attn_mask)
            x = x.to(q.dtype)
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = CastCachingLinear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = CastCachingLinear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class _CoordsEncoder(nn.Module):
    """Shared scale handling of the EO-2.0 temporal/location encoders (scale init 0.1 if learnable)."""

    def __init__(self, embed_dim: int, trainable_scale: bool):
        super().__init__()
        self.embed_dim = embed_dim
        self.first_dim = embed_dim // 2
        self.second_dim = embed_dim - self.first_dim
        if trainable_scale:
            self.scale = nn.Parameter(torch.full((1,), 0.1))
        else:
            self.register_buffer("scale", torch.ones(1))

    def _pair(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.cat(
            [sincos_1d_torch(self.first_dim, first), sincos_1d_torch(self.second_dim, second)], dim=-1
        )


class TemporalEncoder(_CoordsEncoder):
    """(B, T, 2) = (year, day of year) -> (B, T*tokens_per_frame, D) sin-cos encoding."""

    def forward(self, coords: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
        b, t, _ = coords.shape
        emb = self._pair(coords[..., 0].reshape(-1), coords[..., 1].reshape(-1)).reshape(b, t, -1)
        return emb.repeat_interleave(tokens_per_frame, dim=1)


class LocationEncoder(_CoordsEncoder):
    """(B, 2) = (lat, lon) in degrees -> (B, 1, D) sin-cos encoding."""

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        return self._pair(coords[:, 0], coords[:, 1]).reshape(coords.shape[0], 1, -1)


def drop_per_sample(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples of ``x`` (B, ...) with probability ``p`` in training (no rescaling)."""
    if not training or p <= 0.0:
        return x
    keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= p
    return x * keep.to(x.dtype)


def attach_coords_encoders(module: nn.Module, embed_dim: int, coords_encoding: Sequence[str],
                           scale_learn: bool, suffix: str) -> None:
    """Attach ``temporal_embed_<suffix>`` / ``location_embed_<suffix>`` (EO-2.0 TL checkpoint names)."""
    unknown = set(coords_encoding) - {"time", "location"}
    if unknown:
        raise ValueError(f"coords_encoding accepts 'time' and 'location', got {sorted(unknown)}")
    if "time" in coords_encoding:
        setattr(module, f"temporal_embed_{suffix}", TemporalEncoder(embed_dim, scale_learn))
    if "location" in coords_encoding:
        setattr(module, f"location_embed_{suffix}", LocationEncoder(embed_dim, scale_learn))


def add_coords(module: nn.Module, x: torch.Tensor, suffix: str, tokens_per_frame: int,
               temporal_coords: torch.Tensor | None, location_coords: torch.Tensor | None,
               drop_rate: float) -> torch.Tensor:
    """Add the TL encodings held by ``module`` to tokens ``x`` (B, t*tokens_per_frame, D)."""
    temporal = getattr(module, f"temporal_embed_{suffix}", None)
    if temporal is not None and temporal_coords is not None:
        enc = temporal(temporal_coords, tokens_per_frame).to(x.dtype)  # computed in fp32 from the dates
        x = x + drop_per_sample(enc, drop_rate, module.training)
    location = getattr(module, f"location_embed_{suffix}", None)
    if location is not None and location_coords is not None:
        enc = location(location_coords).to(x.dtype)
        x = x + drop_per_sample(enc, drop_rate, module.training)
    return x


# --------------------------------------------------------------------------- encoder
class PrithviViT(nn.Module):
    """Prithvi temporal ViT encoder.

    ``forward(x)`` with x (B, C, T, H, W) returns (B, 1+L, D) tokens after the final norm;
    with ``return_layers=[i, ...]`` it returns the listed blocks' outputs (before the final
    norm), each (B, 1+L, D). Inputs whose (T, H, W) differ from the configured size get an
    interpolated position embedding.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: Sequence[int] = (1, 16, 16),
        num_frames: int = 3,
        in_chans: int = 6,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = 1e-6,
        coords_encoding: Sequence[str] = (),
        coords_scale_learn: bool = False,
        coords_drop_rate: float = 0.0,
    ):
        super().__init__()
        self.img_size = int(img_size)
        self.num_frames = int(num_frames)
        self.in_chans = int(in_chans)
        self.embed_dim = int(embed_dim)
        self.patch_size = tuple(int(s) for s in patch_size)
        u, p, q = self.patch_size
        if num_frames % u or img_size % p or img_size % q:
            raise ValueError(f"img_size {img_size} / num_frames {num_frames} not divisible by patch {self.patch_size}")
        self.grid_size = (num_frames // u, img_size // p, img_size // q)
        self.coords_drop_rate = float(coords_drop_rate)
        self.patch_embed = PatchEmbed3D(in_chans, embed_dim, self.patch_size)
        attach_coords_encoders(self, embed_dim, coords_encoding, coords_scale_learn, "enc")
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = torch.from_numpy(sincos_3d(embed_dim, self.grid_size)).float().unsqueeze(0)
        self.register_buffer("pos_embed", pos)  # (1, 1+L, D), fixed
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_size
        return t * h * w

    def reset_parameters(self) -> None:
        """MAE initialisation: xavier-uniform linears and patch projection, cls token N(0, 0.02)."""
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        init_transformer_weights(self.blocks)
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def grid_of(self, x: torch.Tensor) -> tuple[int, int, int]:
        u, p, q = self.patch_size
        return (x.shape[2] // u, x.shape[3] // p, x.shape[4] // q)

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(1, 1+t*h*w, D) position embedding for a token grid (interpolated if not native, then cached).

        While a graph is exported with dynamic H and W (``torch.export``, ONNX) h and w are
        symbolic: the embedding is resampled inside the graph, so the graph takes any size.
        """
        if any(isinstance(n, torch.SymInt) for n in grid):
            return self.resample_pos_embed(grid, always=True)
        if grid == self.grid_size:
            return self.pos_embed
        key = (grid, self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = self.resample_pos_embed(grid)
        return self._pos_cache[key]

    def resample_pos_embed(self, grid: tuple[int, int, int], always: bool = False) -> torch.Tensor:
        """The native position embedding resized to ``grid`` (see :func:`interpolate_pos_embed`)."""
        return interpolate_pos_embed(self.pos_embed, self.grid_size, grid, always)

    def embed(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
              location_coords: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with position (and TL) encodings: returns ((B, L, D), pos_embed (1, 1+L, D))."""
        grid = self.grid_of(x)
        tokens = self.patch_embed(x)  # (B, L, D)
        pos = self.pos_embed_for(grid)
        tokens = tokens + pos[:, 1:]
        tokens = add_coords(self, tokens, "enc", grid[1] * grid[2], temporal_coords, location_coords,
                            self.coords_drop_rate)
        return tokens, pos

    def with_cls(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)  # (B, 1+N, D)

    def forward(self, x: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None,
                return_layers: Sequence[int] | None = None) -> torch.Tensor | list[torch.Tensor]:
        tokens, pos = self.embed(x, temporal_coords, location_coords)
        h = self.with_cls(tokens, pos)
        if return_layers is None:
            for blk in self.blocks:
                h = blk(h)
            return self.norm(h)
        wanted = [i % len(self.blocks) for i in return_layers]
        outs: dict[int, torch.Tensor] = {}
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            h = blk(h)
            if i in wanted:
                outs[i] = h
        return [outs[i] for i in wanted]


def init_transformer_weights(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear; unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_flops_encoder(embed_dim: int, depth: int, tokens: int, in_dim: int, mlp_ratio: float = 4.0) -> float:
    """Analytic multiply-add FLOPs (x2) of a ViT forward on ``tokens`` tokens, including attention."""
    d, n = embed_dim, tokens
    per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * int(d * mlp_ratio)
    return float(depth * per_block + 2 * n * in_dim * d)


__all__ = [
    "PrithviViT", "Block", "Attention", "Mlp", "PatchEmbed3D", "TemporalEncoder", "LocationEncoder",
    "sincos_1d", "sincos_3d", "interpolate_pos_embed", "count_flops_encoder",
]
