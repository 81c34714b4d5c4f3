"""Create a blinded reader study from a folder of real and a folder of synthetic images.

Every case is re-encoded as a metadata-free PNG under a neutral random id; what it was
(real or synthetic, group, file name, engine/model/seed) goes into the key only.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, HistogenInputError
from ..images import IMAGE_SUFFIXES
from ..io.pairs import read_image_mask_pair, read_rgb_image
from ..masks import as_label_image, check_same_shape, classes_from_type_map, nuclei_from_type_map, type_map_from_nuclei
from ..provenance import json_default
from ..schemes import get_scheme
from .layout import (
    CRITERIA,
    FORMAT_VERSION,
    KEY_FORMAT,
    MANIFEST_NAME,
    SCORE_MAX,
    SCORE_MIN,
    STUDY_FORMAT,
    answers_dir,
    case_image_path,
    case_mask_path,
    cases_dir,
    check_reader_id,
    default_key_path,
    fsync_dir,
    write_json_atomic,
)

__all__ = ["StudyCreated", "create_study", "IMAGE_SUFFIXES", "DEFAULT_GROUP"]

#: Group of every case when no ``per_class_from`` is given.
DEFAULT_GROUP = "all"
#: Image files whose stem ends like this are masks or overlays, not cases.
_NOT_CASE_SUFFIXES = ("_mask", "_overlay", "_nuclei", "_types", "_labels", "_inst", "_type", "_side_by_side")
#: When several image files share a base name (``x.png`` and ``x.ome.tif`` from a synthesis run), one is the case.
_PREFERRED = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".ome.tif", ".ome.tiff")
_MASK_NAMES_NEXT_TO_IMAGE = ("{stem}_mask.npz", "{stem}_mask.tif", "{stem}_mask.tiff", "{stem}_mask.png",
                             "{stem}_mask.npy", "{stem}.npz", "{stem}.npy")
_MASK_NAMES_IN_MASK_DIR = _MASK_NAMES_NEXT_TO_IMAGE + ("{stem}.png", "{stem}.tif", "{stem}.tiff")
_SIDECARS = ("{stem}.json", "{stem}_provenance.json", "{stem}.provenance.json")
#: A fixed modification time for every case file, so the write order reveals nothing.
_NEUTRAL_MTIME = 946684800  # 2000-01-01T00:00:00Z
BALANCE_CHOICES = ("overall", "group", "none")
CROP_CHOICES = ("common", "none")


@dataclass(frozen=True)
class StudyCreated:
    """What :func:`create_study` made.

    Attributes
    ----------
    study : Path
        The study folder.
    key_path : Path
        The unblinding key (keep it away from the readers).
    n_real, n_synthetic : int
        Cases of each kind in the study.
    mode : str
        ``'image'`` or ``'image+mask'``.
    groups : dict
        Group -> (n real, n synthetic).
    excluded : int
        Images left out to balance the counts.
    shape : tuple or None
        Common case size (H, W) when cases were cropped to one size.
    notes : list of str
        Things the study owner should know.
    """

    study: Path
    key_path: Path
    n_real: int
    n_synthetic: int
    mode: str
    groups: dict
    excluded: int
    shape: tuple | None
    notes: list = field(default_factory=list)

    @property
    def n_cases(self) -> int:
        return self.n_real + self.n_synthetic

    def describe(self) -> str:
        """A few lines for the CLI and the dock."""
        lines = [f"Study {self.study}: {self.n_cases} cases ({self.n_real} real, {self.n_synthetic} synthetic), "
                 f"mode {self.mode}" + (f", {self.shape[0]}x{self.shape[1]} px" if self.shape else "") + "."]
        if len(self.groups) > 1 or DEFAULT_GROUP not in self.groups:
            lines.append("Groups: " + ", ".join(f"{g} ({r} real, {s} synthetic)" for g, (r, s) in self.groups.items()))
        if self.excluded:
            lines.append(f"{self.excluded} images left out to balance real and synthetic counts.")
        lines += self.notes
        lines.append(f"Key (keep it from the readers): {self.key_path}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Candidate:
    path: Path
    truth: str  # 'real' | 'synthetic'
    source: str  # 'real/sub/x.png', relative to the given folder
    group: str = DEFAULT_GROUP
    pair: str | None = None
    mask_path: Path | None = None


def create_study(real, synthetic, out, *, masks=None, per_class_from=None, readers=None, balance="overall",
                 max_per_kind=None, crop="common", scheme=None, seed=None, key_path=None, title=None) -> StudyCreated:
    """Make a blinded reader study folder.

    Parameters
    ----------
    real, synthetic : str or Path
        Folders of real and of synthetic images (PNG, JPEG, TIFF). Files whose stem ends
        in ``_mask``, ``_overlay``, ``_nuclei``, ``_types``, ``_labels`` are skipped.
    out : str or Path
        New study folder (must not exist, or be empty).
    masks : str, Path or list of them, optional
        Folders holding the nuclei mask of each image: the study becomes an
        image-with-mask study, scored also on the four mask-consistency criteria.
        For an image ``x.png`` the first of ``x_mask.{npz,tif,png,npy}``, ``x.npz``,
        ``x.npy`` (and in a mask folder also ``x.png``/``x.tif``) is used, looked for next
        to the image, then in each mask folder (and its ``<group>/`` subfolder).
        ``.npz``/``.tif`` masks are read as by :func:`~napari_histogen.core.io.pairs.read_image_mask_pair`;
        a 2-D ``.png``/``.npy`` is a type map of ``scheme``; a ``(2, H, W)`` ``.npy`` holds
        instances and types.
    per_class_from : str or Path, optional
        Where each image's class or group comes from: ``'subfolders'`` (images lie in
        ``real/<group>/`` and ``synthetic/<group>/``), or a CSV file with columns
        ``file`` and ``group`` (or ``class``), ``file`` being a file name, stem or path
        relative to its folder. None: one group, ``'all'``.
    readers : list of str, optional
        Reader ids; each gets a recorded seed for its case order, and only they may
        score. None: any valid reader id may score, with a seed derived from the
        study id and recorded in the reader's log.
    balance : {'overall', 'group', 'none'}
        Leave out randomly chosen images of the larger kind so real and synthetic
        counts are equal, overall or within each group (paired images are kept first).
    max_per_kind : int, optional
        At most this many real and this many synthetic cases (per group when
        ``balance='group'``).
    crop : {'common', 'none'}
        ``'common'``: centre-crop every case (and mask) to the smallest height and width
        among them, so case size cannot tell real from synthetic. ``'none'``: keep sizes
        (a note warns when the sizes differ between kinds).
    scheme : str, optional
        Class scheme of type-map masks (``.png``/``.npy``); default: the scheme the masks
        record, else ``'consep'``.
    seed : int, optional
        Makes case ids, selection and reader seeds reproducible. It is written to the
        key only: with it and the inputs, anyone could recompute which id is which.
    key_path : str or Path, optional
        Where to write the key, outside the study folder; default ``STUDY.key.json`` next
        to it. Keep it from the readers: it is all that unblinds the study.
    title : str, optional
        Study title shown to readers; it must not reveal provenance.

    Returns
    -------
    StudyCreated

    Raises
    ------
    HistogenInputError
        Missing or empty folders, no images of one kind, unreadable images or masks,
        images without a mask, groups missing from the CSV, an existing study at ``out``,
        an existing key file, a key path inside the study folder.
    """
    out = Path(out)
    key_path, reader_ids = _check_options(out, key_path, balance, crop, max_per_kind, readers)
    mask_dirs = _as_dirs(masks, "mask folder")
    subfolders = per_class_from is not None and str(per_class_from) == "subfolders"

    rng = np.random.default_rng(seed)
    cands = _list_candidates(real, "real", subfolders) + _list_candidates(synthetic, "synthetic", subfolders)
    if per_class_from is not None and not subfolders:
        cands = _groups_from_csv(cands, per_class_from)
    cands = _pair_up(cands)
    if mask_dirs is not None:
        cands = [replace(c, mask_path=_find_mask(c, mask_dirs)) for c in cands]
    chosen, excluded = _balance(cands, balance, max_per_kind, rng)
    shapes, mask_scheme = _check_cases(chosen, scheme)
    target, notes = _case_size(chosen, shapes, crop)

    # neutral ids: random, unrelated to kind, group or input order
    ids = _neutral_ids(len(chosen) + 1, rng if seed is not None else None)
    study_id, case_ids = ids[0], ids[1:]
    order = rng.permutation(len(chosen))
    assigned = {case_ids[i]: chosen[j] for i, j in enumerate(order)}
    reader_seeds = {r: int(rng.integers(0, 2**31 - 1)) if seed is not None else secrets.randbits(31)
                    for r in reader_ids}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest = _manifest(study_id, title, mask_dirs is not None, mask_scheme, sorted(assigned), reader_seeds)

    tmp = out.parent / f".{out.name}.creating-{secrets.token_hex(4)}"
    try:
        key_cases = _write_cases(tmp, assigned, target, scheme)
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        key = {
            "format": KEY_FORMAT,
            "version": FORMAT_VERSION,
            "study_id": study_id,
            "created_utc": now,
            "options": {
                "real": str(Path(real).resolve()), "synthetic": str(Path(synthetic).resolve()),
                "masks": [str(d.resolve()) for d in mask_dirs] if mask_dirs is not None else None,
                "per_class_from": None if per_class_from is None else str(per_class_from),
                "balance": balance, "max_per_kind": max_per_kind, "crop": crop, "shape": target, "seed": seed,
            },
            "cases": key_cases,
            "excluded": [{"truth": c.truth, "group": c.group, "source": c.source, "reason": "balance"}
                         for c in excluded],
        }
        _publish(tmp, out, key_path, key)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    groups: dict[str, tuple[int, int]] = {}
    for cand in chosen:
        real_n, syn_n = groups.get(cand.group, (0, 0))
        groups[cand.group] = (real_n + (cand.truth == "real"), syn_n + (cand.truth == "synthetic"))
    return StudyCreated(
        study=out, key_path=key_path,
        n_real=sum(c.truth == "real" for c in chosen), n_synthetic=sum(c.truth == "synthetic" for c in chosen),
        mode=manifest["mode"], groups=dict(sorted(groups.items())), excluded=len(excluded),
        shape=tuple(target) if target else None, notes=notes,
    )


# -- the steps of create_study ---------------------------------------------------------------
def _check_options(out: Path, key_path, balance, crop, max_per_kind, readers) -> tuple[Path, list[str]]:
    """``(key path, reader ids)`` after checking the options and that nothing would be overwritten."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HistogenInputError(f"{out} already exists and is not empty; choose a new folder for the study.")
    key_path = Path(key_path) if key_path is not None else default_key_path(out)
    if key_path.resolve().is_relative_to(out.resolve()):
        raise HistogenInputError(f"The key must lie outside the study folder readers receive, not at {key_path}; "
                                 "choose another key path.")
    if key_path.exists():
        raise HistogenInputError(f"A key already exists at {key_path} (another study's?); move it away or choose "
                                 "another key path or study name.")
    if balance not in BALANCE_CHOICES:
        raise HistogenInputError(f"balance must be one of {', '.join(BALANCE_CHOICES)}, not {balance!r}.")
    if crop not in CROP_CHOICES:
        raise HistogenInputError(f"crop must be one of {', '.join(CROP_CHOICES)}, not {crop!r}.")
    if max_per_kind is not None and int(max_per_kind) < 1:
        raise HistogenInputError(f"max_per_kind must be at least 1, not {max_per_kind}.")
    reader_ids = [check_reader_id(r) for r in (readers or [])]
    if len(set(reader_ids)) != len(reader_ids):
        raise HistogenInputError("Reader ids repeat; give each reader once.")
    return key_path, reader_ids


def _check_cases(chosen: list[_Candidate], scheme) -> tuple[dict, str | None]:
    """Every chosen image (and mask) decodes: ``(size of each case by source, the masks' scheme)``."""
    shapes = {}
    mask_scheme = None
    for cand in chosen:
        image = read_rgb_image(cand.path, name=f"{cand.truth} image")
        shapes[cand.source] = image.shape[:2]
        if cand.mask_path is not None:
            _, _, name = _read_mask(cand, image.shape[:2], scheme)
            if mask_scheme is None:
                mask_scheme = name
            elif name != mask_scheme:
                raise HistogenInputError(
                    f"Masks use different class schemes ({mask_scheme} and {name}, e.g. {cand.mask_path.name}); "
                    "convert them to one scheme or pass scheme=... for type-map masks."
                )
    return shapes, mask_scheme


def _case_size(chosen: list[_Candidate], shapes: dict, crop: str) -> tuple[tuple[int, int] | None, list[str]]:
    """``(common case size or None, notes)``: the smallest height and width with ``crop='common'``."""
    notes = []
    target = None
    if crop == "common":
        target = (min(s[0] for s in shapes.values()), min(s[1] for s in shapes.values()))
        if any(s != target for s in shapes.values()):
            notes.append(f"Cases were centre-cropped to a common {target[0]}x{target[1]} px.")
    else:
        by_kind = {t: {shapes[c.source] for c in chosen if c.truth == t} for t in ("real", "synthetic")}
        if by_kind["real"] != by_kind["synthetic"]:
            notes.append("Warning: real and synthetic cases differ in size, which can reveal them; "
                         "use crop='common'.")
    return target, notes


def _manifest(study_id: str, title, with_masks: bool, mask_scheme, case_ids: list[str], reader_seeds: dict) -> dict:
    """The study's manifest: what readers see (no truth)."""
    return {
        "format": STUDY_FORMAT,
        "version": FORMAT_VERSION,
        "study_id": study_id,
        "title": title or "Reader study",
        "mode": "image+mask" if with_masks else "image",
        "scale": {"min": SCORE_MIN, "max": SCORE_MAX,
                  "meaning": f"{SCORE_MIN} = certainly synthetic, {SCORE_MAX} = certainly real"},
        "criteria": [{"key": k, "text": t} for k, t in CRITERIA] if with_masks else [],
        "mask_scheme": mask_scheme,
        "cases": case_ids,
        "readers": {r: {"seed": s} for r, s in reader_seeds.items()},
        "open_to_any_reader": not reader_seeds,
    }


def _write_cases(tmp: Path, assigned: dict, target, scheme) -> dict:
    """Write every case (a PNG, and its mask) into the study folder ``tmp``; the key's entry of each case."""
    cases_dir(tmp).mkdir(parents=True)
    answers_dir(tmp).mkdir()
    key_cases = {}
    for case_id in sorted(assigned):  # written in id order: file times and order say nothing
        cand = assigned[case_id]
        image = read_rgb_image(cand.path, name=f"{cand.truth} image")
        box = _centre_box(image.shape[:2], target)
        _write_png(case_image_path(tmp, case_id), _crop(image, box))
        entry = {
            "truth": cand.truth,
            "group": cand.group,
            "source": cand.source,
            "source_path": str(cand.path.resolve()),
            "pair": cand.pair,
            "original_shape": list(image.shape[:2]),
            "crop": list(box),
        }
        if cand.mask_path is not None:
            inst, types, _ = _read_mask(cand, image.shape[:2], scheme)
            _write_npy(case_mask_path(tmp, case_id), np.stack([_crop(inst, box), _crop(types, box)]))
            entry["mask_source"] = str(cand.mask_path.resolve())
        entry.update(_provenance_of(cand.path))
        key_cases[case_id] = entry
    for path in cases_dir(tmp).iterdir():
        os.utime(path, (_NEUTRAL_MTIME, _NEUTRAL_MTIME))
    return key_cases


def _publish(tmp: Path, out: Path, key_path: Path, key: dict) -> None:
    """Write the key, then move the finished study folder to ``out`` (no study without its key)."""
    key_data = json.loads(json.dumps(key, default=json_default))
    write_json_atomic(key_path, key_data)  # the key first: a study never exists without its key
    try:
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


# -- finding the cases ---------------------------------------------------------------------
def _as_dirs(value, what) -> list[Path] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    if not items:
        return None
    dirs = [Path(v) for v in items]
    for d in dirs:
        if not d.is_dir():
            raise HistogenInputError(f"No {what} at {d}; give an existing folder.")
    return dirs


def _is_case_file(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
            and not _base_name(path).lower().endswith(_NOT_CASE_SUFFIXES))


def _base_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(_PREFERRED, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _case_files(folder: Path) -> list[Path]:
    """Image files of ``folder`` that are cases, one per base name (PNG preferred)."""
    by_base: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if _is_case_file(path):
            by_base.setdefault(_base_name(path), []).append(path)

    def rank(p: Path) -> int:
        suffix = p.name[len(_base_name(p)):].lower()
        return _PREFERRED.index(suffix) if suffix in _PREFERRED else len(_PREFERRED)

    return [min(paths, key=rank) for _, paths in sorted(by_base.items())]


def _pair_stem(path: Path) -> str:
    """What pairs an image with its real counterpart: the stem of the mask a synthetic image was made
    from (``mask_source`` in its provenance sidecar), else its own base name."""
    for pattern in _SIDECARS:
        side = path.with_name(pattern.format(stem=_base_name(path)))
        if side.is_file():
            source = _find_field(_read_json_quietly(side), ("mask_source",))
            if isinstance(source, str) and source:
                stem = _base_name(Path(source.replace("\\", "/")))
                stem = Path(stem).stem if Path(stem).suffix.lower() in (".npz", ".npy", ".mat", ".geojson") else stem
                return stem[: -len("_mask")] if stem.endswith("_mask") else stem
            break
    return _base_name(path)


def _list_candidates(folder, truth: str, subfolders: bool) -> list[_Candidate]:
    folder = Path(folder)
    if not folder.is_dir():
        raise HistogenInputError(f"No {truth} image folder at {folder}; give the folder of {truth} images.")
    cands = []
    if subfolders:
        loose = [p.name for p in folder.iterdir() if _is_case_file(p)]
        if loose:
            raise HistogenInputError(
                f"With per-class subfolders every {truth} image must lie in {folder}/<group>/; "
                f"{', '.join(sorted(loose)[:3])} lie directly in {folder}. Move them into a group folder."
            )
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            cands += [_Candidate(p, truth, f"{truth}/{sub.name}/{p.name}", group=sub.name)
                      for p in _case_files(sub)]
    else:
        cands = [_Candidate(p, truth, f"{truth}/{p.name}") for p in _case_files(folder)]
    if not cands:
        where = f"{folder}/<group>/" if subfolders else f"{folder}"
        raise HistogenInputError(
            f"No {truth} images (PNG, JPEG, TIFF) in {where}; put the {truth} images there or give another folder."
        )
    return cands


def _groups_from_csv(cands: list[_Candidate], csv_path) -> list[_Candidate]:
    path = Path(csv_path)
    if not path.is_file():
        raise HistogenInputError(
            f"--per-class-from must be 'subfolders' or a CSV file with columns file,group; no file at {path}."
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CorruptFileError(f"Group table {path.name} cannot be read as CSV ({err}).") from None
    if not rows:
        raise HistogenInputError(f"Group table {path.name} has no rows; give one row per image: file,group.")
    cols = {c.strip().lower(): c for c in rows[0] if c}
    file_col = next((cols[c] for c in ("file", "image", "name", "stem", "filename") if c in cols), None)
    group_col = next((cols[c] for c in ("group", "class", "label") if c in cols), None)
    if file_col is None or group_col is None:
        raise HistogenInputError(
            f"Group table {path.name} needs a header with columns 'file' and 'group' (or 'class'); "
            f"found {list(rows[0])}."
        )
    table = {}
    for row in rows:
        name, group = (row.get(file_col) or "").strip(), (row.get(group_col) or "").strip()
        if name and group:
            table[name.replace("\\", "/")] = group
    out, missing = [], []
    for cand in cands:
        rel = cand.source.split("/", 1)[1]
        group = next((table[k] for k in (cand.source, rel, cand.path.name, cand.path.stem) if k in table), None)
        if group is None:
            missing.append(cand.source)
        out.append(replace(cand, group=group or DEFAULT_GROUP))
    if missing:
        raise HistogenInputError(
            f"Group table {path.name} has no group for {len(missing)} images ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); add a row 'file,group' for each."
        )
    return out


def _pair_up(cands: list[_Candidate]) -> list[_Candidate]:
    """A real image and the synthetic ones made from its mask (same stem, or ``mask_source`` in the
    synthetic image's sidecar), in the same group, are a pair."""
    stems = [_pair_stem(c.path) if c.truth == "synthetic" else _base_name(c.path) for c in cands]
    key = {t: {(c.group, st) for c, st in zip(cands, stems) if c.truth == t} for t in ("real", "synthetic")}
    both = key["real"] & key["synthetic"]
    return [replace(c, pair=f"{c.group}/{st}") if (c.group, st) in both else c for c, st in zip(cands, stems)]


def _find_mask(cand: _Candidate, mask_dirs: list[Path]) -> Path:
    stem = _base_name(cand.path)
    places = [(cand.path.parent, _MASK_NAMES_NEXT_TO_IMAGE)]
    for d in mask_dirs:
        if cand.group != DEFAULT_GROUP:
            places.append((d / cand.group, _MASK_NAMES_IN_MASK_DIR))
        places.append((d, _MASK_NAMES_IN_MASK_DIR))
    for folder, patterns in places:
        for pattern in patterns:
            path = folder / pattern.format(stem=stem)
            if path.is_file() and path.resolve() != cand.path.resolve():
                return path
    raise HistogenInputError(
        f"No mask for the {cand.truth} image {cand.source}: looked for {stem}_mask.npz/.tif/.png/.npy or "
        f"{stem}.npz/.npy next to it and {stem}.* in {', '.join(str(d) for d in mask_dirs)}. "
        "Add the mask or leave the image out."
    )


def _read_mask(cand: _Candidate, shape, scheme) -> tuple[np.ndarray, np.ndarray, str]:
    """Instance map, type map and scheme name of a case's mask (shape checked)."""
    path = cand.mask_path
    suffix = path.suffix.lower()
    if suffix in (".npz", ".tif", ".tiff"):
        nuclei = read_image_mask_pair(cand.path, path, scheme=scheme).nuclei
        return nuclei.instances.astype(np.int32), nuclei.type_map().astype(np.int32), nuclei.scheme.name
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            import imageio.v3 as iio

            data = iio.imread(path)
    except Exception as err:  # decoders raise many unrelated types for bad bytes
        raise CorruptFileError(f"Mask {path.name} cannot be read ({type(err).__name__}: {err}).") from None
    data = np.asarray(data)
    sch = get_scheme(scheme or "consep")
    if data.ndim == 3 and data.shape[0] == 2:
        inst = as_label_image(data[0], name=f"instance map of {path.name}")
        types = as_label_image(data[1], name=f"type map of {path.name}")
        check_same_shape(inst.shape, types.shape, what=f"type map of {path.name}")
        classes = classes_from_type_map(inst, types)
    elif data.ndim == 3 and data.shape[-1] == 2:
        inst = as_label_image(data[..., 0], name=f"instance map of {path.name}")
        classes = classes_from_type_map(inst, as_label_image(data[..., 1], name=f"type map of {path.name}"))
    elif data.ndim == 2:
        inst, classes = nuclei_from_type_map(data)
    else:
        raise HistogenInputError(
            f"Mask {path.name} has shape {data.shape}; expected a type map (HxW) or instances and types (2xHxW)."
        )
    sch.check_ids(classes.values(), what=f"mask {path.name}")
    check_same_shape(tuple(shape), inst.shape, what=f"mask {path.name} of {cand.source}")
    return inst.astype(np.int32), type_map_from_nuclei(inst, classes).astype(np.int32), sch.name


def _balance(cands, how, max_per_kind, rng) -> tuple[list[_Candidate], list[_Candidate]]:
    """Chosen and left-out candidates; within a stratum paired images come first."""
    strata = {}
    for cand in cands:
        strata.setdefault(cand.group if how == "group" else DEFAULT_GROUP, []).append(cand)
    chosen, excluded = [], []
    for members in strata.values():
        kinds = {t: [c for c in members if c.truth == t] for t in ("real", "synthetic")}
        if how == "none":
            n = {t: len(v) for t, v in kinds.items()}
        else:
            if how == "group" and not all(kinds.values()):
                group = members[0].group
                have = "real" if kinds["real"] else "synthetic"
                raise HistogenInputError(
                    f"Group '{group}' has only {have} images, so it cannot be balanced; add its "
                    f"{'synthetic' if have == 'real' else 'real'} images or use balance='overall'."
                )
            m = min(len(v) for v in kinds.values())
            n = {t: m for t in kinds}
        if max_per_kind is not None:
            n = {t: min(v, int(max_per_kind)) for t, v in n.items()}
        for t, items in kinds.items():
            shuffled = [items[i] for i in rng.permutation(len(items))]
            shuffled.sort(key=lambda c: c.pair is None)  # stable: paired ones first, random within
            chosen += shuffled[: n[t]]
            excluded += shuffled[n[t]:]
    return chosen, excluded


def _neutral_ids(n: int, rng) -> list[str]:
    ids: list[str] = []
    seen = set()
    while len(ids) < n:
        token = rng.bytes(6).hex() if rng is not None else secrets.token_hex(6)
        if token not in seen:
            seen.add(token)
            ids.append(token)
    return ids


def _centre_box(shape, target) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centre crop of ``shape`` to ``target``."""
    h, w = int(shape[0]), int(shape[1])
    if target is None:
        return (0, 0, h, w)
    th, tw = int(target[0]), int(target[1])
    return ((h - th) // 2, (w - tw) // 2, th, tw)


def _crop(array: np.ndarray, box) -> np.ndarray:
    top, left, h, w = box
    return np.ascontiguousarray(array[top: top + h, left: left + w])


def _write_png(path: Path, rgb: np.ndarray) -> None:
    """Pixels only: no text, time, colour-profile or resolution chunks."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(path, format="PNG")


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.int32), allow_pickle=False)


# -- provenance for the key --------------------------------------------------------------
def _provenance_of(image_path: Path) -> dict:
    """Sidecar JSON, folder provenance and text chunks of an image, with engine/model/seed picked out."""
    found: dict = {}
    for pattern in _SIDECARS:
        side = image_path.with_name(pattern.format(stem=_base_name(image_path)))
        if side.is_file():
            found["sidecar"] = _read_json_quietly(side)
            found["sidecar_file"] = side.name
            break
    folder_prov = image_path.parent / "provenance.json"
    if folder_prov.is_file():
        found["folder_provenance"] = _read_json_quietly(folder_prov)
    embedded = _embedded_text(image_path)
    if embedded:
        found["embedded"] = embedded
    summary = {}
    for field_name, aliases in (("engine", ("engine", "operation")), ("model", ("model", "model_name", "checkpoint")),
                                ("seed", ("seed",))):
        for source in ("sidecar", "folder_provenance", "embedded"):
            value = _find_field(found.get(source), aliases)
            if value is not None:
                summary[field_name] = value
                break
    return {**summary, "provenance": found} if found else {}


def _read_json_quietly(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return {"unreadable": f"{type(err).__name__}: {err}"}


def _embedded_text(path: Path) -> dict:
    try:
        from PIL import Image

        with Image.open(path) as im:
            info = {k: v for k, v in im.info.items() if isinstance(v, str)}
    except Exception:  # only a best effort to record metadata; the pixels were read already
        return {}
    out = {}
    for k, v in info.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def _find_field(data, aliases, max_depth=4):
    """Value of the first alias found anywhere in a nested dict (aliases in order, each breadth first)."""
    for alias in aliases:
        level = [data]
        for _ in range(max_depth):
            nxt = []
            for item in level:
                if not isinstance(item, dict):
                    continue
                value = item.get(alias)
                if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                    return value
                nxt += [v for v in item.values() if isinstance(v, dict)]
            level = nxt
    return None
