"""The default colours of class maps: one palette for quicklooks, GeoTIFF colour tables and the viewer.

Class ``i`` takes ``CLASS_PALETTE[i % len(CLASS_PALETTE)]``. The first colours suit the
tasks geofm fine-tunes: 0 (land / background) sand, 1 (water, flood, burn scar) blue, then
yellow, green, brown, grey, navy, pink, light green, beige, white, red, purple, orange, teal,
olive. A class map's own GDAL colour table, when it has one, wins over this palette.
"""

from __future__ import annotations

import numpy as np

#: (16, 3) uint8 RGB colours of class indices 0..15 (the sequence repeats for higher indices).
CLASS_PALETTE = np.array([
    [191, 173, 115], [26, 89, 217], [242, 191, 26], [51, 153, 51], [140, 64, 26], [140, 140, 140],
    [13, 51, 140], [217, 128, 178], [153, 217, 89], [217, 217, 166], [242, 242, 242], [178, 51, 51],
    [102, 76, 166], [242, 140, 38], [38, 166, 166], [128, 128, 38]], dtype=np.uint8)


def class_color(index: int) -> tuple[int, int, int]:
    """RGB (0..255) of class ``index`` in the default palette."""
    r, g, b = CLASS_PALETTE[int(index) % len(CLASS_PALETTE)]
    return int(r), int(g), int(b)


def class_colormap(num_classes: int) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table ``{index: (r, g, b, 255)}`` of classes ``0..num_classes - 1``."""
    return {i: (*class_color(i), 255) for i in range(num_classes)}


def hex_color(rgb) -> str:
    """``(r, g, b[, a])`` 0..255 -> ``"#rrggbb"``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in list(rgb)[:3]))


__all__ = ["CLASS_PALETTE", "class_color", "class_colormap", "hex_color"]
