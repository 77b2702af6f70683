"""Augmentations applied identically to an image and its per-pixel companions (label, masks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def dihedral(t: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two (H, W) axes by ``k`` quarter turns, then flip W if ``flip``."""
    t = torch.rot90(t, k, dims=(-2, -1)) if k % 4 else t
    return t.flip(-1) if flip else t


class RandomDihedral:
    """One of the 8 flips/rot90s of the square, drawn per sample, applied to every ``keys`` tensor.

    Tensors may have any leading axes ((C, T, H, W) image, (H, W) label, (T, H, W) masks);
    non-square tiles only get flips (and rot180) so that their shape is kept.
    """

    def __init__(self, keys: Sequence[str] = ("image", "mask")):
        self.keys = tuple(keys)

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        ref = sample[self.keys[0]]
        square = ref.shape[-1] == ref.shape[-2]
        turns = int(torch.randint(4, (), generator=generator))
        k = turns if square else 2 * (turns % 2)
        flip = bool(torch.randint(2, (), generator=generator))
        out = dict(sample)
        for key in self.keys:
            if key in out and isinstance(out[key], torch.Tensor):
                out[key] = dihedral(out[key], k, flip).contiguous()
        return out


__all__ = ["RandomDihedral", "dihedral"]
