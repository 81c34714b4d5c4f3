"""Ship a mask-generation training run's EMA weights as the embedded default (maintainers' tool).

    .venv/bin/python scripts/export_maskgen_model.py RUN_DIR [--dtype fp16] [--check-masks 8]

Writes ``src/napari_histogen/models/maskgen_default/maskgen.safetensors`` (+ ``maskgen.json``
and ``SHA256.json``, which the engine checks on load), recording the run's step, training
time and final loss, with machine paths removed. With fp16 it first draws masks with the fp32
and the fp16 weights (same seeds, same type vectors) and prints how far the decoded masks
differ, so the model card can say whether fp16 holds.
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


def _masks(model_path, types, n, steps):
    from napari_histogen.core.engines.maskgen import MaskGenEngine, MaskGenRequest

    engine = MaskGenEngine(model_path, device="cpu")
    try:
        return [r.mask for r in engine.run(MaskGenRequest(types=types, n_samples=n, seed=0, steps=steps))]
    finally:
        engine.free()


def main(argv=None) -> int:
    import torch

    from napari_histogen.core.maskgen.checkpoint import load_maskgen, save_maskgen
    from napari_histogen.core.models.registry import EMBEDDED_MASKGEN
    from napari_histogen.core.nasdm.checkpoint import file_sha256

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="training run folder (histogen train maskgen --out RUN)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--check-masks", type=int, default=8)
    parser.add_argument("--check-steps", type=int, default=20)
    args = parser.parse_args(argv)

    run = Path(args.run)
    target = MODELS / EMBEDDED_MASKGEN["default"]
    loaded = load_maskgen(run / "model")
    config = loaded.config
    rows = list(csv.DictReader(open(run / "log.csv")))
    config.training.update({
        "model_id": "maskgen-consep-cpu",
        "steps": int(rows[-1]["step"]) if rows else None,
        "train_seconds_logged": float(rows[-1]["seconds"]) if rows and "seconds" in rows[-1] else None,
        "data": "CoNSeP train split, 256 px patches (research use only; cite HoVer-Net)",
    })
    config.training.pop("run", None)
    summary = config.training.get("data_summary") or {}
    # no machine paths in a shipped model: keep the dataset folder's name only
    summary["data"] = ["../shared/data/" + Path(str(d)).name for d in summary.get("data", [])]
    if "data" in config.training and isinstance(config.training["data"], str) and "/" in config.training["data"]:
        config.training["data"] = Path(config.training["data"]).name
    dtype = torch.float16 if args.dtype == "fp16" else None
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / "_candidate"
    path = save_maskgen(loaded.model, config, tmp / "maskgen.safetensors", dtype=dtype)
    if dtype is not None and args.check_masks:
        types = list(config.class_ids)
        full = _masks(run / "model", types, args.check_masks, args.check_steps)
        half = _masks(path, types, args.check_masks, args.check_steps)
        agree = float(np.mean([np.mean((a.instances > 0) == (b.instances > 0)) for a, b in zip(full, half)]))
        counts = [(a.n_nuclei, b.n_nuclei) for a, b in zip(full, half)]
        print(f"fp16 vs fp32 weights, {len(full)} masks (types {types}), {args.check_steps} steps, same seeds: "
              f"foreground agreement {agree:.4f}; nuclei counts fp32/fp16 {counts}")
        config.training["fp16_check"] = {"masks": len(full), "steps": args.check_steps,
                                         "foreground_pixel_agreement": agree}
        path = save_maskgen(loaded.model, config, tmp / "maskgen.safetensors", dtype=dtype)
    for name in ("maskgen.safetensors", "maskgen.json"):
        (tmp / name).replace(target / name)
    tmp.rmdir()
    sha = file_sha256(target / "maskgen.safetensors")
    (target / "SHA256.json").write_text(json.dumps({"file": "maskgen.safetensors", "sha256": sha}, indent=2) + "\n")
    size = (target / "maskgen.safetensors").stat().st_size / 2**20
    print(f"Shipped {target / 'maskgen.safetensors'} ({size:.1f} MiB, sha256 {sha}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
