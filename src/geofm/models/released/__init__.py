"""Released fine-tuned Prithvi models, run as published (no mmcv, mmseg or TerraTorch needed).

* :mod:`~geofm.models.released.load` — find a release's layout, build its network, load its
  weights, carry its preprocessing (:func:`find_layout`, :func:`load_released`, :func:`save_released`);
* :mod:`~geofm.models.released.hls_foundation` — the Prithvi-EO-1.0 fine-tunes of hls-foundation-os;
* :mod:`~geofm.models.released.terratorch_prithvi` — the Prithvi-EO-2.0 fine-tunes of TerraTorch;
* :mod:`~geofm.models.released.config_files` — their mmseg ``.py`` and ``config.yaml`` files, read
  without running them.
"""

from geofm.models.released.load import LAYOUTS, find_layout, load_released, load_strict, save_released

__all__ = ["LAYOUTS", "find_layout", "load_released", "load_strict", "save_released"]
