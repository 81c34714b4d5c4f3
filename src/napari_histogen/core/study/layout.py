"""The files of a reader study and the manifest readers may see.

A study folder, and its key kept apart::

    STUDY/
      study.json               manifest: case ids, mode, criteria, each listed reader's case order
      cases/<id>.png           each case under a neutral random id, pixels only
      cases/<id>_mask.npy      image-with-mask studies: (2, H, W) int32, instances (1..N in random
                               order) and types
      answers/<reader>.jsonl   one append-only answer log per reader
    KEYDIR/<STUDY>-<study id>.key.json
                               the unblinding key (mode 0600): real or synthetic, group, source,
                               provenance; KEYDIR is ``$HISTOGEN_KEY_DIR`` or
                               ``~/.local/share/napari-histogen/study-keys``, never the folder
                               that holds the study

Scoring reads ``study.json``, ``cases/`` and the reader's own log only. The key lies
outside the study folder and its parent, so handing the folder (or the folder above it)
to readers never hands them the key.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from ..errors import CorruptFileError, HistogenInputError

__all__ = [
    "CRITERIA",
    "MANIFEST_NAME",
    "STUDY_FORMAT",
    "KEY_FORMAT",
    "SCORE_MIN",
    "SCORE_MAX",
    "answers_dir",
    "answer_log_path",
    "case_image_path",
    "case_mask_path",
    "cases_dir",
    "default_key_path",
    "find_key_path",
    "key_dir",
    "check_reader_id",
    "load_manifest",
    "write_json_atomic",
]

STUDY_FORMAT = "histogen-reader-study"
KEY_FORMAT = "histogen-reader-study-key"
FORMAT_VERSION = 1
MANIFEST_NAME = "study.json"
SCORE_MIN, SCORE_MAX = 1, 10

#: The four mask-consistency criteria (NASDM extension, Fig. 6): key, text shown to readers.
CRITERIA: tuple[tuple[str, str], ...] = (
    ("boundaries", "Nuclei boundaries match the mask"),
    ("types", "Each nucleus type is labelled right"),
    ("missing", "Nuclei painted in the mask are missing"),
    ("extra", "Nuclei present that are not in the mask"),
)
CRITERIA_KEYS = tuple(key for key, _ in CRITERIA)

_READER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


def cases_dir(study) -> Path:
    return Path(study) / "cases"


def answers_dir(study) -> Path:
    return Path(study) / "answers"


def key_dir() -> Path:
    """Where keys go by default: ``$HISTOGEN_KEY_DIR``, else ``$XDG_DATA_HOME`` (or
    ``~/.local/share``) ``/napari-histogen/study-keys``; never beside the study."""
    env = os.environ.get("HISTOGEN_KEY_DIR")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    base = Path(data).expanduser() if data else Path.home() / ".local" / "share"
    return base / "napari-histogen" / "study-keys"


def default_key_path(study, study_id: str) -> Path:
    """``KEYDIR/<STUDY>-<study id>.key.json`` (see :func:`key_dir`): outside the study and its parent."""
    return key_dir() / f"{Path(study).name}-{study_id}.key.json"


def legacy_key_path(study) -> Path:
    """``STUDY.key.json`` next to the study folder (studies made before the key folder)."""
    study = Path(study)
    return study.parent / f"{study.name}.key.json"


def find_key_path(study, study_id: str) -> Path:
    """The default key of a study: in :func:`key_dir` by study id, else the legacy place beside it."""
    folder = key_dir()
    found = sorted(folder.glob(f"*-{study_id}.key.json")) if folder.is_dir() and study_id else []
    if found:
        return found[0]
    legacy = legacy_key_path(study)
    return legacy if legacy.is_file() else default_key_path(study, study_id)


def case_image_path(study, case_id: str) -> Path:
    return cases_dir(study) / f"{case_id}.png"


def case_mask_path(study, case_id: str) -> Path:
    return cases_dir(study) / f"{case_id}_mask.npy"


def answer_log_path(study, reader: str) -> Path:
    return answers_dir(study) / f"{check_reader_id(reader)}.jsonl"


def check_reader_id(reader) -> str:
    """Return ``reader`` when it is a valid reader id.

    Raises
    ------
    HistogenInputError
        The id is empty, too long or holds characters other than letters, digits,
        ``-`` and ``_`` (it names the reader's answer file).
    """
    text = "" if reader is None else str(reader)
    if not _READER_RE.fullmatch(text):  # fullmatch: '$' alone would accept "r1\n"
        raise HistogenInputError(
            f"Reader id {text!r} is not usable: use 1-32 letters, digits, '-' or '_', starting with a "
            "letter or digit (e.g. 'reader1'); it names your answer file."
        )
    return text


def load_manifest(study) -> dict:
    """Read and check ``STUDY/study.json`` (the reader-visible manifest).

    Raises
    ------
    HistogenInputError
        The folder or its manifest is missing, or the manifest is not a study manifest.
    """
    study = Path(study)
    if not study.is_dir():
        raise HistogenInputError(f"No study folder at {study}. Create one with 'histogen study create'.")
    path = study / MANIFEST_NAME
    if not path.is_file():
        raise HistogenInputError(
            f"{study} has no {MANIFEST_NAME}: it is not a reader study folder. Open the folder that "
            "'histogen study create --out STUDY' made."
        )
    manifest = _read_json(path, "study manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != STUDY_FORMAT:
        raise CorruptFileError(f"{path} is not a reader study manifest (format is not '{STUDY_FORMAT}').")
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise HistogenInputError(f"{path} was written by a newer napari-histogen; update the plugin to open it.")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases or not all(isinstance(c, str) for c in cases):
        raise CorruptFileError(f"{path} lists no cases; recreate the study.")
    return manifest


def _read_json(path: Path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"The {what} {path} cannot be read as JSON ({err}).") from None


def write_json_atomic(path, data, *, mode: int = 0o644, exclusive: bool = False) -> Path:
    """Write JSON to ``path`` through a temporary file, fsync'd, then renamed into place.

    Parameters
    ----------
    mode : int
        File mode of the new file (``0o600`` for keys).
    exclusive : bool
        Refuse (``FileExistsError``) when ``path`` exists, atomically: the file is linked
        into place, never over another process's file.

    The temporary file is removed on every failure path (disk full, a kill between
    writes leaves at most a file named ``.NAME.<random>.tmp``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False, ensure_ascii=True) + "\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            view = memoryview(text.encode("utf-8"))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # fails if path exists: never replaces another writer's file
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder) -> None:
    """fsync a folder so a new or renamed entry in it survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(str(folder), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
