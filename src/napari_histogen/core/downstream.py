"""Does synthetic data help? Train the nuclei segmenter on real and synthetic patches, score it on real ones.

The arms (as NASDM++ Table 3 and the transfer papers):

- **a**: a part (``real_fraction``, 25 %) of the real training patches;
- **b**: all real training patches;
- **c**: that part + synthetic images made by an engine from the masks of the other patches;
- **d**: that part + synthetic images from *generated* masks (needs a mask-generation
  engine, which the product does not have yet: skipped with a message);
- **e**: synthetic images from every training mask, no real image.

Every arm trains the same segmenter (:mod:`napari_histogen.core.segment`) for the same number
of steps, once per seed (the seed draws the real part, the weights and the batches), and is
scored on the validation tiles held out by the split by source image (the same tiles as the
default NASDM model's training), with Dice, AJI, PQ and per-type F1; the table gives the mean
over seeds with a t confidence interval.

The run folder makes it resumable: synthetic images are cached per mask
(``synthetic/<engine tag>/NNNNN.npz``), each arm and seed writes ``runs/<arm>/seed<k>/
result.json`` (and the segmenter), and a second call skips what is done; ``run.json``
holds the settings, and a call with other settings on the same folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import HistogenInputError
from .progress import check_cancel

__all__ = ["ARMS", "DownstreamSettings", "DownstreamReport", "run_downstream", "summarise_runs",
           "format_table", "plot_summary"]

#: arm letter -> label (``{part}`` is the real fraction in percent)
ARMS = {
    "a": "{part} % real",
    "b": "100 % real",
    "c": "{part} % real + synthetic ({rest} % masks)",
    "d": "{part} % real + synthetic (generated masks)",
    "e": "synthetic only (100 % masks)",
}
SKIPPED_D = "needs the mask-generation engine (issue 17), which this version does not have"
METRICS = ("dice", "aji", "pq")


@dataclass
class DownstreamSettings:
    """One downstream comparison (defaults: the CoNSeP setting of ``docs/downstream.md``).

    Attributes
    ----------
    data, fmt : str
        Dataset (any format ``histogen train nasdm`` reads) and its format.
    out : str
        Run folder (created; resumable).
    engine, model : str
        Synthesis engine and model by name (``histogen models``).
    engine_options : dict
        Extra request fields of the engine (e.g. ``{'steps': 20, 'guidance': 0.25}``).
    device : str
        Device of the engine ('cpu', 'cuda', 'auto'); the segmenter trains on the CPU.
    arms : tuple of str
        Letters of :data:`ARMS`.
    seeds : tuple of int
    real_fraction : float
        The real part of arms a, c, d.
    mpp, patch_size : float, int
        The segmenter's scale and patch side (20x, 128 px).
    min_tissue, val_fraction, split_seed
        As ``build_patch_set`` (the default model's split: 0.5, 0.1, 0).
    max_val : int or None
        Score on this many evenly spaced validation patches (all when None).
    synthesis_seed : int
        Mask ``i`` of the training list is synthesized with seed ``synthesis_seed + i``.
    steps, batch_size, lr, base_channels, depth, precision
        The segmenter's training (:class:`~napari_histogen.core.segment.train.TrainSettings`).
    """

    data: str = ""
    fmt: str = "auto"
    out: str = "downstream"
    engine: str = "nasdm"
    model: str = "default"
    engine_options: dict = field(default_factory=dict)
    device: str = "cpu"
    arms: tuple = ("a", "b", "c", "d", "e")
    seeds: tuple = (0, 1, 2)
    real_fraction: float = 0.25
    mpp: float = 0.5
    patch_size: int = 128
    min_tissue: float = 0.5
    val_fraction: float = 0.1
    split_seed: int = 0
    max_val: int | None = None
    synthesis_seed: int = 0
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-3
    base_channels: int = 24
    depth: int = 3
    precision: str = "bf16"

    def problems(self) -> list[str]:
        out = []
        if not self.data:
            out.append("Give the dataset to train and score on (--data).")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            out.append(f"Arms are letters of {', '.join(ARMS)}, not {', '.join(map(str, unknown)) or 'none'}.")
        if not self.seeds:
            out.append("Give at least one seed.")
        if not 0 < float(self.real_fraction) < 1:
            out.append(f"The real fraction must be between 0 and 1 (exclusive), not {self.real_fraction}.")
        if self.steps < 1 or self.batch_size < 1:
            out.append("The segmenter needs at least one training step and a batch of one patch.")
        if self.patch_size % (2 ** self.depth):
            out.append(f"The patch size must be a multiple of {2 ** self.depth} (depth {self.depth}).")
        if self.max_val is not None and self.max_val < 1:
            out.append("max_val must be at least 1 (or None for every validation patch).")
        return out

    def fingerprint(self) -> dict:
        """The settings a cached result depends on (the arms and seeds to run may change)."""
        record = asdict(self)
        for key in ("out", "arms", "seeds", "device"):
            record.pop(key)
        return record


@dataclass
class DownstreamReport:
    """What :func:`run_downstream` did: per-run results, the summary, the files written."""

    runs: list[dict]
    summary: dict
    skipped: dict
    files: list[Path]
    seconds: float


# -- data ----------------------------------------------------------------------------------------


def _read_patches(settings: DownstreamSettings, log):
    from .nasdm.patchset import build_patch_set

    log(f"Reading {settings.data} ...")
    ps = build_patch_set(settings.data, settings.fmt, target_mpp=settings.mpp, patch_size=settings.patch_size,
                         overlap=0.0, min_tissue=settings.min_tissue, val_fraction=settings.val_fraction,
                         seed=settings.split_seed, unclassified="drop")
    if not ps.val:
        raise HistogenInputError("The split left no validation patch: the dataset needs at least two source images.")

    def copy(ref):
        image, inst, classes = ps.crop(ref)
        return np.array(image), np.array(inst), dict(classes)

    train = [copy(r) for r in ps.train]
    val_refs = list(ps.val)
    if settings.max_val and settings.max_val < len(val_refs):
        val_refs = [val_refs[int(i)] for i in np.linspace(0, len(val_refs) - 1, settings.max_val).round()]
    val = [copy(r) for r in val_refs]
    log(f"{len(train)} training patches, {len(val)} validation patches from "
        f"{', '.join(ps.summary['val_source_ids'])} ({settings.patch_size} px at {settings.mpp} µm/px)")
    return ps, train, val


def _split_part(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(10_000 + int(seed)).permutation(n)
    k = min(n - 1, max(1, int(round(fraction * n)))) if n > 1 else n
    return np.sort(order[:k]), np.sort(order[k:])


# -- synthesis -----------------------------------------------------------------------------------


def _engine_tag(settings: DownstreamSettings) -> str:
    options = json.dumps(settings.engine_options, sort_keys=True)
    digest = hashlib.sha256(f"{settings.model}|{options}|{settings.synthesis_seed}".encode()).hexdigest()[:10]
    return f"{settings.engine}-{Path(str(settings.model)).name or 'model'}-{digest}"


class _Synthesizer:
    """Synthetic patches for training masks, cached in the run folder (one ``.npz`` per mask)."""

    def __init__(self, settings: DownstreamSettings, scheme, folder: Path, log):
        self.settings, self.scheme, self.folder, self.log = settings, scheme, folder, log
        self.engine = None
        self.request_class = None
        self.seconds_per_patch: float | None = None
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.folder / f"{index:05d}.npz"

    def missing(self, indices) -> list[int]:
        return [int(i) for i in indices if not self.path(int(i)).is_file()]

    def _load_engine(self):
        from .engines.base import create_engine, engine_info

        info = engine_info(self.settings.engine)
        request_class = info.request_class()
        if "nuclei" not in {f.name for f in fields(request_class)}:
            raise HistogenInputError(f"The {self.settings.engine} engine does not draw images from nuclei masks; "
                                     "the downstream benchmark needs one that does (e.g. nasdm).")
        bad = [k for k in self.settings.engine_options if k not in {f.name for f in fields(request_class)}]
        if bad:
            raise HistogenInputError(f"The {self.settings.engine} engine has no option {', '.join(bad)}.")
        self.request_class = request_class
        self.engine = create_engine(self.settings.engine, self.settings.model, device=self.settings.device)

    def make(self, index: int, image_shape, inst, classes) -> None:
        from .images import resize_image
        from .masks import NucleiMask, resample_nuclei

        if self.engine is None:
            self._load_engine()
        assert self.request_class is not None and self.engine is not None
        nuclei = NucleiMask.create(np.ascontiguousarray(inst), classes, self.scheme.name, mpp=self.settings.mpp)
        request = self.request_class(nuclei=nuclei, seed=self.settings.synthesis_seed + index,
                                     **self.settings.engine_options)
        start = time.perf_counter()
        result = self.engine.run(request)[0]
        took = time.perf_counter() - start
        self.seconds_per_patch = took if self.seconds_per_patch is None else 0.8 * self.seconds_per_patch + 0.2 * took
        image, mask = result.image, result.nuclei
        if mask.mpp is not None and abs(float(mask.mpp) - self.settings.mpp) > 1e-6:
            mask = resample_nuclei(mask, self.settings.mpp)
        if tuple(image.shape[:2]) != tuple(mask.shape):
            image = resize_image(image, tuple(mask.shape))
        if tuple(mask.shape) != tuple(image_shape[:2]):
            raise HistogenInputError(f"The {self.settings.engine} engine returned a {mask.shape} image for a "
                                     f"{tuple(image_shape[:2])} mask; the benchmark needs images of the mask's size.")
        ids = np.array(sorted(mask.classes.items()), np.int64).reshape(-1, 2)
        tmp = self.path(index).with_suffix(".tmp.npz")
        np.savez_compressed(tmp, image=image, instances=mask.instances, classes=ids)
        tmp.replace(self.path(index))  # a killed run leaves no half-written patch

    def read(self, index: int):
        with np.load(self.path(index)) as f:
            return f["image"], f["instances"], {int(k): int(v) for k, v in f["classes"]}

    def free(self) -> None:
        if self.engine is not None:
            self.engine.free()
            self.engine = None


# -- one arm, one seed ---------------------------------------------------------------------------


def _has_nuclei(patch) -> bool:
    return bool(np.asarray(patch[1]).any())


def _arm_patches(arm: str, seed: int, train, synth: _Synthesizer, fraction: float):
    """The training patches of one arm; synthetic ones only for masks with nuclei (engines refuse empty masks)."""
    part, rest = _split_part(len(train), fraction, seed)
    real_part = [train[i] for i in part]
    if arm == "a":
        return real_part
    if arm == "b":
        return list(train)
    if arm == "c":
        return real_part + [synth.read(int(i)) for i in rest if _has_nuclei(train[int(i)])]
    if arm == "e":
        return [synth.read(i) for i in range(len(train)) if _has_nuclei(train[i])]
    raise ValueError(arm)


def _synthetic_needed(settings: DownstreamSettings, train) -> list[int]:
    needed: set[int] = set()
    if "e" in settings.arms:
        needed.update(range(len(train)))
    if "c" in settings.arms:
        for seed in settings.seeds:
            needed.update(int(i) for i in _split_part(len(train), settings.real_fraction, seed)[1])
    return sorted(i for i in needed if _has_nuclei(train[i]))


def _train_settings(settings: DownstreamSettings, seed: int):
    from .segment.train import TrainSettings

    return TrainSettings(steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr, seed=int(seed),
                         precision=settings.precision, base_channels=settings.base_channels, depth=settings.depth)


def _run_one(arm: str, seed: int, patches, val, ps, settings: DownstreamSettings, folder: Path, *, cancel) -> dict:
    from .segment.metrics import score_set
    from .segment.model import save_segmenter
    from .segment.train import segment_batch, train_segmenter

    model, history = train_segmenter(patches, ps.class_ids, _train_settings(settings, seed), scheme=ps.scheme.name,
                                     mpp=settings.mpp, record={"arm": arm, "data": str(settings.data)},
                                     cancel=cancel)
    predictions = segment_batch(model, [image for image, _, _ in val])
    scores = score_set([(inst, classes) for _, inst, classes in val], predictions, ps.class_ids,
                       list(ps.scheme.names))
    save_segmenter(model, folder)
    result = {"arm": arm, "seed": int(seed), "patches": len(patches), "scores": scores,
              "train_seconds": history["seconds"], "patches_per_second": history["patches_per_second"],
              "final_loss": float(np.mean(history["loss"][-20:]))}
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(folder / "result.json")
    return result


# -- the whole comparison ------------------------------------------------------------------------


def _check_run_folder(out: Path, settings: DownstreamSettings) -> None:
    """Refuse a folder that holds a run with other settings (before any slow work)."""
    record = out / "run.json"
    fingerprint = json.loads(json.dumps(settings.fingerprint()))
    if record.is_file():
        try:
            old = json.loads(record.read_text()).get("settings")
        except ValueError:
            old = None
        if old != fingerprint:
            changed = sorted(k for k in set(fingerprint) | set(old or {})
                             if (old or {}).get(k) != fingerprint.get(k))
            raise HistogenInputError(f"{out} holds a downstream run with other settings ({', '.join(changed)}); "
                                     "choose another --out, or repeat the earlier settings to resume it.")


def _record_run(out: Path, settings: DownstreamSettings) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"settings": settings.fingerprint()}, indent=2))


def _calibrate(train, ps, settings: DownstreamSettings) -> float:
    """Patches per second of segmenter training here (3 steps; the first is slower, so a cautious figure)."""
    from .segment.train import train_segmenter

    quick = _train_settings(settings, 0)
    quick.steps = 3
    _, history = train_segmenter(train[: settings.batch_size], ps.class_ids, quick)
    return float(history["patches_per_second"])


def run_downstream(settings: DownstreamSettings, *, log: Callable[[str], object] = print,
                   cancel=None) -> DownstreamReport:
    """Run (or resume) a downstream comparison and write its table, JSON and plot.

    Parameters
    ----------
    settings : DownstreamSettings
    log : callable
        Receives one line of news at a time (the CLI prints them).
    cancel : CancelToken or callable, optional
        Checked between and inside trainings; finished runs stay on disk.

    Returns
    -------
    DownstreamReport
        Writes ``OUT/downstream.json``, ``OUT/downstream.md`` and ``OUT/downstream.png``.
    """
    problems = settings.problems()
    if problems:
        raise HistogenInputError(problems[0])
    start = time.perf_counter()
    out = Path(settings.out)
    _check_run_folder(out, settings)
    ps, train, val = _read_patches(settings, log)
    _record_run(out, settings)  # only once the data is read: a typo in --data leaves no folder behind
    skipped = {}
    arms = [a for a in settings.arms if a != "d"]
    if "d" in settings.arms:
        skipped["d"] = SKIPPED_D
        log(f"arm d skipped: {SKIPPED_D}")
    todo = [(a, s) for a in arms for s in settings.seeds
            if not (out / "runs" / a / f"seed{s}" / "result.json").is_file()]
    synth = _Synthesizer(settings, ps.scheme, out / "synthetic" / _engine_tag(settings), log)
    missing = synth.missing(_synthetic_needed(settings, train)) if any(a in ("c", "e") for a, _ in todo) else []
    empty = sum(not _has_nuclei(p) for p in train)
    if empty and any(a in ("c", "e") for a in arms):
        log(f"{empty} training windows hold no nucleus: the synthetic arms leave them out (engines need nuclei)")
    if todo:
        rate = _calibrate(train, ps, settings)
        train_min = len(todo) * settings.steps * settings.batch_size / rate / 60
        log(f"{len(todo)} trainings to run ({len(arms) * len(settings.seeds) - len(todo)} done), "
            f"{settings.steps} steps x {settings.batch_size} patches each at {rate:.1f} patches/s here: "
            f"about {train_min:.0f} min of training")
    else:
        log(f"every training of this run is done ({len(arms) * len(settings.seeds)}): rebuilding the table")
    try:
        if missing:
            check_cancel(cancel)
            synth.make(missing[0], train[missing[0]][0].shape, train[missing[0]][1], train[missing[0]][2])
            log(f"{len(missing)} synthetic patches to make with {settings.engine} ({settings.model}) at "
                f"{synth.seconds_per_patch:.1f} s each: about {len(missing) * (synth.seconds_per_patch or 0) / 60:.0f}"
                " min (cached in the run folder)")
            for done, index in enumerate(missing[1:], start=2):
                check_cancel(cancel)
                synth.make(index, train[index][0].shape, train[index][1], train[index][2])
                if done % 10 == 0 or done == len(missing):
                    log(f"synthetic {done}/{len(missing)} ({synth.seconds_per_patch:.1f} s/patch)")
    finally:
        synth.free()
    for k, (arm, seed) in enumerate(todo, start=1):
        check_cancel(cancel)
        folder = out / "runs" / arm / f"seed{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        patches = _arm_patches(arm, seed, train, synth, settings.real_fraction)
        log(f"[{k}/{len(todo)}] arm {arm} seed {seed}: {len(patches)} patches, {settings.steps} steps ...")
        result = _run_one(arm, seed, patches, val, ps, settings, folder, cancel=cancel)
        s = result["scores"]
        log(f"    Dice {s['dice']:.3f}  AJI {s['aji']:.3f}  PQ {s['pq']:.3f}  ({result['train_seconds'] / 60:.1f} min)")
    runs = []
    for arm in arms:
        for seed in settings.seeds:
            path = out / "runs" / arm / f"seed{seed}" / "result.json"
            runs.append(json.loads(path.read_text()))
    summary = summarise_runs(runs, list(ps.scheme.names))
    labels = _labels(settings)
    report = {"settings": settings.fingerprint(), "arms": {a: labels[a] for a in settings.arms},
              "seeds": list(settings.seeds), "validation_tiles": ps.summary["val_source_ids"],
              "n_train": len(train), "n_val": len(val), "skipped": skipped, "summary": summary, "runs": runs}
    files = [out / "downstream.json", out / "downstream.md", out / "downstream.png"]
    files[0].write_text(json.dumps(report, indent=2))
    files[1].write_text(format_table(summary, labels, skipped, list(ps.scheme.names), n_val=len(val),
                                     seeds=list(settings.seeds)) + "\n")
    plot_summary(summary, labels, files[2])
    return DownstreamReport(runs, summary, skipped, files, time.perf_counter() - start)


def _labels(settings: DownstreamSettings) -> dict:
    part = round(100 * settings.real_fraction)
    return {a: f"({a}) " + ARMS[a].format(part=part, rest=100 - part) for a in ARMS}


def _interval(values) -> tuple[float, float, float]:
    """Mean and the 95 % t interval's half width over seeds (NaN width for one seed)."""
    from scipy import stats

    arr = np.asarray([v for v in values if np.isfinite(v)], float)
    if len(arr) == 0:
        return float("nan"), float("nan"), 0
    if len(arr) == 1:
        return float(arr[0]), float("nan"), 1
    half = float(stats.t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))
    return float(arr.mean()), half, len(arr)


def summarise_runs(runs: list[dict], type_names: list[str]) -> dict:
    """Per arm: ``{metric: {'mean', 'ci95', 'n'}}`` for Dice, AJI, PQ and ``f1:<type>``."""
    out: dict = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rows = [r["scores"] for r in runs if r["arm"] == arm]
        entry = {}
        for metric in METRICS:
            mean, half, n = _interval([row[metric] for row in rows])
            entry[metric] = {"mean": mean, "ci95": half, "n": n}
        for name in type_names:
            mean, half, n = _interval([row["f1"].get(name, float("nan")) for row in rows])
            entry[f"f1:{name}"] = {"mean": mean, "ci95": half, "n": n}
        out[arm] = entry
    return out


def _cell(value: dict) -> str:
    if not np.isfinite(value["mean"]):
        return "–"
    if not np.isfinite(value["ci95"]):
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ± {value['ci95']:.3f}"


def format_table(summary: dict, labels: dict, skipped: dict, type_names: list[str], *, n_val: int,
                 seeds: list) -> str:
    """The Markdown table: one row per arm, mean ± 95 % t half-width over seeds."""
    head = ["training data", "Dice", "AJI", "PQ"] + [f"F1 {n}" for n in type_names]
    lines = [f"Segmenter scored on {n_val} validation patches; mean ± 95 % t interval over seeds "
             f"{', '.join(map(str, seeds))}.", "", "| " + " | ".join(head) + " |",
             "| " + " | ".join("---" for _ in head) + " |"]
    for arm, entry in summary.items():
        cells = [labels[arm]] + [_cell(entry[m]) for m in METRICS] + [_cell(entry[f"f1:{n}"]) for n in type_names]
        lines.append("| " + " | ".join(cells) + " |")
    for arm, reason in skipped.items():
        lines.append("| " + labels[arm] + " | " + f"skipped: {reason}" + " |" * (len(head) - 1))
    return "\n".join(lines)


def plot_summary(summary: dict, labels: dict, path) -> Path:
    """A bar plot (PNG) of Dice, AJI and PQ per arm with the 95 % intervals as error bars."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in a napari session

    arms = list(summary)
    fig = Figure(figsize=(2.2 + 1.4 * len(arms), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        means = [summary[arm][m]["mean"] for m in METRICS]
        errs = [summary[arm][m]["ci95"] if np.isfinite(summary[arm][m]["ci95"]) else 0.0 for m in METRICS]
        ax.bar(np.arange(len(METRICS)) + (k - (len(arms) - 1) / 2) * width, means, width, yerr=errs, capsize=3,
               label=labels[arm])
    ax.set_xticks(np.arange(len(METRICS)), [m.upper() if m != "dice" else "Dice" for m in METRICS])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on the validation tiles")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    return Path(path)
