"""Looking at geofm's outputs: PNG quicklooks, the class palette and the local web map viewer.

``rgb_stretch`` / ``stretch_limits`` / ``save_panels`` make quicklooks and ``save_figure`` saves every
figure (:mod:`geofm.viz.quicklook`); ``palette`` holds the class colours; :func:`serve` starts ``geofm
view``'s map server (:mod:`geofm.viz.server`, needs ``geofm[view]``; ``layers``: the layer kinds read from
the files' tags; ``view_cli``: the command), e.g. in a notebook::

    srv = geofm.viz.serve(["outputs/demo"], port=0)  # a free port
    print(srv.url)
    srv.stop()
"""

from __future__ import annotations

from geofm.viz.palette import CLASS_PALETTE, class_color, class_colormap, hex_color
from geofm.viz.quicklook import RGB_OF_MODEL_BANDS, pyplot, rgb_stretch, save_figure, save_panels, stretch_limits


def serve(paths, port: int = 8765, host: str = "127.0.0.1", basemap: str | None = None, start: bool = True):
    """Serve ``paths`` (GeoTIFFs, HLS granules, folders) as layers of a web map; see :func:`geofm.viz.server.serve`."""
    from geofm.viz.server import serve as _serve

    return _serve(paths, port=port, host=host, basemap=basemap, start=start)


__all__ = ["CLASS_PALETTE", "RGB_OF_MODEL_BANDS", "class_color", "class_colormap", "hex_color", "pyplot",
           "rgb_stretch", "save_figure", "save_panels", "serve", "stretch_limits"]
