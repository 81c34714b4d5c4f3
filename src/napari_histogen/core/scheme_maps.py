"""Mappings between class schemes: convert a nuclei mask to another scheme, map foreign class names.

A mapping is found class by class, in this order: a user's override (``name -> name``), the
same name in the target scheme (case-insensitive), then a table of known equivalences between
the built-in schemes (:data:`KNOWN_EQUIVALENCES`). Classes left over are *unmapped*: a mask that
uses one cannot be converted until the user says where it goes.

The same tables suggest a class for a foreign class name (a QuPath export's ``Tumor`` read with
the CoNSeP scheme), so the dock can prefill its class-map table and the CLI can name what
``--class-map`` still needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import CorruptFileError, HistogenInputError, UnknownClassError
from .masks import NucleiMask, remap_classes
from .schemes import UNCLASSIFIED, ClassScheme, get_scheme

__all__ = [
    "KNOWN_EQUIVALENCES",
    "SchemeMapping",
    "map_schemes",
    "convert_nuclei_scheme",
    "convert_class_ids",
    "suggest_class",
    "suggest_class_map",
    "parse_class_map",
    "check_class_map",
]

#: Target name of "no class" in a class map (``Positive=unclassified``).
UNCLASSIFIED_NAME = "unclassified"

# Known equivalences between the built-in schemes, source class -> target class. To CoNSeP they
# follow the HoVer-Net merge that made CoNSeP's four classes (Graham et al. 2019: epithelial =
# normal + malignant/dysplastic epithelium; inflammatory = lymphocytes, plasma cells,
# neutrophils, eosinophils; spindle = fibroblasts, muscle, endothelium; other = the rest).
KNOWN_EQUIVALENCES: dict[tuple[str, str], dict[str, str]] = {
    ("nucls", "consep"): {
        "tumor_any": "epithelial",
        "nonTIL_stromal": "spindle",
        "sTIL": "inflammatory",
        "other_nucleus": "other",
    },
    ("lizard", "consep"): {
        "neutrophil": "inflammatory",
        "epithelial": "epithelial",
        "lymphocyte": "inflammatory",
        "plasma": "inflammatory",
        "eosinophil": "inflammatory",
        "connective": "spindle",
    },
    ("pannuke", "consep"): {
        "neoplastic": "epithelial",
        "inflammatory": "inflammatory",
        "connective": "spindle",
        "dead": "other",
        "epithelial": "epithelial",
    },
    # QuPath's Positive/Negative say how a nucleus stained, not what cell it is: no equivalent
    ("qupath", "consep"): {
        "Tumor": "epithelial",
        "Stroma": "spindle",
        "Immune cells": "inflammatory",
        "Necrosis": "other",
        "Other": "other",
    },
    ("lizard", "pannuke"): {
        "neutrophil": "inflammatory",
        "epithelial": "epithelial",
        "lymphocyte": "inflammatory",
        "plasma": "inflammatory",
        "eosinophil": "inflammatory",
        "connective": "connective",
    },
    ("nucls", "pannuke"): {
        "tumor_any": "neoplastic",
        "nonTIL_stromal": "connective",
        "sTIL": "inflammatory",
    },
    ("qupath", "pannuke"): {
        "Tumor": "neoplastic",
        "Stroma": "connective",
        "Immune cells": "inflammatory",
        "Necrosis": "dead",
    },
    ("consep", "qupath"): {
        "inflammatory": "Immune cells",
        "spindle": "Stroma",
        "other": "Other",
    },
    ("nucls", "qupath"): {
        "tumor_any": "Tumor",
        "nonTIL_stromal": "Stroma",
        "sTIL": "Immune cells",
        "other_nucleus": "Other",
    },
}


def _lookup(table: Mapping[str, str], name: str) -> str | None:
    lowered = name.strip().lower()
    for key, value in table.items():
        if key.lower() == lowered:
            return value
    return None


def _target_id(target: ClassScheme, name: str, *, what: str) -> int:
    """Class id of ``name`` in ``target`` (``unclassified`` -> 0), or a message naming the choices."""
    try:
        return target.id_of(name)
    except UnknownClassError:
        raise UnknownClassError(
            f"{what} maps to '{name}', which scheme '{target.name}' does not have "
            f"({', '.join(target.names)}, or {UNCLASSIFIED_NAME})."
        ) from None


@dataclass(frozen=True)
class SchemeMapping:
    """Where each class of ``source`` goes in ``target``.

    Attributes
    ----------
    source, target : ClassScheme
    ids : dict
        Source class id -> target class id (0 = unclassified) for every mapped class.
    unmapped : tuple of str
        Names of the source classes nothing maps (no override, no same name, no known equivalent).
    """

    source: ClassScheme
    target: ClassScheme
    ids: dict[int, int]
    unmapped: tuple[str, ...]

    def names(self) -> dict[str, str]:
        """Source class name -> target class name, for display and provenance."""
        return {self.source.name_of(s): self.target.name_of(t) for s, t in self.ids.items()}


def suggest_class(name: str, target, *, source=None) -> str | None:
    """A target class name for the class ``name``, or None when nothing is known.

    The same name (case-insensitive) first; then the known equivalences from ``source`` (a
    scheme or its name) to ``target``, or from any built-in scheme that has a class of that
    name when ``source`` is not given.
    """
    target = get_scheme(target)
    lowered = name.strip().lower()
    if lowered == UNCLASSIFIED_NAME:
        return UNCLASSIFIED_NAME
    for c in target.classes:
        if c.name.lower() == lowered:
            return c.name
    sources = [get_scheme(source).name] if source is not None else [s for s, t in KNOWN_EQUIVALENCES if t == target.name]
    for src in sources:
        hit = _lookup(KNOWN_EQUIVALENCES.get((src, target.name), {}), name)
        if hit is not None:
            return hit
    return None


def suggest_class_map(names, target, *, source=None) -> dict[str, str | None]:
    """``{name: suggested target class name or None}`` for every name (see :func:`suggest_class`)."""
    return {str(n): suggest_class(str(n), target, source=source) for n in names}


def map_schemes(source, target, overrides: Mapping[str, str] | None = None) -> SchemeMapping:
    """The class mapping from scheme ``source`` to ``target``.

    Parameters
    ----------
    source, target : ClassScheme or str
        Nuclei schemes (names, dicts or files as :func:`~napari_histogen.core.schemes.get_scheme`).
    overrides : mapping of str to str, optional
        Source class name -> target class name (or ``"unclassified"``), before any rule.

    Returns
    -------
    SchemeMapping

    Raises
    ------
    HistogenInputError
        An override naming a class that neither scheme has.
    """
    source, target = get_scheme(source), get_scheme(target)
    for scheme in (source, target):
        if scheme.kind != "nuclei":
            raise HistogenInputError(f"Scheme '{scheme.name}' is a {scheme.kind} scheme; class conversion is for "
                                     "nuclei schemes.")
    overrides = dict(overrides or {})
    for key in overrides:
        if key.strip().lower() not in {n.lower() for n in source.names}:
            raise UnknownClassError(f"The class map names '{key}', which scheme '{source.name}' does not have "
                                    f"({', '.join(source.names)}).")
    ids: dict[int, int] = {}
    unmapped = []
    for c in source.classes:
        wanted = _lookup(overrides, c.name)
        if wanted is None:
            wanted = suggest_class(c.name, target, source=source)
        if wanted is None:
            unmapped.append(c.name)
            continue
        ids[c.id] = _target_id(target, wanted, what=f"Class '{c.name}'")
    return SchemeMapping(source, target, ids, tuple(unmapped))


def convert_nuclei_scheme(nuclei: NucleiMask, target, overrides: Mapping[str, str] | None = None, *,
                          unclassified: str | None = None) -> NucleiMask:
    """The same nuclei with the classes of scheme ``target``.

    Parameters
    ----------
    nuclei : NucleiMask
    target : ClassScheme or str
    overrides : mapping of str to str, optional
        Source class name -> target class name, for classes without a known equivalent (or to
        change one); ``"unclassified"`` leaves those nuclei without a class.
    unclassified : str, optional
        Target class for the nuclei that have no class yet (NASDM needs a class for every
        nucleus); None keeps them unclassified.

    Returns
    -------
    NucleiMask
        New mask (the input is not modified): same instances and scale, classes mapped;
        ``metadata['scheme_conversion']`` records ``from``, ``to``, the ``mapping`` by name
        and, when given, ``unclassified``.

    Raises
    ------
    HistogenInputError
        A class used by the mask that nothing maps (the message lists them and how to map them).
    """
    if not isinstance(nuclei, NucleiMask):
        raise HistogenInputError(f"Expected a NucleiMask, not {type(nuclei).__name__}.")
    mapping = map_schemes(nuclei.scheme, target, overrides)
    _check_used(mapping, nuclei.classes.values())
    default = _unclassified_id(mapping.target, unclassified)
    # every used class is mapped, so remap_classes' default reaches only the unclassified nuclei
    out = remap_classes(nuclei, mapping.target, mapping.ids, default=default or None)
    out.metadata["scheme_conversion"] = {"from": nuclei.scheme.name, "to": mapping.target.name,
                                         "mapping": mapping.names(),
                                         **({"unclassified": unclassified} if default else {})}
    return out


def _unclassified_id(target: ClassScheme, name: str | None) -> int:
    """Class id for the unclassified nuclei (0: keep them unclassified)."""
    if name is None or not str(name).strip():
        return UNCLASSIFIED
    return _target_id(target, str(name), what="'unclassified'")


def _check_used(mapping: SchemeMapping, class_ids) -> None:
    """Raise when a class in ``class_ids`` has no target in ``mapping`` (naming how to map it)."""
    used = {int(c) for c in class_ids} - {UNCLASSIFIED}
    missing = [mapping.source.name_of(c) for c in sorted(used) if c not in mapping.ids]
    if missing:
        raise UnknownClassError(
            f"No '{mapping.target.name}' class is known for {', '.join(repr(m) for m in missing)} of scheme "
            f"'{mapping.source.name}'. Map them (e.g. --class-map \"{missing[0]}={mapping.target.names[0]}\", or "
            f"the dock's class table); '{UNCLASSIFIED_NAME}' leaves them without a class."
        )


def convert_class_ids(class_ids, source, target, overrides: Mapping[str, str] | None = None, *,
                      unclassified: str | None = None) -> np.ndarray:
    """Class ids of ``source`` (a point layout's classes) as class ids of ``target``.

    Returns a new int64 array; 0 stays 0 (or becomes ``unclassified``'s class). Raises like
    :func:`convert_nuclei_scheme` for a used class that nothing maps.
    """
    mapping = map_schemes(source, target, overrides)
    ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    _check_used(mapping, ids.tolist())
    lut = {**mapping.ids, UNCLASSIFIED: _unclassified_id(mapping.target, unclassified)}
    return np.array([lut[int(c)] for c in ids], dtype=np.int64)


def parse_class_map(spec) -> dict[str, str]:
    """A class map from ``"NAME=CLASS,NAME=CLASS"`` or a ``.json`` / ``.yaml`` file of ``{NAME: CLASS}``.

    Raises
    ------
    HistogenInputError
        An item without ``=``, an empty name, a file that is not a flat mapping of names.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = {str(k).strip(): str(v).strip() for k, v in spec.items()}
    else:
        text = str(spec)
        path = Path(text)
        if path.suffix.lower() in (".json", ".yaml", ".yml") and "=" not in text:
            items = _read_class_map_file(path)
        else:
            items = {}
            for part in text.split(","):
                if not part.strip():
                    continue
                if part.count("=") != 1:
                    raise HistogenInputError(f"Class map item {part.strip()!r} is not NAME=CLASS "
                                             "(e.g. --class-map \"Tumor=epithelial,Immune cells=inflammatory\").")
                name, target = (s.strip() for s in part.split("="))
                items[name] = target
    for name, target in items.items():
        if not name or not target:
            raise HistogenInputError(f"Class map item {name!r}={target!r} has an empty side; write NAME=CLASS.")
    return items


def _read_class_map_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise HistogenInputError(f"No class map file at {path}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise CorruptFileError(f"Class map {path.name} is not UTF-8 text.") from None
    except Exception as err:  # json and yaml raise different types
        raise CorruptFileError(f"Class map {path.name} cannot be parsed: {err}") from None
    if not isinstance(data, Mapping) or not all(isinstance(v, (str, int, float)) for v in data.values()):
        raise CorruptFileError(f"Class map {path.name} must be a flat mapping {{NAME: CLASS}}.")
    return {str(k).strip(): str(v).strip() for k, v in data.items()}


def check_class_map(class_map: Mapping[str, str], scheme) -> dict[str, int]:
    """``{name (lower case): class id of scheme}`` for a class map, every target checked.

    Raises
    ------
    UnknownClassError
        A target class the scheme does not have (the message lists its classes).
    """
    scheme = get_scheme(scheme)
    return {name.strip().lower(): _target_id(scheme, target, what=f"Class map entry '{name}'")
            for name, target in class_map.items()}
