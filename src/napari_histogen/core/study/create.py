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
from ..images import IMAGE_SUFFIXES, resize_image
from ..io.pairs import read_image_mask_pair, read_rgb_image
from ..masks import (
    as_label_image,
    check_same_shape,
    classes_from_type_map,
    nuclei_from_type_map,
    resize_labels,
    type_map_from_nuclei,
)
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
from .leaks import FEATURE_TEXT, case_features, separating_features
from .session import reader_order

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
#: None: refuse mixed JPEG/non-JPEG origins; 'jpeg': pass every case through the same JPEG encoding.
REENCODE_CHOICES = (None, "jpeg")
#: 'resample': bring cases of differing recorded um/px to the coarsest; 'refuse': stop instead.
SCALE_CHOICES = ("resample", "refuse")
_MPP_TOLERANCE = 0.02
_JPEG_QUALITY = 90
_MIN_CASE_SIDE = 16
_SECRET = secrets.SystemRandom()


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
                 max_per_kind=None, crop="common", scheme=None, seed=None, key_path=None, title=None,
                 reencode=None, scale="resample") -> StudyCreated:
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
        Reader ids; each gets a random case order recorded in the manifest (the order
        itself, not a seed), and only they may score. None: any valid reader id may
        score, with a secret random order recorded in the reader's log at first opening.
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
        Makes the selection of cases and the readers' orders (as permutations of the
        sorted case ids) reproducible. Case ids and which case is which always come from
        secret randomness (:mod:`secrets`), so neither the seed nor anything in the study
        folder can unblind it; the seed is written to the key only.
    key_path : str or Path, optional
        Where to write the key (mode 0600, never over an existing file), outside the study
        folder; default ``KEYDIR/<STUDY>-<study id>.key.json`` (see
        :func:`~.layout.key_dir`), outside the folder that holds the study too. Keep it
        from the readers: it is all that unblinds the study.
    title : str, optional
        Study title shown to readers; it must not reveal provenance.
    reencode : {None, 'jpeg'}
        None: refuse a study where some cases were JPEG-compressed and others not (their
        traces would tell them apart). ``'jpeg'``: pass every case through the same JPEG
        encoding (quality 90) before it is written as PNG.
    scale : {'resample', 'refuse'}
        Cases whose masks (or sidecars) record different um/px: resample every case to the
        coarsest of them (default), or refuse. Cases without a recorded scale among cases
        with one give a warning (they cannot be matched).

    The study is made in a temporary folder beside ``out`` and renamed into place, so a
    concurrent creation at the same ``out`` ends with one complete study and one clear
    error; nothing of a failed creation is left behind. Statistics a reader could measure
    (case size, unique colours, 8x8 block artefacts, scale, file size) are compared between
    the groups, and any that separates them (AUC >= 0.8 or <= 0.2) is a warning in
    ``notes`` (all AUCs are in the key's ``leak_check``).

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
    study_id = secrets.token_hex(6)  # secret randomness: nothing in the study folder replays it
    key_path, reader_ids = _check_options(out, key_path, study_id, balance, crop, max_per_kind, readers, reencode,
                                          scale)
    _check_inputs(real, synthetic)
    mask_dirs = _as_dirs(masks, "mask folder")
    subfolders = per_class_from is not None and str(per_class_from) == "subfolders"

    # the seed (the owner's, for reproducible selection and reader orders) never touches case ids
    # or which case is which: those come from the operating system's secret randomness
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(64))
    cands = _list_candidates(real, "real", subfolders) + _list_candidates(synthetic, "synthetic", subfolders)
    if per_class_from is not None and not subfolders:
        cands = _groups_from_csv(cands, per_class_from)
    cands = _pair_up(cands)
    if mask_dirs is not None:
        cands = [replace(c, mask_path=_find_mask(c, mask_dirs)) for c in cands]
    chosen, excluded = _balance(cands, balance, max_per_kind, rng)
    infos, mask_scheme = _check_cases(chosen, scheme)
    notes = _check_encodings(chosen, infos, reencode)
    target_mpp, scale_notes = _common_scale(chosen, infos, scale)
    notes += scale_notes
    shapes = {c.source: _scaled_shape(infos[c.source], target_mpp) for c in chosen}
    target, size_notes = _case_size(chosen, shapes, crop)
    notes += size_notes

    case_ids = _neutral_ids(len(chosen), exclude={study_id})
    shuffled = list(chosen)
    _SECRET.shuffle(shuffled)
    assigned = dict(zip(case_ids, shuffled))
    orders = {r: reader_order(case_ids, int(rng.integers(0, 2**63 - 1))) for r in reader_ids}
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest = _manifest(study_id, title, mask_dirs is not None, mask_scheme, sorted(assigned), orders)

    tmp = out.parent / f".{out.name}.creating-{secrets.token_hex(4)}"
    try:
        key_cases, features = _write_cases(tmp, assigned, target, scheme, infos, target_mpp, reencode)
        leak = separating_features([features[i] for i in sorted(assigned)],
                                   [assigned[i].truth for i in sorted(assigned)])
        notes += _leak_notes(leak)
        no_prov = sum(1 for c in key_cases.values() if c["truth"] == "synthetic" and "provenance" not in c)
        if no_prov:
            notes.append(f"Note: {no_prov} synthetic cases have no provenance (no sidecar JSON or PNG text); "
                         "check that they are the synthesis output you meant.")
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        key = {
            "format": KEY_FORMAT,
            "version": FORMAT_VERSION,
            "study_id": study_id,
            "created_utc": now,
            "options": {
                "real": _text(Path(real).resolve()), "synthetic": _text(Path(synthetic).resolve()),
                "masks": [_text(d.resolve()) for d in mask_dirs] if mask_dirs is not None else None,
                "per_class_from": None if per_class_from is None else _text(per_class_from),
                "balance": balance, "max_per_kind": max_per_kind, "crop": crop, "shape": target, "seed": seed,
                "reencode": reencode, "scale": scale, "mpp": target_mpp,
            },
            "reader_orders": orders,
            "leak_check": leak,
            "notes": notes,
            "cases": key_cases,
            "excluded": [{"truth": c.truth, "group": c.group, "source": _text(c.source), "reason": "balance"}
                         for c in excluded],
        }
        _publish(tmp, out, key_path, key)
    except OSError as err:  # disk full, permissions, a name too long: nothing is left behind
        raise HistogenInputError(f"Could not write the study {out} ({err.strerror or err}); nothing was kept. "
                                 "Free disk space or choose another folder.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a success (renamed) and after any failure

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
def _check_options(out: Path, key_path, study_id, balance, crop, max_per_kind, readers, reencode,
                   scale) -> tuple[Path, list[str]]:
    """``(key path, reader ids)`` after checking the options and that nothing would be overwritten,
    before any work: the study's parent folder and the key's folder must be writable."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HistogenInputError(f"{out} already exists and is not empty; choose a new folder for the study.")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise HistogenInputError(f"The folder {parent} for the study does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HistogenInputError(f"Cannot write in {parent}; choose a study folder where you may write.")
    if len(out.name.encode("utf-8", "surrogateescape")) > 200:
        raise HistogenInputError(f"The study folder name is too long ({len(out.name)} characters); shorten it.")
    key_path = Path(key_path) if key_path is not None else default_key_path(out, study_id)
    resolved_key = key_path.resolve()
    if resolved_key.is_relative_to(out.resolve()):
        raise HistogenInputError(f"The key must lie outside the study folder readers receive, not at {key_path}; "
                                 "choose another key path.")
    if key_path.exists():
        raise HistogenInputError(f"A key already exists at {key_path} (another study's?); move it away or choose "
                                 "another key path or study name.")
    try:
        resolved_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise HistogenInputError(f"Cannot make the key folder {resolved_key.parent} ({err.strerror or err}); "
                                 "give --key-out FILE in a folder where you may write.") from None
    if not os.access(resolved_key.parent, os.W_OK | os.X_OK):
        raise HistogenInputError(f"Cannot write the key in {resolved_key.parent}; give --key-out FILE elsewhere.")
    if balance not in BALANCE_CHOICES:
        raise HistogenInputError(f"balance must be one of {', '.join(BALANCE_CHOICES)}, not {balance!r}.")
    if crop not in CROP_CHOICES:
        raise HistogenInputError(f"crop must be one of {', '.join(CROP_CHOICES)}, not {crop!r}.")
    if reencode not in REENCODE_CHOICES:
        raise HistogenInputError(f"reencode must be None or one of {', '.join(REENCODE_CHOICES[1:])}, "
                                 f"not {reencode!r}.")
    if scale not in SCALE_CHOICES:
        raise HistogenInputError(f"scale must be one of {', '.join(SCALE_CHOICES)}, not {scale!r}.")
    if max_per_kind is not None and (isinstance(max_per_kind, bool) or int(max_per_kind) < 1):
        raise HistogenInputError(f"max_per_kind must be at least 1, not {max_per_kind}.")
    reader_ids = [check_reader_id(r) for r in (readers or [])]
    if len(set(reader_ids)) != len(reader_ids):
        raise HistogenInputError("Reader ids repeat; give each reader once.")
    return key_path, reader_ids


def _check_inputs(real, synthetic) -> None:
    if Path(real).is_dir() and Path(synthetic).is_dir() and Path(real).resolve() == Path(synthetic).resolve():
        raise HistogenInputError(f"The real and the synthetic folder are the same ({real}); give two folders.")


def _check_cases(chosen: list[_Candidate], scheme) -> tuple[dict, str | None]:
    """Every chosen image (and mask) decodes: ``(source -> shape, mpp, jpeg origin), the masks' scheme)``."""
    infos = {}
    mask_scheme = None
    for cand in chosen:
        image = read_rgb_image(cand.path, name=f"{cand.truth} image")
        info = {"shape": image.shape[:2], "mpp": _sidecar_mpp(cand.path), "jpeg": _jpeg_origin(cand.path)}
        if cand.mask_path is not None:
            _, _, name, mpp = _read_mask(cand, image.shape[:2], scheme)
            if mpp is not None:
                info["mpp"] = mpp
            if mask_scheme is None:
                mask_scheme = name
            elif name != mask_scheme:
                raise HistogenInputError(
                    f"Masks use different class schemes ({mask_scheme} and {name}, e.g. {cand.mask_path.name}); "
                    "convert them to one scheme or pass scheme=... for type-map masks."
                )
        infos[cand.source] = info
    return infos, mask_scheme


def _jpeg_origin(path: Path) -> bool:
    """Whether an image was JPEG-compressed: a JPEG file, or a PNG/TIFF that says it came from one."""
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return True
    try:
        from PIL import Image

        with Image.open(path) as im:
            return im.format == "JPEG" or (im.format == "TIFF" and im.info.get("compression") == "jpeg")
    except Exception:  # read_rgb_image decoded it already; only the container is in question
        return False


def _sidecar_mpp(path: Path) -> float | None:
    for pattern in _SIDECARS:
        side = path.with_name(pattern.format(stem=_base_name(path)))
        if side.is_file():
            value = _find_field(_read_json_quietly(side), ("mpp", "microns_per_pixel", "um_per_px"))
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    return None


def _check_encodings(chosen: list[_Candidate], infos: dict, reencode) -> list[str]:
    """Refuse a study whose real and synthetic cases have different encoding histories (JPEG traces)."""
    by_kind = {t: [infos[c.source]["jpeg"] for c in chosen if c.truth == t] for t in ("real", "synthetic")}
    mixed = len({j for js in by_kind.values() for j in js}) > 1
    if mixed and reencode is None:
        jpeg = {t: sum(js) for t, js in by_kind.items()}
        raise HistogenInputError(
            f"Some cases were JPEG-compressed ({jpeg['real']} real, {jpeg['synthetic']} synthetic) and others not: "
            "JPEG traces (8x8 blocks, fewer colours) survive re-encoding and would tell the groups apart. Use "
            "images of one encoding history, or pass reencode='jpeg' (--reencode jpeg) to pass every case "
            "through the same JPEG encoding."
        )
    if reencode == "jpeg":
        return [f"Every case was re-encoded alike through JPEG (quality {_JPEG_QUALITY}) so that encoding "
                "history cannot tell the groups apart."]
    return []


def _common_scale(chosen: list[_Candidate], infos: dict, scale: str) -> tuple[float | None, list[str]]:
    """``(target um/px or None, notes)``: the coarsest recorded scale when cases differ (resampled to it)."""
    known = {c.source: infos[c.source]["mpp"] for c in chosen if infos[c.source]["mpp"] is not None}
    if not known:
        return None, []
    notes = []
    if len(known) < len(chosen):
        missing = [c.source for c in chosen if c.source not in known]
        notes.append(f"Warning: {len(missing)} cases record no scale (um/px) while {len(known)} do "
                     f"(e.g. {_text(missing[0])}); their scale cannot be checked or matched, and a scale "
                     "mismatch (nucleus size) can reveal them.")
    lo, hi = min(known.values()), max(known.values())
    if hi <= lo * (1 + _MPP_TOLERANCE):
        return hi, notes
    if scale == "refuse":
        raise HistogenInputError(
            f"Cases differ in scale ({lo:g} to {hi:g} um/px): nucleus size would tell them apart. Bring them to "
            "one scale first, or let the study resample them (scale='resample', the default)."
        )
    notes.append(f"Cases recorded scales {lo:g} to {hi:g} um/px; they were resampled to {hi:g} um/px "
                 "(images bilinear, masks nearest neighbour) so that nucleus size cannot tell them apart.")
    return hi, notes


def _scaled_shape(info: dict, target_mpp) -> tuple[int, int]:
    h, w = (int(v) for v in info["shape"])
    mpp = info["mpp"]
    if target_mpp is None or mpp is None or abs(mpp - target_mpp) <= target_mpp * _MPP_TOLERANCE:
        return (h, w)
    f = mpp / target_mpp
    return (max(1, int(round(h * f))), max(1, int(round(w * f))))


def _case_size(chosen: list[_Candidate], shapes: dict, crop: str) -> tuple[tuple[int, int] | None, list[str]]:
    """``(common case size or None, notes)``: the smallest height and width with ``crop='common'``."""
    notes = []
    target = None
    if crop == "common":
        target = (min(s[0] for s in shapes.values()), min(s[1] for s in shapes.values()))
        if min(target) < _MIN_CASE_SIDE:
            small = min(chosen, key=lambda c: min(shapes[c.source]))
            h, w = shapes[small.source]
            raise HistogenInputError(
                f"The {small.truth} image {_text(small.source)} is only {h}x{w} px; every case would be cropped to "
                f"{target[0]}x{target[1]} px. Leave it out (cases need at least {_MIN_CASE_SIDE} px a side) "
                "or use crop='none'."
            )
        if any(s != target for s in shapes.values()):
            notes.append(f"Cases were centre-cropped to a common {target[0]}x{target[1]} px.")
    else:
        by_kind = {t: {shapes[c.source] for c in chosen if c.truth == t} for t in ("real", "synthetic")}
        if by_kind["real"] != by_kind["synthetic"]:
            notes.append("Warning: real and synthetic cases differ in size, which can reveal them; "
                         "use crop='common'.")
    return target, notes


def _manifest(study_id: str, title, with_masks: bool, mask_scheme, case_ids: list[str], orders: dict) -> dict:
    """The study's manifest: what readers see (no truth, no seed: each listed reader's order itself)."""
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
        "readers": {r: {"order": list(order)} for r, order in orders.items()},
        "open_to_any_reader": not orders,
    }


def _leak_notes(leak: dict) -> list[str]:
    return [f"Warning: {FEATURE_TEXT[name]} separates real from synthetic cases (AUC {auc:.2f}); readers could "
            "tell them apart without judging realism. Match the groups on it before giving out the study."
            for name, auc in leak["separating"].items()]


def _write_cases(tmp: Path, assigned: dict, target, scheme, infos: dict, target_mpp, reencode) -> tuple[dict, dict]:
    """Write every case (a PNG, and its mask) into the study folder ``tmp``: ``(key entry, features)`` per case."""
    cases_dir(tmp).mkdir(parents=True)
    answers_dir(tmp).mkdir()
    key_cases, features = {}, {}
    for case_id in sorted(assigned):  # written in id order: file times and order say nothing
        cand = assigned[case_id]
        info = infos[cand.source]
        image = read_rgb_image(cand.path, name=f"{cand.truth} image")
        shape = _scaled_shape(info, target_mpp)
        scaled = resize_image(image, shape)
        box = _centre_box(shape, target)
        pixels = _crop(scaled, box)
        if reencode == "jpeg":
            pixels = _through_jpeg(pixels)
        _write_png(case_image_path(tmp, case_id), pixels)
        entry = {
            "truth": cand.truth,
            "group": cand.group,
            "source": _text(cand.source),
            "source_path": _text(cand.path.resolve()),
            "pair": cand.pair,
            "original_shape": list(image.shape[:2]),
            "original_mpp": info["mpp"],
            "jpeg_origin": info["jpeg"],
            "resampled_shape": list(shape),
            "crop": list(box),
        }
        if cand.mask_path is not None:
            inst, types, _, _ = _read_mask(cand, image.shape[:2], scheme)
            inst = _crop(resize_labels(inst, shape), box)
            types = _crop(resize_labels(types, shape), box)
            _write_npy(case_mask_path(tmp, case_id), np.stack([_relabel_randomly(inst), types]))
            entry["mask_source"] = _text(cand.mask_path.resolve())
        entry.update(_provenance_of(cand.path))
        key_cases[case_id] = entry
        features[case_id] = case_features(pixels, file_bytes=case_image_path(tmp, case_id).stat().st_size,
                                          mpp=target_mpp if target_mpp is not None else info["mpp"])
    for path in cases_dir(tmp).iterdir():
        os.utime(path, (_NEUTRAL_MTIME, _NEUTRAL_MTIME))
    return key_cases, features


def _relabel_randomly(inst: np.ndarray) -> np.ndarray:
    """Instance ids 1..N in a secret random order: no gaps or numbering pattern (cropping, source tool)."""
    ids, inverse = np.unique(inst, return_inverse=True)
    n = int((ids != 0).sum())
    new = np.zeros(ids.size, dtype=np.int32)
    labels = list(range(1, n + 1))
    _SECRET.shuffle(labels)
    new[ids != 0] = labels
    return new[inverse.reshape(inst.shape)]


def _through_jpeg(rgb: np.ndarray) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buf, format="JPEG",
                                                                                quality=_JPEG_QUALITY)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _publish(tmp: Path, out: Path, key_path: Path, key: dict) -> None:
    """Write the key (0600, never over an existing file), then rename the finished study folder to ``out``
    (atomic: it fails when ``out`` is there and not empty, e.g. a concurrent creation won)."""
    key_data = json.loads(json.dumps(key, default=json_default))
    try:
        write_json_atomic(key_path, key_data, mode=0o600, exclusive=True)  # a study never exists without its key
    except FileExistsError:
        raise HistogenInputError(f"A key already exists at {key_path} (another study's, created meanwhile?); "
                                 "nothing was written. Choose another key path.") from None
    try:
        os.rename(tmp, out)  # replaces only a missing or empty folder
    except OSError:
        key_path.unlink(missing_ok=True)  # ours: written exclusively above
        if out.exists():
            raise HistogenInputError(f"{out} was created by someone else while this study was being made; "
                                     "nothing was written. Choose a new folder.") from None
        raise
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)


def _text(value) -> str:
    """A path or name as text that survives UTF-8 files (undecodable bytes shown as escapes)."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def _read_mask(cand: _Candidate, shape, scheme) -> tuple[np.ndarray, np.ndarray, str, float | None]:
    """Instance map, type map, scheme name and recorded um/px (or None) of a case's mask (shape checked)."""
    path = cand.mask_path
    suffix = path.suffix.lower()
    if suffix in (".npz", ".tif", ".tiff"):
        nuclei = read_image_mask_pair(cand.path, path, scheme=scheme).nuclei
        mpp = float(nuclei.mpp) if nuclei.mpp else None
        return nuclei.instances.astype(np.int32), nuclei.type_map().astype(np.int32), nuclei.scheme.name, mpp
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
    return inst.astype(np.int32), type_map_from_nuclei(inst, classes).astype(np.int32), sch.name, None


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


def _neutral_ids(n: int, exclude=()) -> list[str]:
    """``n`` distinct random ids from secret randomness (never from a seed)."""
    ids: list[str] = []
    seen = set(exclude)
    while len(ids) < n:
        token = secrets.token_hex(6)
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
