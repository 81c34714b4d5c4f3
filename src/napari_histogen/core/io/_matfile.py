"""Loading MATLAB label files with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

from ..errors import CorruptFileError, HistogenInputError


def load_mat(path: Path, *, keys_only: bool = False):
    """``scipy.io.loadmat`` of ``path`` (or, with ``keys_only``, the set of its variable
    names), refusing missing, v7.3 and damaged files clearly."""
    from scipy.io import loadmat, whosmat

    if not path.is_file():
        raise HistogenInputError(f"No file at {path}.")
    try:
        if keys_only:
            return {name for name, _, _ in whosmat(str(path))}
        return loadmat(str(path))
    except NotImplementedError:
        raise CorruptFileError(
            f"{path.name} is a MATLAB v7.3 (HDF5) file; re-save it as v7 (Lizard and CoNSeP ship v5 files)."
        ) from None
    except Exception as err:  # scipy raises many unrelated types for damaged files
        raise CorruptFileError(f"{path.name} is not a readable MATLAB file ({type(err).__name__}: {err}).") from None


def find_image(stem: str, folders) -> Path | None:
    """First ``<stem>.png/.jpg/.tif`` in ``folders`` (missing folders skipped)."""
    for folder in folders:
        for suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            candidate = Path(folder) / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None
