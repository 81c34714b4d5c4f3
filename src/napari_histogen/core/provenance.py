"""Provenance records: what made a file, so every output can be traced and reproduced."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform

import numpy as np

__all__ = ["array_sha256", "make_provenance", "json_default"]


def array_sha256(array) -> str:
    """sha256 of an array's dtype, shape and bytes (a mask's identity in provenance)."""
    arr = np.ascontiguousarray(array)
    digest = hashlib.sha256()
    digest.update(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def make_provenance(operation: str, **params) -> dict:
    """A provenance dict: operation, parameters, package version, host and UTC time."""
    from .. import __version__

    return {
        "software": "napari-histogen",
        "version": __version__,
        "operation": operation,
        "parameters": params,
        "python": platform.python_version(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def json_default(value):
    """JSON stand-ins for the non-JSON values provenance dicts commonly hold."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
