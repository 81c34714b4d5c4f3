"""``histogen generate`` (nuclei masks from nucleus types, then images) and ``histogen train maskgen``.

``cli.py`` wires :func:`add_generate_parser` under ``histogen``; ``cli_nasdm.add_train_parser``
adds :func:`add_train_maskgen_parser` under ``histogen train``.
"""

from __future__ import annotations

import argparse

from .cli_common import ProgressBar, out_dir_arg, positive_float, positive_int, run_training, seed_int

__all__ = ["add_generate_parser", "add_train_maskgen_parser", "cmd_generate", "cmd_train_maskgen"]


def _guidance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 <= value <= 20:
        raise argparse.ArgumentTypeError(f"guidance must be between 0 and 20, not {text}")
    return value


def cmd_generate(args) -> int:
    """Generate masks for nucleus types with the mask model, then images with the NASDM model; write them."""
    from .core.generate import generate_pairs

    types = [t.strip() for t in (args.types or "").split(",") if t.strip()]
    bar = ProgressBar("generation", "stage")
    try:
        report = generate_pairs(types, args.n, args.out, mask_model=args.mask_model, image_model=args.image_model,
                                seed=args.seed, steps=args.steps, guidance=args.guidance,
                                image_steps=args.image_steps, image_guidance=args.image_guidance,
                                masks_only=args.masks_only, mpp=args.mpp, device=args.device, progress=bar,
                                log_fn=lambda m: None)
    finally:
        bar.close()
    what = "mask(s)" if args.masks_only else "image + mask pairs"
    print(f"Wrote {len(report.written)} {what} to {args.out}"
          + (f"; skipped {len(report.skipped)}:" if report.skipped else "."))
    for name, reason in report.skipped:
        print(f"  {name}: {reason}")
    return 0 if report.written else 2


def add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate", help="generate nuclei masks from the nucleus types wanted, then H&E images (NASDM++)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Draw N nuclei masks that contain the given nucleus types with the mask-generation model, "
                    "synthesize an H&E image for each with the NASDM model, and write OUT/pairs/ (PNG, .npz mask, "
                    "OME-TIFF, side-by-side PNG, provenance JSON naming both models), OUT/dataset/ (images/*.png, "
                    "labels/*.npz, *_inst.npy/.tif, *_type.npy/.png: a training set for `histogen train nasdm` "
                    "and segmentation code) and OUT/generate.json. --masks-only writes OUT/masks/ instead.")
    p.add_argument("--types", default="", help="nucleus types to include, comma-separated names or ids of the "
                                               "model's scheme (CoNSeP: other, inflammatory, epithelial, spindle); "
                                               "empty: any")
    p.add_argument("--n", type=positive_int, default=1, help="masks (and images) to make")
    p.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    p.add_argument("--mask-model", default=None, help="mask-generation model (default: the embedded one)")
    p.add_argument("--image-model", default=None, help="NASDM model (default: the embedded one)")
    p.add_argument("--seed", type=seed_int, default=0, help="pair k uses seed + k")
    p.add_argument("--steps", type=positive_int, default=None, help="mask sampling steps (default: the model's)")
    p.add_argument("--guidance", type=_guidance, default=None, help="mask guidance scale (default: the model's)")
    p.add_argument("--image-steps", type=positive_int, default=None, help="image sampling steps (default: the model's)")
    p.add_argument("--image-guidance", type=_guidance, default=None, help="image guidance (default: the model's)")
    p.add_argument("--mpp", type=positive_float, default=None,
                   help="µm/px of the masks (default: the image model's scale)")
    p.add_argument("--masks-only", action="store_true", help="write the masks only (no image model)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_generate)


def cmd_train_maskgen(args) -> int:
    """Train or resume a mask-generation model."""
    from .core.maskgen.train import MaskGenTrainSettings, train_maskgen

    settings = MaskGenTrainSettings(
        data=args.data, out=args.out, fmt=args.format, scheme=args.scheme, source_mpp=args.source_mpp,
        image_size=args.patch_size, mpp=args.mpp, crop=args.crop, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, cond_drop=args.cond_drop, ema_decay=args.ema, min_tissue=args.min_tissue,
        val_fraction=args.val_fraction, checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
        device=args.device, seed=args.seed, threads=args.threads, precision=args.precision)
    return run_training(train_maskgen, settings)


def add_train_maskgen_parser(engines) -> None:
    """``histogen train maskgen`` (defaults: :class:`MaskGenTrainSettings`'s)."""
    from dataclasses import fields

    from .core.maskgen.train import MaskGenTrainSettings

    d = {f.name: f.default for f in fields(MaskGenTrainSettings)}
    p = engines.add_parser(
        "maskgen", help="train or resume a mask-generation model (NASDM++) on nuclei masks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the diffusion model over nuclei masks on a labelled dataset (the NASDM data pipeline "
                    "and split: the same validation images are held out). Running it again with the same --out "
                    "resumes (--steps is the total). RUN_DIR gets run.json, log.csv, samples/*.png, "
                    "checkpoints/last/ and model/maskgen.safetensors (+ .json with sha256).")
    p.add_argument("--data", required=True, help="dataset file or folder (as `histogen train nasdm`)")
    p.add_argument("--format", default="auto", help="auto, lizard, consep, pannuke, conic or folder")
    p.add_argument("--out", required=True, type=out_dir_arg, help="run folder (created, or resumed)")
    p.add_argument("--steps", type=positive_int, default=d["steps"], help="total optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"])
    p.add_argument("--lr", type=positive_float, default=d["lr"], help="AdamW learning rate after warm-up")
    p.add_argument("--cond-drop", type=float, default=d["cond_drop"], help="null type vector probability (CFG)")
    p.add_argument("--ema", type=float, default=d["ema_decay"], help="EMA decay")
    p.add_argument("--patch-size", type=positive_int, default=d["image_size"], help="window side in px at --mpp")
    p.add_argument("--mpp", type=positive_float, default=d["mpp"], help="model scale in µm/px (0.5 = 20x)")
    p.add_argument("--crop", type=positive_int, default=d["crop"], help="random training crop side in px")
    p.add_argument("--source-mpp", type=positive_float, default=None, help="scale of the data when its format does not say")
    p.add_argument("--min-tissue", type=float, default=d["min_tissue"], help="drop windows with less tissue")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"], help="validation share, by source image")
    p.add_argument("--scheme", default=None, help="class scheme for formats that do not record one")
    p.add_argument("--sample-every", type=positive_int, default=d["sample_every"], help="steps between sample grids")
    p.add_argument("--checkpoint-every", type=positive_int, default=d["checkpoint_every"],
                   help="steps between checkpoints")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seed", type=seed_int, default=0)
    p.set_defaults(func=cmd_train_maskgen)
