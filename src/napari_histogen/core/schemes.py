"""Class schemes: the named lists of (id, name, colour) that nuclei and tissue masks use.

Built-in schemes follow the datasets pathologists know (Lizard/CoNIC, CoNSeP, PanNuke,
NuCLS), QuPath's default classes, and the tissue classes of IHC appearance transfer.
User-defined schemes are small JSON or YAML files; those saved in the scheme folder
(``$HISTOGEN_HOME/schemes``) are listed next to the built-in ones.

Class id 0 is never a class: it is background in every mask. In a nuclei mask an instance
whose class is not known yet has class 0, shown as :data:`UNCLASSIFIED_COLOR`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from .errors import CorruptFileError, HistogenInputError, UnknownClassError

__all__ = [
    "ClassInfo",
    "ClassScheme",
    "BUILTIN_SCHEMES",
    "UNCLASSIFIED",
    "UNCLASSIFIED_COLOR",
    "get_scheme",
    "list_schemes",
    "load_scheme",
    "save_scheme",
    "histogen_home",
    "scheme_dir",
]

#: Class id of a nucleus whose class is not known (imported without types, painted by hand).
UNCLASSIFIED = 0
UNCLASSIFIED_COLOR = (160, 160, 160)


@dataclass(frozen=True)
class ClassInfo:
    """One class of a scheme.

    Parameters
    ----------
    id : int
        Positive class id as stored in type maps and class tables.
    name : str
        Name shown to users and written to files (GeoJSON ``classification.name``).
    color : tuple of int
        RGB colour 0..255, the same in every view and export.
    area_um2 : float
        Typical nucleus area in µm², used when nuclei are grown from points.
    aspect : float
        Typical ratio of long to short axis (1 = round), likewise.
    """

    id: int
    name: str
    color: tuple[int, int, int]
    area_um2: float = 15.0
    aspect: float = 1.3

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.color)


@dataclass(frozen=True)
class ClassScheme:
    """A named, ordered set of classes.

    Parameters
    ----------
    name : str
        Short identifier (``lizard``, ``consep``, ...).
    classes : tuple of ClassInfo
        The classes, ids unique and positive.
    kind : {'nuclei', 'tissue'}
        Whether the scheme types nuclei (instances) or tissue regions (semantic).
    description : str
        One line on where the scheme comes from.
    """

    name: str
    classes: tuple[ClassInfo, ...]
    kind: str = "nuclei"
    description: str = ""
    _by_id: Mapping[int, ClassInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in ("nuclei", "tissue"):
            raise HistogenInputError(f"Scheme '{self.name}': kind must be 'nuclei' or 'tissue', not {self.kind!r}.")
        if not self.classes:
            raise HistogenInputError(f"Scheme '{self.name}' has no classes.")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise HistogenInputError(f"Scheme '{self.name}' repeats class ids: {ids}.")
        if min(ids) <= 0:
            raise HistogenInputError(f"Scheme '{self.name}': class ids must be >= 1 (0 is background).")
        object.__setattr__(self, "_by_id", {c.id: c for c in self.classes})

    # -- look-ups -------------------------------------------------------------------
    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def __contains__(self, class_id) -> bool:
        return int(class_id) in self._by_id

    def __getitem__(self, class_id) -> ClassInfo:
        try:
            return self._by_id[int(class_id)]
        except KeyError:
            raise UnknownClassError(
                f"Class id {class_id} is not in scheme '{self.name}' (ids {list(self.ids)})."
            ) from None

    def color(self, class_id) -> tuple[int, int, int]:
        """RGB colour of ``class_id``; :data:`UNCLASSIFIED_COLOR` for 0."""
        if int(class_id) == UNCLASSIFIED:
            return UNCLASSIFIED_COLOR
        return self[class_id].color

    def name_of(self, class_id) -> str:
        """Name of ``class_id``; ``'unclassified'`` for 0."""
        if int(class_id) == UNCLASSIFIED:
            return "unclassified"
        return self[class_id].name

    def id_of(self, name: str) -> int:
        """Class id for a class ``name`` (case-insensitive)."""
        lowered = name.strip().lower()
        if lowered in ("unclassified", ""):
            return UNCLASSIFIED
        for c in self.classes:
            if c.name.lower() == lowered:
                return c.id
        raise UnknownClassError(f"Class '{name}' is not in scheme '{self.name}' ({', '.join(self.names)}).")

    def check_ids(self, class_ids: Iterable[int], *, what: str = "mask", allow_unclassified: bool = True) -> None:
        """Raise :class:`UnknownClassError` if any id is not a class of this scheme."""
        allowed = set(self.ids) | ({UNCLASSIFIED} if allow_unclassified else set())
        unknown = sorted({int(i) for i in class_ids} - allowed)
        if unknown:
            raise UnknownClassError(
                f"The {what} uses class ids {unknown} that scheme '{self.name}' does not define "
                f"(it has {', '.join(f'{c.id}={c.name}' for c in self.classes)}). "
                "Choose the scheme the data was labelled with, or define a scheme with these classes."
            )

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "classes": [
                {"id": c.id, "name": c.name, "color": c.hex, "area_um2": c.area_um2, "aspect": c.aspect}
                for c in self.classes
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping, *, source: str = "scheme") -> "ClassScheme":
        try:
            classes = tuple(
                ClassInfo(
                    id=int(c["id"]),
                    name=str(c["name"]),
                    color=_parse_color(c.get("color", "#808080")),
                    area_um2=float(c.get("area_um2", 15.0)),
                    aspect=float(c.get("aspect", 1.3)),
                )
                for c in data["classes"]
            )
            return cls(
                name=str(data["name"]),
                classes=classes,
                kind=str(data.get("kind", "nuclei")),
                description=str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, HistogenInputError):
                raise
            raise CorruptFileError(
                f"{source} is not a valid class scheme ({err!r}). Expected "
                '{"name": ..., "kind": "nuclei"|"tissue", "classes": [{"id": 1, "name": ..., "color": "#rrggbb"}]}.'
            ) from None


def _parse_color(value) -> tuple[int, int, int]:
    if isinstance(value, str):
        text = value.strip().lstrip("#")
        if len(text) != 6:
            raise ValueError(f"colour {value!r} is not #rrggbb")
        return tuple(int(text[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    rgb = tuple(int(v) for v in value)
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"colour {value!r} is not three values 0..255")
    return rgb  # type: ignore[return-value]


def _scheme(name, kind, description, rows) -> ClassScheme:
    return ClassScheme(
        name=name,
        kind=kind,
        description=description,
        classes=tuple(ClassInfo(i, n, c, a, r) for i, n, c, a, r in rows),
    )


# Typical areas are µm² medians measured on CoNSeP and NuCLS instance maps (0.25 µm/px),
# rounded; aspect ratios are textbook shapes (round lymphocytes, elongated spindle cells).
BUILTIN_SCHEMES: dict[str, ClassScheme] = {
    s.name: s
    for s in (
        _scheme(
            "lizard",
            "nuclei",
            "Lizard / CoNIC colon nuclei (Graham et al. 2021)",
            [
                (1, "neutrophil", (255, 140, 0), 12.0, 1.3),
                (2, "epithelial", (220, 20, 60), 22.0, 1.4),
                (3, "lymphocyte", (30, 110, 255), 11.0, 1.1),
                (4, "plasma", (170, 60, 220), 14.0, 1.3),
                (5, "eosinophil", (255, 215, 0), 14.0, 1.3),
                (6, "connective", (0, 190, 80), 12.0, 2.5),
            ],
        ),
        _scheme(
            "consep",
            "nuclei",
            "CoNSeP 4-class merge of HoVer-Net (Graham et al. 2019)",
            [
                (1, "other", (255, 215, 0), 8.0, 1.3),
                (2, "inflammatory", (30, 110, 255), 11.0, 1.1),
                (3, "epithelial", (220, 20, 60), 22.0, 1.4),
                (4, "spindle", (0, 190, 80), 12.0, 2.5),
            ],
        ),
        _scheme(
            "pannuke",
            "nuclei",
            "PanNuke 5 classes (Gamper et al. 2020); ids are the mask channel order + 1",
            [
                (1, "neoplastic", (220, 20, 60), 24.0, 1.4),
                (2, "inflammatory", (30, 110, 255), 11.0, 1.1),
                (3, "connective", (0, 190, 80), 12.0, 2.5),
                (4, "dead", (120, 120, 40), 8.0, 1.2),
                (5, "epithelial", (255, 140, 0), 20.0, 1.4),
            ],
        ),
        _scheme(
            "nucls",
            "nuclei",
            "NuCLS point classes of the CC0 sample (Amgad et al. 2022); ids are the file's class + 1",
            [
                (1, "tumor_any", (220, 20, 60), 24.0, 1.4),
                (2, "nonTIL_stromal", (0, 190, 80), 12.0, 2.5),
                (3, "sTIL", (30, 110, 255), 11.0, 1.1),
                (4, "other_nucleus", (255, 215, 0), 12.0, 1.3),
            ],
        ),
        # QuPath's standard classes and colours: PathClass.StandardPathClasses and the
        # COLOR_POSITIVE / COLOR_NEGATIVE constants in qupath-core's
        # qupath/lib/objects/classes/PathClass.java (QuPath 0.4+). "Region*" and "Ignore*"
        # are left out: QuPath uses them for areas (regions to analyse, background to
        # skip), never for a cell or nucleus; the intensity classes 1+/2+/3+ likewise.
        _scheme(
            "qupath",
            "nuclei",
            "QuPath's default classes and colours (cell detections exported as GeoJSON)",
            [
                (1, "Tumor", (200, 0, 0), 24.0, 1.4),
                (2, "Stroma", (150, 200, 150), 12.0, 2.5),
                (3, "Immune cells", (160, 90, 160), 11.0, 1.1),
                (4, "Necrosis", (50, 50, 50), 8.0, 1.2),
                (5, "Other", (255, 200, 0), 12.0, 1.3),
                (6, "Positive", (200, 50, 50), 15.0, 1.3),
                (7, "Negative", (90, 90, 180), 15.0, 1.3),
            ],
        ),
        _scheme(
            "tissue",
            "tissue",
            "Tissue compartments for IHC appearance transfer",
            [
                (1, "epithelium", (230, 90, 150), 0.0, 1.0),
                (2, "stroma", (80, 200, 200), 0.0, 1.0),
            ],
        ),
    )
}


def histogen_home() -> Path:
    """The product's folder for user files (schemes, model cache).

    ``$HISTOGEN_HOME`` when set, else ``~/.cache/napari-histogen``.
    """
    env = os.environ.get("HISTOGEN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "napari-histogen"


_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def scheme_dir() -> Path:
    """Folder whose ``*.json`` / ``*.yaml`` schemes are listed with the built-in ones."""
    return histogen_home() / "schemes"


def load_scheme(path) -> ClassScheme:
    """Read a user-defined scheme from a ``.json``, ``.yaml`` or ``.yml`` file."""
    path = Path(path)
    if not path.is_file():
        raise HistogenInputError(f"No scheme file at {path}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise CorruptFileError(f"Scheme file {path.name} is not UTF-8 text ({err.reason} at byte {err.start}); "
                               "save it as UTF-8.") from None
    except OSError as err:
        raise HistogenInputError(f"Scheme file {path.name} cannot be read ({err.strerror or err}).") from None
    if "\x00" in text:
        raise CorruptFileError(f"Scheme file {path.name} holds zero bytes; it is not a scheme file.")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # json and yaml raise different types
        raise CorruptFileError(f"Scheme file {path.name} cannot be parsed: {err}") from None
    if not isinstance(data, Mapping):
        raise CorruptFileError(f"Scheme file {path.name} does not hold a mapping.")
    return ClassScheme.from_dict(data, source=f"Scheme file {path.name}")


def save_scheme(scheme: ClassScheme, path=None) -> Path:
    """Write ``scheme`` as JSON or YAML (by suffix); default: ``scheme_dir()/<name>.json``.

    Raises
    ------
    HistogenInputError
        Without ``path``, a scheme name that is not a plain file name (it would write
        outside the schemes folder: ``../../x``); a place that cannot be written.
    """
    if path is None:
        if not _FILE_NAME_RE.fullmatch(str(scheme.name)) or ".." in str(scheme.name):
            raise HistogenInputError(
                f"Scheme name {scheme.name!r} cannot name a file in the schemes folder: use 1-64 letters, digits, "
                "'-', '_' or '.', starting with a letter or digit."
            )
        path = scheme_dir() / f"{scheme.name}.json"
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(scheme.to_dict(), sort_keys=False), encoding="utf-8")
        else:
            path.write_text(json.dumps(scheme.to_dict(), indent=2), encoding="utf-8")
    except OSError as err:
        raise HistogenInputError(f"Cannot write the scheme to {path} ({err.strerror or err}).") from None
    return path


def list_schemes(kind: str | None = None) -> dict[str, ClassScheme]:
    """Built-in schemes plus readable user schemes in :func:`scheme_dir`, by name.

    A user scheme never replaces a built-in one of the same name (the built-in names
    must keep meaning what the datasets mean); unreadable files are skipped.
    """
    schemes = dict(BUILTIN_SCHEMES)
    folder = scheme_dir()
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".json", ".yaml", ".yml"):
                try:
                    scheme = load_scheme(path)
                except HistogenInputError:
                    continue
                schemes.setdefault(scheme.name, scheme)
    if kind is not None:
        schemes = {k: v for k, v in schemes.items() if v.kind == kind}
    return schemes


def get_scheme(scheme) -> ClassScheme:
    """Return a :class:`ClassScheme` from a scheme, a scheme name, a dict or a file path."""
    if isinstance(scheme, ClassScheme):
        return scheme
    if isinstance(scheme, Mapping):
        return ClassScheme.from_dict(scheme)
    text = str(scheme)
    known = list_schemes()
    if text in known:
        return known[text]
    if Path(text).suffix.lower() in (".json", ".yaml", ".yml"):
        return load_scheme(text)
    raise HistogenInputError(
        f"Unknown class scheme '{text}'. Known: {', '.join(known)}; or give a .json/.yaml scheme file."
    )
