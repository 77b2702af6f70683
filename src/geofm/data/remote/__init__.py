"""Remote services; all network code of geofm is here.

``stac`` (NASA CMR-STAC search, manifests), ``earthdata`` (Earthdata Login: token, username/password,
netrc), ``fetch`` (resumable downloads of a manifest's band files), ``stream`` (reading a manifest's
COGs in place over HTTPS with GDAL); ``search_cli`` and ``fetch_cli``: ``geofm search`` and ``geofm fetch``.
"""
