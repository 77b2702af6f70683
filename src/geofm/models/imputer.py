"""Cloud-gap imputer: the Prithvi MAE, either as the paper's pure reconstruction or as a learned
correction on top of a temporal baseline.

>>> imputer = Imputer(create_model("prithvi_tiny"), residual="linear")
>>> filled = imputer(x, hidden)  # x (B, C, T, H, W) normalized, hidden (B, T, H, W) bool  # doctest: +SKIP

``residual="linear"`` (the default of the imputation task). Each hidden pixel starts from its
**temporal baseline**: linear interpolation by acquisition day between the nearest earlier and
later frames where the same pixel is clear, or the nearest clear frame at the ends of the series
(:func:`temporal_baseline`). The encoder sees every token: hidden pixels hold their baseline,
and a context embedding adds, per patch, the baseline of *every* pixel (at clear pixels it is
the leave-this-frame-out interpolation), how far the baseline misses around each pixel where
the truth is known (:func:`local_residual`, the clear pixels of the same date, two window
sizes), the gap mask and the distances (in days) to the clear observations before and after.
Dates come as ``temporal_coords`` (B, T, 2) = (year, day of year), which TL encoders embed too.
The correction of a hidden pixel is the MAE decoder's per-pixel prediction plus, for each local
residual, a learned per-band gain times a per-pixel gate in (0, 1) times the residual. The gate
(:attr:`Imputer.residual_gate`, a per-pixel linear map and a sigmoid) reads the local residuals,
how much the two window sizes disagree, the distances in days and the gap mask, so that the
residual is trusted less where the surroundings say little about the hidden pixel. The
decoder's last layer and the gains start at zero, so an untrained imputer returns exactly the
baseline.

``residual="none"``: the paper's task. Patches whose hidden fraction exceeds
``patch_threshold`` are masked from the encoder, hidden pixels of visible patches are set to the
nodata marker, and the decoder's prediction fills the hidden pixels.

Both modes fill at pixel level: clear pixels keep their input values, hidden pixels take the
model's value (the same in training, evaluation and scene prediction).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geofm.bands import NORMALIZED_NODATA
from geofm.models.mae import PrithviMAE
from geofm.models.vit import PatchEmbed3D

RESIDUAL_MODES = ("linear", "none")


# --------------------------------------------------------------------------- time in days
#: frames without dates (equal spacing, allowed explicitly) count as this many days apart
FRAME_DAYS = 16.0


def day_numbers(temporal_coords: torch.Tensor | None, b: int, T: int, device=None) -> torch.Tensor:
    """(B, T) float days since each sample's first frame from ``temporal_coords`` (B, T, 2) =
    (year, day of year); samples with a NaN date (or ``temporal_coords=None``) count
    :data:`FRAME_DAYS` per frame (equal spacing)."""
    equal = torch.arange(T, dtype=torch.float64, device=device).expand(b, T) * FRAME_DAYS
    if temporal_coords is None:
        return equal.float()
    tc = temporal_coords.to(device=device, dtype=torch.float64)
    year, doy = tc[..., 0], tc[..., 1]
    y = torch.nan_to_num(year, nan=1.0) - 1
    ordinal = 365 * y + torch.div(y, 4, rounding_mode="floor") - torch.div(y, 100, rounding_mode="floor") \
        + torch.div(y, 400, rounding_mode="floor") + torch.nan_to_num(doy, nan=0.0)  # proleptic Gregorian
    dated = torch.isfinite(tc).all(-1).all(-1, keepdim=True)  # (B, 1)
    return torch.where(dated, ordinal - ordinal[:, :1], equal).float()


def dated_coords(temporal_coords: torch.Tensor | None) -> torch.Tensor | None:
    """``temporal_coords`` for the encoder: None unless every sample has every date."""
    if temporal_coords is None or not bool(torch.isfinite(temporal_coords).all()):
        return None
    return temporal_coords


# --------------------------------------------------------------------------- temporal baselines
def temporal_baseline(x: torch.Tensor, hidden: torch.Tensor, linear: bool = True, days: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel temporal baseline of every frame from the *other* frames' clear pixels, in days.

    x (B, C, T, H, W); hidden (B, T, H, W) bool (pixels that may not be used: gaps, clouds,
    nodata); ``days`` (B, T) acquisition days in date order (:func:`day_numbers`; None: equally
    spaced). Returns ``base`` (B, C, T, H, W): for each frame t and pixel, linear interpolation
    by acquisition day between the closest clear frames before and after t (a frame 50 days
    after the one before and 10 before the next gets 5/6 of the way), or with ``linear=False``
    the clear frame nearest in days (ties to the earlier); the one clear frame on one side at
    the ends, or the per-band mean of the sample's clear pixels where no other frame is clear;
    and ``dist`` (B, 2, T, H, W): days to the clear observation before / after (inf where none).
    """
    b, c, T, h, w = x.shape
    if days is None:
        days = day_numbers(None, b, T, x.device)
    days = days.to(device=x.device, dtype=torch.float32)
    vis = ~hidden
    t_idx = torch.arange(T, device=x.device).view(1, T, 1, 1).expand_as(vis)
    big = T * 10
    vis_f = vis.unsqueeze(1).to(x.dtype)
    fallback = ((x * vis_f).sum((2, 3, 4)) / vis_f.sum((2, 3, 4)).clamp_min(1))[:, :, None, None]  # (B, C, 1, 1)
    base = torch.empty_like(x)
    dist = torch.empty(b, 2, T, h, w, dtype=x.dtype, device=x.device)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)

    def day_at(idx: torch.Tensor) -> torch.Tensor:  # (B, H, W) frame indices -> their days
        return days.gather(1, idx.clamp(0, T - 1).reshape(b, -1)).reshape(b, h, w)

    for t in range(T):
        before = torch.where(vis & (t_idx < t), t_idx, torch.full_like(t_idx, -big)).amax(1)  # (B, H, W)
        after = torch.where(vis & (t_idx > t), t_idx, torch.full_like(t_idx, big)).amin(1)
        has_b, has_a = before >= 0, after < T
        xb = torch.gather(x, 2, before.clamp(0, T - 1)[:, None, None].expand(b, c, 1, h, w)).squeeze(2)
        xa = torch.gather(x, 2, after.clamp(0, T - 1)[:, None, None].expand(b, c, 1, h, w)).squeeze(2)
        d_t = days[:, t].view(b, 1, 1)
        since, until = d_t - day_at(before), day_at(after) - d_t  # (B, H, W) days
        if linear:
            wgt = (since / (since + until).clamp_min(1e-6)).to(x.dtype)[:, None]
            both = xb + (xa - xb) * wgt
        else:
            both = torch.where((since <= until)[:, None], xb, xa)
        base[:, :, t] = torch.where((has_b & has_a)[:, None], both,
                                    torch.where(has_b[:, None], xb, torch.where(has_a[:, None], xa, fallback)))
        dist[:, 0, t] = torch.where(has_b, since.to(x.dtype), inf)
        dist[:, 1, t] = torch.where(has_a, until.to(x.dtype), inf)
    return base, dist


def local_residual(x: torch.Tensor, base: torch.Tensor, hidden: torch.Tensor, size: int) -> torch.Tensor:
    """How far the baseline misses around each pixel: the mean of ``x - base`` over the clear pixels
    of the same frame in a ``size`` × ``size`` window (0 where the window has none). (B, C, T, H, W)."""
    import torch.nn.functional as F

    usable = (~hidden).unsqueeze(1).to(x.dtype)  # (B, 1, T, H, W)
    k, pad = (1, size, size), (0, size // 2, size // 2)
    num = F.avg_pool3d((x - base) * usable, k, stride=1, padding=pad)
    den = F.avg_pool3d(usable, k, stride=1, padding=pad)
    return torch.where(den > 0, num / den.clamp_min(1e-6), torch.zeros_like(num))


def fill_hidden(x: torch.Tensor, hidden: torch.Tensor, linear: bool = True, days: torch.Tensor | None = None
                ) -> torch.Tensor:
    """x (B, C, T, H, W) with hidden pixels (B, T, H, W) replaced by :func:`temporal_baseline` (``days`` (B, T))."""
    base, _ = temporal_baseline(x, hidden, linear, days)
    return torch.where(hidden.unsqueeze(1), base, x)


def hidden_patches(hidden: torch.Tensor, patch_size: Sequence[int], threshold: float = 0.0) -> torch.Tensor:
    """(B, T, H, W) bool hidden pixels -> (B, L) float patch mask, 1 where the hidden fraction > ``threshold``
    (``(t h w)`` token order). A sample whose every patch would be hidden keeps its least hidden one."""
    u, p, q = patch_size
    b, T, H, W = hidden.shape
    frac = hidden.reshape(b, T // u, u, H // p, p, W // q, q).float().mean((2, 4, 6)).flatten(1)  # (B, L)
    mask = frac > threshold
    full = mask.all(1)
    if full.any():
        least = frac.argmin(1)
        mask[full, least[full]] = False
    return mask.float()


# --------------------------------------------------------------------------- the imputer
class Imputer(nn.Module):
    """Gap filler around a :class:`PrithviMAE` (see the module docstring).

    ``forward(x, hidden)`` -> (B, C, T, H, W) normalized reflectance, equal to ``x`` where
    ``hidden`` is False. ``residual`` is "linear" or "none"; ``patch_threshold`` applies to
    "none" only.
    """

    #: window sizes (px) of the local residuals
    RESIDUAL_WINDOWS = (5, 17)
    #: the gains are ``GAIN_SCALE * residual_gain``: steps of the size of the network's make them move
    GAIN_SCALE = 20.0
    #: the distance inputs are days / DAY_SCALE, at most MAX_DAYS / DAY_SCALE (also where no clear date is)
    DAY_SCALE = 32.0
    MAX_DAYS = 128.0
    #: the gate is sigmoid(GATE_SCALE * residual_gate(features)); its bias starts at GATE_BIAS (gate ~0.88)
    GATE_SCALE = 10.0
    GATE_BIAS = 0.2

    def __init__(self, mae: PrithviMAE, residual: str = "linear", patch_threshold: float = 0.0):
        super().__init__()
        if residual not in RESIDUAL_MODES:
            raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
        self.mae = mae
        self.residual = residual
        self.patch_threshold = float(patch_threshold)
        cfg = mae.config
        if residual == "linear":
            # context per pixel: baseline (C), local residuals (C each), gap mask (1), distance before / after (2)
            n_res = len(self.RESIDUAL_WINDOWS)
            self.context_embed = PatchEmbed3D(cfg.in_chans * (1 + n_res) + 3, cfg.embed_dim, cfg.patch_size)
            self.residual_gain = nn.Parameter(torch.zeros(n_res * cfg.in_chans))  # x GAIN_SCALE
            nn.init.normal_(self.context_embed.proj.weight, std=0.02)
            nn.init.zeros_(self.context_embed.proj.bias)
            nn.init.zeros_(mae.decoder.decoder_pred.weight)  # the correction head: untrained = baseline
            nn.init.zeros_(mae.decoder.decoder_pred.bias)
            # gate inputs per pixel: local residuals (C each), |first - last residual| (C), distances (2), gap mask (1)
            self.residual_gate = nn.Conv3d(cfg.in_chans * (n_res + 1) + 3, n_res * cfg.in_chans, 1)
            nn.init.zeros_(self.residual_gate.weight)
            nn.init.constant_(self.residual_gate.bias, self.GATE_BIAS)

    def checkpoint_filter(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt an export from before :attr:`residual_gate` existed: its gate is fully open (exactly 1),
        so the loaded imputer fills as that model did (gain times local residual)."""
        if self.residual != "linear" or "residual_gate.weight" in state_dict or "residual_gain" not in state_dict:
            return state_dict
        out = dict(state_dict)
        gate = self.residual_gate  # (shapes only: the model may be on the meta device while it loads)
        out["residual_gate.weight"] = torch.zeros(gate.weight.shape)
        out["residual_gate.bias"] = torch.full(gate.bias.shape, 100.0 / self.GATE_SCALE)  # sigmoid(100) = 1
        return out

    @property
    def encoder(self) -> nn.Module:
        return self.mae.encoder

    @property
    def config(self):
        return self.mae.config

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.mae.patch_size

    @property
    def imputer_config(self) -> dict:
        return {"residual": self.residual, "patch_threshold": self.patch_threshold}

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, temporal_coords: torch.Tensor | None = None,
                location_coords: torch.Tensor | None = None) -> torch.Tensor:
        """``temporal_coords`` (B, T, 2) = (year, day of year) of each frame: the baseline and the distance
        inputs count days from them (NaN or None: equal spacing), and TL encoders embed them."""
        hidden = hidden.bool()
        days = day_numbers(temporal_coords, x.shape[0], x.shape[2], x.device)  # (B, T)
        temporal_coords = dated_coords(temporal_coords)
        if self.residual == "none":
            return self._reconstruct(x, hidden, temporal_coords, location_coords)
        base, dist = temporal_baseline(x, hidden, days=days)
        hid = hidden.unsqueeze(1)  # (B, 1, T, H, W)
        inp = torch.where(hid, base, x)
        dist = dist.clamp(max=self.MAX_DAYS) / self.DAY_SCALE  # (B, 2, T, H, W)
        local = [local_residual(x, base, hidden, k) for k in self.RESIDUAL_WINDOWS]  # each (B, C, T, H, W)
        context = torch.cat([base, *local, hid.to(x.dtype), dist], dim=1)  # (B, C(1+n)+3, T, H, W)
        enc = self.mae.encoder
        grid = enc.grid_of(x)
        tokens, pos = enc.embed(inp, temporal_coords, location_coords)  # (B, L, D)
        h = enc.with_cls(tokens + self.context_embed(context), pos)  # (B, 1+L, D)
        for blk in enc.blocks:
            h = blk(h)
        n = tokens.shape[1]
        ids = torch.arange(n, device=x.device).expand(x.shape[0], n)
        pred = self.mae.decoder(enc.norm(h), ids, grid, temporal_coords, location_coords)  # (B, L, u*p*q*C)
        correction = self.mae.unpatchify(pred, x.shape).to(x.dtype)
        gate_in = torch.cat([*local, (local[0] - local[-1]).abs(), dist, hid.to(x.dtype)], dim=1)
        gates = torch.sigmoid(self.GATE_SCALE * self.residual_gate(gate_in)).chunk(len(local), dim=1)  # (B, C, T, H, W)
        gains = self.GAIN_SCALE * self.residual_gain.view(len(local), -1)
        for gain, gate, r in zip(gains, gates, local):
            correction = correction + gain.view(1, -1, 1, 1, 1) * gate * r
        return torch.where(hid, base + correction, x)

    def _reconstruct(self, x, hidden, temporal_coords, location_coords) -> torch.Tensor:
        mask = hidden_patches(hidden, self.patch_size, self.patch_threshold)
        hid = hidden.unsqueeze(1)
        inp = torch.where(hid, torch.full_like(x, NORMALIZED_NODATA), x)
        _, pred, _ = self.mae(inp, temporal_coords=temporal_coords, location_coords=location_coords, mask=mask)
        return torch.where(hid, self.mae.unpatchify(pred, x.shape).to(x.dtype), x)


__all__ = ["FRAME_DAYS", "Imputer", "RESIDUAL_MODES", "dated_coords", "day_numbers", "fill_hidden", "hidden_patches",
           "local_residual", "temporal_baseline"]
