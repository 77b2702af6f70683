"""Remote services: NASA CMR-STAC search, Earthdata Login, downloads. All network code of geofm is here."""
