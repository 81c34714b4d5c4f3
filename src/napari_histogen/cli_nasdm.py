"""``histogen train nasdm``, ``histogen synthesize nasdm|transfer`` and ``histogen models``, headless."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_train_parser", "add_synthesize_parser", "add_models_parser"]


class _Bar:
    """A tqdm progress bar on stderr driven by ``(done, total)`` callbacks."""

    def __init__(self, desc: str, unit: str):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, dynamic_ncols=True,
                            initial=max(done - 1, 0))
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_train_nasdm(args) -> int:
    """Train or resume a NASDM model on a labelled dataset."""
    from .core.nasdm.train import TrainSettings, train_nasdm

    settings = TrainSettings(
        data=args.data, out=args.out, fmt=args.format, size=args.size, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, cond_drop=args.cond_drop, ema_decay=args.ema, image_size=args.patch_size, mpp=args.mpp,
        overlap=args.overlap, min_tissue=args.min_tissue, val_fraction=args.val_fraction,
        stain_norm=None if args.stain_norm == "none" else args.stain_norm, init=args.init,
        sample_every=args.sample_every, checkpoint_every=args.checkpoint_every, sample_steps=args.sample_steps,
        device=args.device, precision=args.precision, seed=args.seed, scheme=args.scheme, source_mpp=args.source_mpp,
        workers=args.workers, max_patches=args.max_patches)
    bar = _Bar("training", "step")
    try:
        result = train_nasdm(settings, progress=bar, log=lambda msg: print(msg, file=sys.stderr))
    finally:
        bar.close()
    print(f"Trained to step {result.step} in {result.seconds:.0f} s (last loss {result.last_loss}).")
    print(f"  model        {result.model_path}")
    for grid in result.sample_grids[-1:]:
        print(f"  sample grid  {grid}")
    print(f"  log          {result.run_dir / 'log.csv'}")
    return 0


def cmd_synthesize_nasdm(args) -> int:
    """Synthesize images for nuclei masks with a NASDM model."""
    from .core.engines.nasdm import NasdmEngine
    from .core.nasdm.batch import collect_masks, synthesize_masks

    paths = collect_masks(args.mask)
    engine = NasdmEngine(args.model, device=args.device, precision=args.precision)
    info = engine.describe()
    print(f"Model {info['model']} ({info['weights']}, sha256 {info['sha256'][:12]}..."
          f"{' checked' if info['sha256_checked'] else ''}), scheme {info['scheme']}, {info['image_size']} px "
          f"at {info['mpp']:g} µm/px, device {engine.device}.", file=sys.stderr)
    bar = _Bar("synthesis", "step")
    try:
        report = synthesize_masks(paths, args.out, engine, n_samples=args.n, steps=args.steps, guidance=args.guidance,
                                  sampler=args.sampler, seed=args.seed, batch_size=args.batch_size, tile=args.tile,
                                  scheme=args.scheme, progress=bar, log=lambda msg: print(msg, file=sys.stderr))
    finally:
        bar.close()
    print(f"Wrote {len(report.written)} image + mask pairs to {args.out}"
          + (f"; skipped {len(report.skipped)} mask(s):" if report.skipped else "."))
    for path, reason in report.skipped:
        print(f"  {path}: {reason}")
    return 0 if report.written else 2


def cmd_models(args) -> int:
    """List the NASDM models this installation can use without a network."""
    from .core.models.registry import list_nasdm_models, model_cache_dir

    models = list_nasdm_models()
    for name, path in models.items():
        print(f"{name:20s} {path}")
    if not models:
        print("No NASDM models installed.")
    print(f"(cache folder: {model_cache_dir()}; put a model's .safetensors + .json in a subfolder there)")
    from .cli_transfer import sd_model_lines

    for line in sd_model_lines():
        print(line)
    return 0


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train a synthesis model (nasdm)")
    engines = train.add_subparsers(dest="engine", metavar="ENGINE", required=True)
    p = engines.add_parser(
        "nasdm", help="train or resume a NASDM model on nuclei masks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train NASDM on a labelled nuclei dataset. Running it again with the same --out resumes from "
                    "the last checkpoint (--steps is the total). RUN_DIR gets run.json, log.csv, samples/*.png, "
                    "checkpoints/last/ and model/nasdm.safetensors (EMA weights + .json with sha256).")
    p.add_argument("--data", required=True, help="dataset file or folder (Lizard Labels/, CoNSeP Train/ or patch "
                                                 "folders, PanNuke/CoNIC .npy folder, image+mask folder)")
    p.add_argument("--format", default="auto", help="auto, lizard, consep, pannuke, conic or folder")
    p.add_argument("--out", required=True, help="run folder (created, or resumed)")
    p.add_argument("--size", default="small", help="model size: paper (256 ch), small (128), cpu (64), tiny (tests)")
    p.add_argument("--steps", type=int, default=10000, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (2e-5 to fine-tune)")
    p.add_argument("--cond-drop", type=float, default=0.2, help="condition dropout for classifier-free guidance")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--mpp", type=float, default=0.5, help="model scale in µm/px (0.5 = 20x; 40x data is resampled)")
    p.add_argument("--source-mpp", type=float, default=None, help="scale of the data when its format does not say")
    p.add_argument("--overlap", type=float, default=0.5, help="patch overlap")
    p.add_argument("--min-tissue", type=float, default=0.5, help="drop patches with less tissue than this fraction")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share, split by source image")
    p.add_argument("--stain-norm", default="none", help="none, macenko or vahadane (reference: the image with most tissue)")
    p.add_argument("--scheme", default=None, help="class scheme for formats that do not record one")
    p.add_argument("--init", default=None, help="start from these NASDM weights (fine-tuning)")
    p.add_argument("--sample-every", type=int, default=1000, help="steps between sample grids")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--sample-steps", type=int, default=50, help="respaced DDPM steps for sample grids")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", help="auto (bf16/fp16 on CUDA), fp32, bf16, fp16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--max-patches", type=int, default=None, help="use only the first N training patches")
    p.set_defaults(func=cmd_train_nasdm)


def add_synthesize_parser(sub) -> None:
    synth = sub.add_parser("synthesize", help="synthesize images for masks (nasdm)")
    engines = synth.add_subparsers(dest="engine", metavar="ENGINE", required=True)
    from .cli_transfer import add_transfer_parser

    add_transfer_parser(engines)
    p = engines.add_parser(
        "nasdm", help="H&E patches that follow nuclei masks, with a NASDM model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For every mask (a .npz/.ome.tif/.mat/.geojson file, FILE.npy::N, or a folder of them) draw N "
                    "images and write <mask>_s<seed>.png, .npz (mask), .ome.tif, _side_by_side.png and .json "
                    "(provenance) to --out.")
    p.add_argument("--mask", required=True, help="mask file or folder")
    p.add_argument("--model", default="default", help="'default' (embedded), a cached model name, or a model path")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=1, help="samples per mask")
    p.add_argument("--steps", type=int, default=None,
                   help="respaced sampling steps (1000 = full chain); default 250 on CUDA, 75 on CPU")
    p.add_argument("--guidance", type=float, default=1.5, help="classifier-free guidance scale s")
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim"))
    p.add_argument("--seed", type=int, default=0, help="sample k uses seed + k")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tile", action="store_true", help="cut masks larger than the model's patch into tiles")
    p.add_argument("--scheme", default=None, help="class scheme for mask files that do not record one")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16, fp16")
    p.set_defaults(func=cmd_synthesize_nasdm)


def add_models_parser(sub) -> None:
    from .cli_transfer import add_models_fetch

    p = sub.add_parser("models", help="list the synthesis models available offline (`models fetch`: get SD 1.5)")
    p.set_defaults(func=cmd_models)
    add_models_fetch(p)  # `histogen models fetch [sd15] [--out DIR] [--variant fp16]`
