"""One prepared check of a GPU machine: GPU tests, speed and memory tables, an optional training run.

Meant for a short lease of a bare CUDA machine with torch installed (``scripts/device_check.sh``
installs the carried wheels first, see docs/performance.md). Within ``--budget`` minutes it runs,
in order, and skips what no longer fits (with a note in ``summary.json``):

1. ``gpu_tests.json``: ``pytest -m gpu`` on the test files that hold GPU tests;
2. ``nasdm_pixel.json``: pixel NASDM sampling steps (paper and small sizes at 128 px) by batch
   size and precision: seconds per step, patches/s for 50/100/250 steps, peak memory;
3. ``nasdm_latent.json``: the embedded latent default model: whole runs (its recommended steps,
   masks batched across with ``run_many``) by batch size and precision: patches/s, peak memory;
   and the speed switches at the first precision and batch 32 (``variants``): default layout,
   channels-last, ``torch.compile``, CUDA graphs (compile mode "reduce-overhead"), with the
   first run (compilation) and the steady time;
4. ``transfer.json``: appearance transfer of one 512 px pair with SD 1.5-shaped random weights,
   straightforward against optimised path: seconds per pair and peak memory;
5. ``training.json``: training throughput (patches/s) of pixel and latent NASDM on a synthetic
   dataset, per precision;
6. with ``--train-minutes M``: a training run of ``--train-model`` for M minutes on
   ``--train-data`` (or the synthetic set); its EMA weights (``trained_<model>.safetensors``,
   only when under 16 MB) and its log go to the output folder.

``summary.json`` holds the machine, the parts run and skipped, and their seconds: at most 8 files
in all. ``--dry-run`` runs every part on CPU with tiny models and small grids (CI runs it).

Run::

    scripts/device_check.sh --budget 12 --out "$OUT"               # on the GPU machine
    PYTHONPATH=src python benchmarks/device_check.py --dry-run --out /tmp/dc   # anywhere
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the sibling benchmarks

#: Files the check may write (the device tool brings back at most 8)
RESULT_FILES = ("summary.json", "gpu_tests.json", "nasdm_pixel.json", "nasdm_latent.json", "transfer.json",
                "training.json", "trained_model.safetensors", "trained_model.json")
#: Largest weights file written to the output folder
MAX_WEIGHTS_BYTES = 16 * 2**20


class Budget:
    """Wall-clock budget: parts ask whether their estimate still fits."""

    def __init__(self, minutes: float):
        self.start = time.perf_counter()
        self.seconds = float(minutes) * 60

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def fits(self, estimate_s: float) -> bool:
        return self.left() >= estimate_s


def _peak_reset(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float:
    """Peak memory since the last reset: CUDA allocations, else the process's peak resident size."""
    import resource

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(device), "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    bf16=torch.cuda.is_bf16_supported())
    for name in ("diffusers", "transformers", "accelerate", "safetensors", "numpy"):
        try:
            info[name] = __import__(name).__version__
        except Exception as err:  # noqa: BLE001 - a missing package is what the report is for
            info[name] = f"missing ({type(err).__name__})"
    return info


# -- the parts -------------------------------------------------------------------------------------
def part_gpu_tests(cfg, budget: Budget) -> dict:
    """``pytest -m gpu`` on the test files with GPU tests; counts and the output's tail."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text(encoding="utf-8", errors="replace"))
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs", *files]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    timeout = max(30.0, min(budget.left() - 5, cfg.gpu_tests_timeout))
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        out, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = f"{err.stdout or ''}\n(stopped after {timeout:.0f} s)", "timeout"
    last = [line for line in out.splitlines() if line.strip()][-1:] or [""]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last[0])}
    return {"command": " ".join(cmd[1:]), "returncode": rc, "summary": last[0], "counts": counts,
            "tail": out[-6000:]}


def part_nasdm_pixel(cfg, budget: Budget) -> dict:
    """Pixel NASDM sampler steps by model size, batch size and precision (nasdm_sampling.py's rows)."""
    import nasdm_sampling

    rows, skipped = [], []
    for precision in cfg.precisions:
        for size in cfg.pixel_sizes:
            if not budget.fits(cfg.pixel_estimate_s):
                skipped.append(f"{size} {precision}: out of time")
                continue
            argv = ["--device", cfg.device, "--sizes", size, "--batch-sizes", ",".join(map(str, cfg.pixel_batches)),
                    "--steps", "50,100,250", "--guidance", "1.5", "--precision", precision,
                    "--image-size", str(cfg.pixel_image_size), "--warmup", "1", "--repeat", str(cfg.repeat)]
            try:
                rows.extend(nasdm_sampling.main(argv))
            except Exception as err:  # noqa: BLE001 - one failing cell must not cost the other parts
                skipped.append(f"{size} {precision}: {type(err).__name__}: {err}")
    return {"rows": rows, "skipped": skipped}


def part_nasdm_latent(cfg, budget: Budget) -> dict:
    """The embedded latent default: whole runs of its recommended sampler, masks batched (run_many)."""
    import batch_synthesis

    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest

    rows, skipped = [], []
    for precision in cfg.precisions:
        engine = NasdmEngine("default", device=cfg.device, precision=precision)
        steps = cfg.latent_steps or int(engine.recommended()["steps"])
        for batch in cfg.latent_batches:
            if not budget.fits(cfg.latent_estimate_s):
                skipped.append(f"batch {batch} {precision}: out of time")
                continue
            masks = batch_synthesis.random_masks(batch, engine.config.image_size, engine.scheme,
                                                 float(engine.config.mpp))
            requests = [NasdmRequest(nuclei=m, steps=steps, seed=k, batch_size=batch) for k, m in enumerate(masks)]
            try:
                engine.run_many(requests[:1])  # warm-up
                _peak_reset(engine.device)
                start = time.perf_counter()
                for _ in range(cfg.repeat):
                    engine.run_many(requests)
                seconds = (time.perf_counter() - start) / cfg.repeat
                rows.append({"model": "default", "family": "latent", "image_size": engine.config.image_size,
                             "precision": precision, "batch": batch, "steps": steps, "seconds_per_batch": seconds,
                             "patches_per_s": batch / seconds, "peak_mb": _peak_mb(engine.device)})
            except Exception as err:  # noqa: BLE001
                skipped.append(f"batch {batch} {precision}: {type(err).__name__}: {err}")
        engine.free()
    variants = _latent_variants(cfg, budget, skipped)
    return {"rows": rows, "variants": variants, "skipped": skipped}


#: The speed switches measured on the latent default at one precision and batch: weight layout,
#: torch.compile, and CUDA graphs (torch.compile's "reduce-overhead" mode replays the whole
#: denoiser as one graph; CUDA only).
LATENT_VARIANTS = {"eager": dict(channels_last=False, compile=False),
                   "channels_last": dict(channels_last=True, compile=False),
                   "compile": dict(channels_last=False, compile="default"),
                   "cuda_graphs": dict(channels_last=False, compile="reduce-overhead")}


def _latent_variants(cfg, budget: Budget, skipped: list) -> list:
    """Rows of the :data:`LATENT_VARIANTS` at ``cfg.variant_precision`` and ``cfg.variant_batch``: first
    run (compilation included) and steady seconds per batch, and the largest grey-level difference
    to the eager images (the switches must not change them beyond rounding)."""
    import batch_synthesis
    import numpy as np

    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest

    rows: list[dict] = []
    eager_images = None
    for name in cfg.latent_variants:
        if name not in LATENT_VARIANTS:
            skipped.append(f"variant {name}: unknown")
            continue
        if not budget.fits(cfg.variant_estimate_s):
            skipped.append(f"variant {name}: out of time")
            continue
        try:
            engine = NasdmEngine("default", device=cfg.device, precision=cfg.variant_precision,
                                 **LATENT_VARIANTS[name])
            masks = batch_synthesis.random_masks(cfg.variant_batch, engine.config.image_size, engine.scheme,
                                                 float(engine.config.mpp))
            steps = cfg.latent_steps or int(engine.recommended()["steps"])
            requests = [NasdmRequest(nuclei=m, steps=steps, seed=k, batch_size=cfg.variant_batch)
                        for k, m in enumerate(masks)]
            start = time.perf_counter()
            engine.run_many(requests)  # the first run compiles (or records the graphs)
            first = time.perf_counter() - start
            _peak_reset(engine.device)
            start = time.perf_counter()
            for _ in range(cfg.repeat):
                drawn = engine.run_many(requests)
            seconds = (time.perf_counter() - start) / cfg.repeat
            images = [r[0].image for r in drawn]
            if eager_images is None:
                eager_images = images
            diff = max(int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(images, eager_images))
            rows.append({"variant": name, **{k: str(v) for k, v in LATENT_VARIANTS[name].items()},
                         "precision": cfg.variant_precision, "batch": cfg.variant_batch, "steps": steps,
                         "first_run_s": first, "seconds_per_batch": seconds,
                         "patches_per_s": cfg.variant_batch / seconds, "peak_mb": _peak_mb(engine.device),
                         "max_grey_level_difference_to_first_variant": diff})
            engine.free()
        except Exception as err:  # noqa: BLE001 - one failing variant must not cost the others
            skipped.append(f"variant {name}: {type(err).__name__}: {err}")
    return rows


def part_transfer(cfg, budget: Budget) -> dict:
    """Appearance transfer, straightforward against optimised (appearance_transfer.py's result)."""
    import appearance_transfer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "transfer.json"
        appearance_transfer.main(["--model", cfg.transfer_model, "--device", cfg.device, "--steps",
                                  str(cfg.transfer_steps), "--skip", str(cfg.transfer_skip), "--json", str(path)])
        return json.loads(path.read_text())


def _synthetic_dataset(folder: Path, n: int, size: int) -> Path:
    """Image + mask pairs (dark nuclei on pink tissue, CoNSeP classes) to train on."""
    import numpy as np
    from skimage.io import imsave

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        inst = np.zeros((size, size), np.int32)
        classes = {}
        for i in range(1, 4 + size // 16):
            r, c = rng.integers(4, size - 4, 2)
            inst[(yy - r) ** 2 + (xx - c) ** 2 <= rng.uniform(2, 6) ** 2] = i
            classes[i] = int(rng.integers(1, 5))
        image = np.empty((size, size, 3), np.uint8)
        image[:] = (230, 150, 200)
        image[inst > 0] = (90, 40, 140)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        imsave(folder / f"img{k}.png", image, check_contrast=False)
        np.savez(folder / f"img{k}.npz", inst_map=inst, classes=np.array(sorted(classes.items())),
                 scheme=np.array("consep"), mpp=np.array(0.5))
    return folder


def _train(family: str, size: str, data: Path, out: Path, cfg, *, steps: int, batch: int, precision: str,
           cancel=None):
    """One training run (pixel or latent) with sample grids and checkpoints only at the end."""
    if family == "latent":
        from napari_histogen.core.latent.train import LatentTrainSettings, train_latent_nasdm

        settings = LatentTrainSettings(data=str(data), out=str(out), size=size, steps=steps, batch_size=batch,
                                       image_size=cfg.latent_image_size, mpp=0.25, source_mpp=0.5, overlap=0.0,
                                       min_tissue=0.0, val_fraction=0.25, sample_every=10**9,
                                       checkpoint_every=10**9, sample_steps=2, device=cfg.device,
                                       precision=precision if precision in ("fp32", "bf16") else "auto",
                                       transforms=1)
        return train_latent_nasdm(settings, cancel=cancel, log_fn=lambda m: None)
    from napari_histogen.core.nasdm.train import TrainSettings, train_nasdm

    settings = TrainSettings(data=str(data), out=str(out), size=size, steps=steps, batch_size=batch,
                             image_size=cfg.pixel_image_size, min_tissue=0.0, val_fraction=0.25,
                             sample_every=10**9, checkpoint_every=10**9, sample_steps=2, device=cfg.device,
                             precision=precision)
    return train_nasdm(settings, cancel=cancel, log=lambda m: None)


def _patches_per_s(run_dir: Path) -> float | None:
    """The last ``patches_per_s`` of a run's log.csv (the steps after the first row: warm)."""
    import csv

    with open(run_dir / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["patches_per_s"]) if rows else None


def part_training(cfg, budget: Budget, data: Path) -> dict:
    """Training throughput of pixel and latent NASDM per precision (synthetic data, random init)."""
    rows, skipped = [], []
    for family, size, batch in cfg.train_grid:
        for precision in cfg.precisions:
            if family == "latent" and precision == "fp16":
                continue  # latent training runs fp32 or bf16
            if not budget.fits(cfg.train_estimate_s):
                skipped.append(f"{family} {size} {precision}: out of time")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    start = time.perf_counter()
                    _train(family, size, data, Path(tmp) / "run", cfg, steps=cfg.train_steps, batch=batch,
                           precision=precision)
                    rows.append({"family": family, "size": size, "batch": batch, "precision": precision,
                                 "steps": cfg.train_steps, "seconds": time.perf_counter() - start,
                                 "patches_per_s_last_window": _patches_per_s(Path(tmp) / "run")})
                except Exception as err:  # noqa: BLE001
                    skipped.append(f"{family} {size} {precision}: {type(err).__name__}: {err}")
    return {"rows": rows, "skipped": skipped, "note": "log windows of 10 steps; the first window includes warm-up"}


def part_train_run(cfg, budget: Budget, data: Path, out: Path) -> dict:
    """Train ``--train-model`` (family:size) for ``--train-minutes``; keep its weights when small enough."""
    from napari_histogen.core.progress import CancelToken

    family, _, size = cfg.train_model.partition(":")
    seconds = min(cfg.train_minutes * 60, budget.left() - 10)
    if seconds < 1:
        return {"skipped": "out of time"}
    token = CancelToken()
    deadline = time.perf_counter() + seconds

    def cancel():
        if time.perf_counter() > deadline:
            token.cancel()
        return token.cancelled

    run_dir = Path(tempfile.mkdtemp(prefix="histogen-train-"))
    result = _train(family, size or "small", Path(cfg.train_data) if cfg.train_data else data, run_dir / "run", cfg,
                    steps=10**7, batch=cfg.train_batch, precision="auto", cancel=cancel)
    report = {"model": cfg.train_model, "steps": result.step, "seconds": result.seconds,
              "last_loss": result.last_loss, "data": cfg.train_data or "synthetic"}
    weights = Path(result.model_path)
    if weights.is_file() and weights.stat().st_size <= MAX_WEIGHTS_BYTES:
        (out / "trained_model.safetensors").write_bytes(weights.read_bytes())
        record = json.loads(weights.with_suffix(".json").read_text())
        record.setdefault("weights", {})["file"] = "trained_model.safetensors"
        (out / "trained_model.json").write_text(json.dumps(record, indent=2))
        report["weights"] = "trained_model.safetensors"
    else:
        report["weights"] = f"not kept ({weights.stat().st_size / 2**20:.0f} MB > 16 MB)" if weights.is_file() else None
    return report


# -- configuration ---------------------------------------------------------------------------------
def configure(args) -> argparse.Namespace:
    """The grids: the issue's on CUDA, tiny ones for ``--dry-run``."""
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    cfg = argparse.Namespace(**vars(args))
    cfg.device = "cuda" if cuda else "cpu"
    if cuda:
        cfg.precisions = ["bf16", "fp16", "fp32"] if args.precisions is None else args.precisions.split(",")
        cfg.pixel_sizes, cfg.pixel_image_size, cfg.pixel_batches = ["paper", "small"], 128, [1, 4, 16, 64]
        cfg.latent_batches, cfg.latent_steps, cfg.latent_image_size = [1, 8, 32, 64], None, 256
        cfg.latent_variants = ["eager", "channels_last", "compile", "cuda_graphs"]
        cfg.variant_precision, cfg.variant_batch, cfg.variant_estimate_s = cfg.precisions[0], 32, 60.0
        cfg.transfer_model, cfg.transfer_steps, cfg.transfer_skip = "sd15", 100, 32
        cfg.train_grid, cfg.train_steps = [("pixel", "paper", 8), ("pixel", "small", 32), ("latent", "small", 32)], 30
        cfg.repeat, cfg.gpu_tests_timeout = 3, 240.0
        cfg.pixel_estimate_s, cfg.latent_estimate_s, cfg.train_estimate_s = 25.0, 20.0, 40.0
        cfg.data_images, cfg.data_size = 8, 256
    else:
        cfg.precisions = ["fp32"]
        cfg.pixel_sizes, cfg.pixel_image_size, cfg.pixel_batches = ["tiny"], 32, [1, 2]
        cfg.latent_batches, cfg.latent_steps, cfg.latent_image_size = [2], 2, 64
        # CUDA graphs and compilation need a GPU (and minutes of compiling on CPU): layouts only
        cfg.latent_variants = ["eager", "channels_last"]
        cfg.variant_precision, cfg.variant_batch, cfg.variant_estimate_s = "fp32", 2, 1.0
        cfg.transfer_model, cfg.transfer_steps, cfg.transfer_skip = "tiny", 4, 1
        cfg.train_grid, cfg.train_steps = [("pixel", "tiny", 2), ("latent", "tiny", 2)], 2
        cfg.repeat, cfg.gpu_tests_timeout = 1, 120.0
        cfg.pixel_estimate_s, cfg.latent_estimate_s, cfg.train_estimate_s = 1.0, 1.0, 1.0
        cfg.data_images, cfg.data_size = 4, 32
        cfg.train_model = "pixel:tiny" if args.train_model.startswith("pixel") else "latent:tiny"
    return cfg


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=12.0, help="minutes for the whole check")
    parser.add_argument("--out", default=os.environ.get("OUT") or "device-check", help="result folder (default $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="every part on CPU with tiny models and grids")
    parser.add_argument("--parts", default="gpu_tests,nasdm_pixel,nasdm_latent,transfer,training",
                        help="comma list of the parts to run")
    parser.add_argument("--precisions", default=None, help="CUDA: comma list (default bf16,fp16,fp32)")
    parser.add_argument("--train-minutes", type=float, default=0.0, help="also train --train-model this long")
    parser.add_argument("--train-model", default="pixel:small", help="family:size, e.g. pixel:small, latent:small")
    parser.add_argument("--train-data", default=None, help="dataset for the training run (default: synthetic)")
    parser.add_argument("--train-batch", type=int, default=16)
    args = parser.parse_args(argv)

    import torch

    budget = Budget(args.budget)
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = configure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    summary: dict = {"machine": machine(device), "budget_minutes": args.budget, "dry_run": args.dry_run,
                     "parts": {}, "skipped": {}}
    with tempfile.TemporaryDirectory() as tmp:
        made: list[Path] = []

        def data() -> Path:  # made once, when a training part needs it
            if not made:
                made.append(_synthetic_dataset(Path(tmp) / "data", n=cfg.data_images, size=cfg.data_size))
            return made[0]

        parts = {"gpu_tests": (lambda: part_gpu_tests(cfg, budget), 20),
                 "nasdm_pixel": (lambda: part_nasdm_pixel(cfg, budget), 10),
                 "nasdm_latent": (lambda: part_nasdm_latent(cfg, budget), 10),
                 "transfer": (lambda: part_transfer(cfg, budget), 60 if device.type == "cuda" else 5),
                 "training": (lambda: part_training(cfg, budget, data()), 10)}
        wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
        if args.train_minutes > 0:
            wanted.append("train_run")
            parts["train_run"] = (lambda: part_train_run(cfg, budget, data(), out), 11)
        for name in wanted:
            if name not in parts:
                summary["skipped"][name] = "unknown part"
                continue
            run, minimum = parts[name]
            if not budget.fits(minimum):
                summary["skipped"][name] = f"out of time ({budget.left():.0f} s left, needs about {minimum} s)"
                continue
            start = time.perf_counter()
            try:
                result = run()
                status = "done"
            except Exception as err:  # noqa: BLE001 - report it and go on to the next part
                result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
                status = "failed"
            summary["parts"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1)}
            if name != "train_run":
                (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
            else:
                summary["train_run"] = result
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary["seconds"] = round(time.perf_counter() - budget.start, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: summary[k] for k in ("parts", "skipped", "seconds")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
