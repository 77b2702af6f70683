"""Whole-scene windowed inference to georeferenced GeoTIFF."""
