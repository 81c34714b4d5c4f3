"""Folder synthesis batched across masks vs one mask at a time: seconds per patch and the speed-up.

For a model (the embedded default, or a random pixel NASDM of a preset size at a patch size),
draws one sample for each of ``--masks`` random masks twice: one mask at a time
(``NasdmEngine.run`` per mask, the network batch is 1 image) and batched across masks
(``NasdmEngine.run_many`` with ``--batch-size`` images per network call), and checks that the
images agree (largest difference in grey levels). Random weights cost the same as trained ones.

Run (CPU, one thread, a few minutes)::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/batch_synthesis.py --model default \
        --masks 8 --batch-size 8 --steps 10
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/batch_synthesis.py --model pixel:small:128 \
        --masks 8 --batch-size 8 --steps 5

``--precision bf16`` (CPUs with native bf16, and CUDA), ``--channels-last on|off``, ``--compile``
and ``--repeat N`` (fastest of N alternating runs) select the variant; ``--json FILE`` also
writes the row.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_histogen.core.devices import describe_device
from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
from napari_histogen.core.masks import NucleiMask


def save_random_pixel_model(folder: Path, size: str, image_size: int, scheme: str = "consep") -> Path:
    """A pixel NASDM of preset ``size`` with random (non-zero) weights, saved as a model file."""
    from napari_histogen.core.diffusion.gaussian import GaussianDiffusion
    from napari_histogen.core.nasdm.checkpoint import NasdmModelConfig, save_nasdm
    from napari_histogen.core.nasdm.condition import condition_channels
    from napari_histogen.core.nasdm.unet import NasdmUNet, preset_config
    from napari_histogen.core.schemes import get_scheme

    sch = get_scheme(scheme)
    torch.manual_seed(0)
    model = NasdmUNet(preset_config(size, image_size=image_size, cond_channels=condition_channels(sch.ids)))
    with torch.no_grad():  # zero-initialised output layers would make every image the same
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    config = NasdmModelConfig(unet=model.config.to_dict(), diffusion=GaussianDiffusion().config(),
                              scheme=sch.to_dict(), class_ids=list(sch.ids), mpp=0.5,
                              training={"model_id": f"random-{size}"})
    return save_nasdm(model, config, folder / "nasdm.safetensors")


def random_masks(n: int, size: int, scheme, mpp: float, seed: int = 0) -> list[NucleiMask]:
    """``n`` masks of ``size`` px with 5-30 round nuclei of the scheme's classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        inst = np.zeros((size, size), np.int32)
        classes = {}
        for i in range(1, int(rng.integers(5, 31))):
            r, c = rng.integers(0, size, 2)
            rad = rng.uniform(size / 64, size / 24) + 1
            inst[(yy - r) ** 2 + (xx - c) ** 2 <= rad ** 2] = i
            classes[i] = int(rng.choice(scheme.ids))
        present = {i: k for i, k in classes.items() if (inst == i).any()}
        out.append(NucleiMask.create(inst, present, scheme, mpp=mpp))
    return out


def measure(engine: NasdmEngine, n_masks: int, batch_size: int, steps: int | None, seed: int = 0,
            repeat: int = 1) -> dict:
    """Seconds per patch one mask at a time and batched, the speed-up and the largest image difference.

    With ``repeat`` > 1 both are timed that many times, alternating, and the fastest run counts
    (a shared machine only ever slows a run down).
    """
    masks = random_masks(n_masks, engine.config.image_size, engine.scheme, float(engine.config.mpp), seed)
    requests = [NasdmRequest(nuclei=m, n_samples=1, steps=steps, seed=seed, batch_size=batch_size) for m in masks]
    engine.run(requests[0])  # warm-up (first-call allocations)
    engine.run_many(requests[:batch_size])  # and of the batched shapes (a compiled model compiles them here)
    t_alone = t_batched = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        alone = [engine.run(r)[0].image for r in requests]
        t_alone = min(t_alone, time.perf_counter() - start)
        start = time.perf_counter()
        batched = [res[0].image for res in engine.run_many(requests)]
        t_batched = min(t_batched, time.perf_counter() - start)
    diffs = [np.abs(a.astype(np.int16) - b.astype(np.int16)) for a, b in zip(alone, batched)]
    return {"model": engine.model_spec, "family": getattr(engine.config, "family", "pixel"),
            "image_size": engine.config.image_size, "device": describe_device(engine.device),
            "threads": torch.get_num_threads(), "masks": n_masks, "batch_size": batch_size,
            "precision": str(engine.autocast_dtype).replace("torch.", "") if engine.autocast_dtype else "fp32",
            "channels_last": engine.channels_last, "compiled": engine.compiled, "repeat": repeat,
            "steps": int(steps or engine.recommended()["steps"]),
            "s_per_patch_one_at_a_time": t_alone / n_masks, "s_per_patch_batched": t_batched / n_masks,
            "speedup": t_alone / t_batched, "max_grey_level_difference": int(max(d.max() for d in diffs)),
            "values_differing": float(np.mean([(d > 0).mean() for d in diffs]))}


def open_engine(spec: str, device: str, precision: str, folder: Path, **options) -> NasdmEngine:
    """``default`` / a model path, or ``pixel:SIZE:PX`` for a random pixel model (``options``: the
    engine's ``channels_last`` and ``compile``)."""
    if spec.startswith("pixel:"):
        _, size, px = spec.split(":")
        spec = str(save_random_pixel_model(folder, size, int(px)))
    return NasdmEngine(spec, device=device, precision=precision, **options)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="default, a model path, or pixel:SIZE:PX (random)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                        help="weights channels-last (auto: the engine's default, on for CPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    parser.add_argument("--repeat", type=int, default=1, help="time both ways this often, keep the fastest")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layout = {"auto": None, "on": True, "off": False}[args.channels_last]
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(args.model, args.device, args.precision, Path(tmp), channels_last=layout,
                             compile=args.compile)
        row = measure(engine, args.masks, args.batch_size, args.steps, repeat=args.repeat)
    print(json.dumps(row, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    return row


if __name__ == "__main__":
    main()
