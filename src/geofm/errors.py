"""Exceptions raised by geofm. Messages name the file, what was expected and what was found."""

from __future__ import annotations


class GeofmError(Exception):
    """Base class of every error geofm raises on purpose."""


class DataError(GeofmError, ValueError):
    """Input data is not what was expected (bands, dtype, CRS, shape, values)."""


class CheckpointError(GeofmError, ValueError):
    """A checkpoint cannot be read or does not fit the model."""


class ConfigError(GeofmError, ValueError):
    """A configuration value is unknown, of the wrong type, or inconsistent."""


class OutputError(GeofmError, ValueError):
    """An output path cannot be written as asked (a folder where a file goes, read-only, exists already)."""


class RemoteError(GeofmError, OSError):
    """A remote service (STAC search, file server, credentials endpoint) failed or answered nonsense."""


class AuthError(RemoteError):
    """A remote service refused our credentials (HTTP 401/403) or none were found."""
