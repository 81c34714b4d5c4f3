"""The docks' remembered settings: one small JSON file in the histogen home folder.

``<histogen home>/dock_settings.json`` (``$HISTOGEN_HOME``, see
:func:`~napari_histogen.core.schemes.histogen_home`) holds one object per dock, e.g.
``{"nasdm": {"model": "default", "steps": 20, ...}}``. Values are plain JSON (numbers,
strings, booleans). A missing, unreadable or malformed file reads as "nothing remembered":
settings are a convenience, never a reason for a dock to fail to open.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from .schemes import histogen_home

__all__ = ["settings_path", "load_dock_settings", "save_dock_settings", "clear_dock_settings"]

log = logging.getLogger(__name__)

SETTINGS_FILE = "dock_settings.json"
_PLAIN = (bool, int, float, str, type(None))


def settings_path() -> Path:
    """Where the docks' settings live (the file may not exist yet)."""
    return histogen_home() / SETTINGS_FILE


def _read_all() -> dict:
    path = settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("Ignoring unreadable dock settings %s: %s", path, err)
        return {}
    return data if isinstance(data, dict) else {}


def _write_all(data: dict) -> None:
    """Replace the file in one step (a crash leaves the old file or the new one, never half)."""
    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".dock_settings.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_dock_settings(dock: str) -> dict:
    """The settings remembered for ``dock`` (empty when none): only plain JSON values."""
    values = _read_all().get(dock)
    if not isinstance(values, dict):
        return {}
    return {str(k): v for k, v in values.items() if isinstance(v, _PLAIN)}


def save_dock_settings(dock: str, values: dict) -> None:
    """Remember ``values`` for ``dock`` (other docks' settings are kept); not-plain values are refused.

    Raises
    ------
    TypeError
        If a value is not a bool, number, string or None (a programming error, not user input).
    """
    bad = [k for k, v in values.items() if not isinstance(v, _PLAIN)]
    if bad:
        raise TypeError(f"dock settings must be plain JSON values; not: {', '.join(map(str, bad))}")
    data = _read_all()
    data[dock] = dict(values)
    try:
        _write_all(data)
    except OSError as err:  # a read-only home must not break a run
        log.warning("Could not save dock settings to %s: %s", settings_path(), err)


def clear_dock_settings(dock: str) -> None:
    """Forget what was remembered for ``dock`` (its defaults apply from the next start)."""
    data = _read_all()
    if data.pop(dock, None) is not None:
        try:
            _write_all(data)
        except OSError as err:
            log.warning("Could not update dock settings %s: %s", settings_path(), err)
