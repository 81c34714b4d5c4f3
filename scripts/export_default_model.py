"""Ship a training run's EMA weights as an embedded NASDM model (maintainers' tool).

    .venv/bin/python scripts/export_default_model.py RUN_DIR [--name default|pixel] [--dtype fp16] \
        [--check-masks 4 --check-steps 20] [--set default_guidance=1.0 ...]

Writes ``src/napari_histogen/models/<folder of NAME>/nasdm.safetensors`` (+ ``nasdm.json`` and
``SHA256.json``, which the engine checks on load), recording the run's step, training
time and log summary in the config; ``--set KEY=VALUE`` records sampling recommendations
(``default_guidance``, ``default_steps``, ``sampler``, ``sampler_variance``) measured with
``benchmarks/nasdm_quality.py``. Works for pixel and latent runs. With fp16 it first samples a few validation masks with
the fp32 and the fp16 weights (same seeds) and prints how far the images differ, so the
model card can say whether the quality holds.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "src" / "napari_histogen" / "models"


def main(argv=None) -> int:
    import torch

    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
    from napari_histogen.core.masks import NucleiMask
    from napari_histogen.core.nasdm.checkpoint import file_sha256, load_nasdm, save_nasdm
    from napari_histogen.core.nasdm.patchset import build_patch_set

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from napari_histogen.core.models.registry import EMBEDDED_NASDM

    parser.add_argument("run", help="training run folder")
    parser.add_argument("--name", default="default", choices=sorted(EMBEDDED_NASDM))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="sampling recommendation recorded in the model's training record")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--check-masks", type=int, default=4)
    parser.add_argument("--check-steps", type=int, default=20)
    args = parser.parse_args(argv)

    target = MODELS / EMBEDDED_NASDM[args.name]
    run = Path(args.run)
    loaded = load_nasdm(run / "model")
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    rows = list(csv.DictReader(open(run / "log.csv")))
    settings = json.loads((run / "run.json").read_text())["settings"]
    config = loaded.config
    family = getattr(config, "family", "pixel")
    keys = ("size", "batch_size", "lr", "ema_decay", "cond_drop", "mpp", "image_size", "min_tissue", "val_fraction",
            "seed") + (("prediction", "min_snr_gamma", "warmup", "transforms") if family == "latent" else ())
    config.training.update({
        "model_id": "nasdm-latent-consep-cpu" if family == "latent" else "nasdm-consep-cpu",
        "steps": int(state["step"]),
        "train_seconds_logged": float(rows[-1]["seconds"]) if rows else None,
        "final_loss_window": float(rows[-1]["loss"]) if rows else None,
        "settings": {k: settings[k] for k in keys if k in settings},
        "data": "CoNSeP train split, 256 px patches (research use only; cite HoVer-Net)",
    })
    config.training.pop("run", None)
    summary = config.training.get("data_summary") or {}
    # no machine paths in a shipped model: keep the dataset folder's name only
    summary["data"] = ["../shared/data/" + Path(str(d)).name for d in summary.get("data", [])]
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in ("default_guidance", "default_steps", "sampler", "sampler_variance"):
            parser.error(f"--set takes default_guidance, default_steps, sampler or sampler_variance, not {key!r}")
        config.training[key] = float(value) if key == "default_guidance" else int(value) if key == "default_steps" \
            else value
    dtype = torch.float16 if args.dtype == "fp16" else None
    net = getattr(loaded.model, "net", loaded.model)  # a latent model: its denoiser (TAEF2 ships apart)
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "_candidate"
    path = save_nasdm(net, config, tmp / "nasdm.safetensors", dtype=dtype)

    if dtype is not None and args.check_masks:
        ps = build_patch_set(config.training.get("data_summary", {}).get("data", ["../shared/data/consep_patches256"])[0],
                             target_mpp=config.mpp, patch_size=config.image_size, seed=settings["seed"],
                             val_fraction=settings["val_fraction"], min_tissue=settings["min_tissue"])
        full = NasdmEngine(run / "model", device="cpu")
        half = NasdmEngine(path, device="cpu")
        diffs = []
        for i, ref in enumerate(ps.val[: args.check_masks]):
            _, inst, classes = ps.crop(ref)
            mask = NucleiMask.create(np.ascontiguousarray(inst), classes, config.scheme["name"], mpp=config.mpp)
            rec = half.recommended()  # the same settings for both (the fp32 run's record may differ)
            req = NasdmRequest(nuclei=mask, steps=args.check_steps, seed=i, guidance=rec["guidance"],
                               sampler=rec["sampler"], variance=rec["variance"])
            a = full.run(req)[0].image.astype(float)
            b = half.run(req)[0].image.astype(float)
            diffs.append((np.abs(a - b).mean(), np.abs(a - b).max()))
        mean = float(np.mean([d[0] for d in diffs]))
        print(f"fp16 vs fp32 weights, {len(diffs)} validation masks, {args.check_steps} steps, same seeds: "
              f"mean |diff| {mean:.2f} grey levels, max {max(d[1] for d in diffs):.0f}")
        config.training["fp16_check"] = {"masks": len(diffs), "steps": args.check_steps,
                                         "mean_abs_diff_grey_levels": mean}
        path = save_nasdm(net, config, tmp / "nasdm.safetensors", dtype=dtype)
    for name in ("nasdm.safetensors", "nasdm.json"):
        (tmp / name).replace(target / name)
    tmp.rmdir()
    sha = file_sha256(target / "nasdm.safetensors")
    (target / "SHA256.json").write_text(json.dumps({"file": "nasdm.safetensors", "sha256": sha}, indent=2) + "\n")
    print(f"Shipped {target / 'nasdm.safetensors'} ({(target / 'nasdm.safetensors').stat().st_size / 2**20:.1f} MiB, "
          f"sha256 {sha}) from step {state['step']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
