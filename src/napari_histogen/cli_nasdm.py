"""``histogen train nasdm`` and ``histogen synthesize nasdm``, headless.

``cli.py`` wires them: :func:`add_train_parser` under ``histogen``, :func:`add_nasdm_parser`
under the engines of ``histogen synthesize``.
"""

from __future__ import annotations

import argparse

from .cli_common import (ProgressBar, add_device_options, defaults_of, eprint, nonneg_int, out_dir_arg, positive_int,
                         print_trained, report_batch, seed_int)

__all__ = ["add_train_parser", "add_nasdm_parser", "add_merge_parser", "cmd_synthesize_nasdm", "cmd_train_nasdm",
           "cmd_merge_shards"]


#: ``histogen train nasdm`` options whose defaults depend on the model family: option -> settings field
_FAMILY_DEFAULTS = {"size": "size", "steps": "steps", "batch_size": "batch_size", "lr": "lr", "cond_drop": "cond_drop",
                    "ema": "ema_decay", "patch_size": "image_size", "mpp": "mpp", "overlap": "overlap",
                    "sample_every": "sample_every", "checkpoint_every": "checkpoint_every",
                    "sample_steps": "sample_steps"}
_PIXEL_ONLY = ("init", "workers", "max_patches")


def _family_settings(args):
    """The settings dataclass of ``--family`` filled from the options (unset ones: its defaults)."""
    from dataclasses import fields

    if args.family == "latent":
        from .core.latent.train import LatentTrainSettings as settings_type
    else:
        from .core.nasdm.train import TrainSettings as settings_type
    defaults = {f.name: f.default for f in fields(settings_type)}
    values = {field: (getattr(args, opt) if getattr(args, opt) is not None else defaults[field])
              for opt, field in _FAMILY_DEFAULTS.items()}
    common = dict(data=args.data, out=args.out, fmt=args.format, min_tissue=args.min_tissue,
                  val_fraction=args.val_fraction, device=args.device, seed=args.seed, scheme=args.scheme,
                  source_mpp=args.source_mpp, **values)
    if args.family == "latent":
        given = [f"--{opt.replace('_', '-')}" for opt in _PIXEL_ONLY if getattr(args, opt)]
        if args.stain_norm != "none":
            given.append("--stain-norm")
        if given:
            eprint(f"Note: {', '.join(given)} apply to pixel NASDM only and are ignored for --family latent.")
        precision = args.precision if args.precision in ("auto", "fp32", "bf16") else "auto"
        return settings_type(**common, prediction=args.prediction, transforms=args.transforms, threads=args.threads,
                             precision=precision)
    return settings_type(**common, stain_norm=None if args.stain_norm == "none" else args.stain_norm, init=args.init,
                         precision=args.precision, workers=args.workers, max_patches=args.max_patches)


def cmd_train_nasdm(args) -> int:
    """Train or resume a NASDM model (pixel or latent family) on a labelled dataset."""
    from .core.distributed import init_from_environment, launch

    settings = _family_settings(args)
    processes = int(getattr(args, "num_processes", 1) or 1)
    if processes > 1 or init_from_environment(settings.device).size > 1:
        if args.family == "latent":
            from .core.errors import HistogenInputError

            raise HistogenInputError("Data-parallel training (--num-processes, torchrun) is for pixel NASDM so far; "
                                     "train latent NASDM in one process.")
        if processes > 1:
            from .core.devices import resolve_device

            launch(_train_process, processes, (settings, args.family), device=resolve_device(settings.device).type)
            return 0
    _train_process(settings, args.family)
    return 0


def _train_process(settings, family: str) -> None:
    """One process of a training run (the only one, or one of a group): the first reports."""
    from .core.distributed import world

    main = world().main
    bar = ProgressBar("training", "step") if main else None
    say = eprint if main else (lambda message: None)
    try:
        if family == "latent":
            from .core.latent.train import train_latent_nasdm

            result = train_latent_nasdm(settings, progress=bar, log_fn=say)
        else:
            from .core.nasdm.train import train_nasdm

            result = train_nasdm(settings, progress=bar, log=say)
    finally:
        if bar is not None:
            bar.close()
    if main:
        print_trained(result)


def cmd_synthesize_nasdm(args) -> int:
    """Synthesize images for nuclei masks with a NASDM model."""
    from .core.distributed import parse_shard
    from .core.engines.batch import collect_masks, synthesize_masks
    from .core.engines.nasdm import NasdmEngine, NasdmRequest

    shard = parse_shard(args.shard)
    paths = collect_masks(args.mask)
    request = NasdmRequest(n_samples=args.n, steps=args.steps, guidance=args.guidance, sampler=args.sampler,
                           variance=args.variance, seed=args.seed, batch_size=args.batch_size,
                           tile_overlap=args.tile_overlap, tile_batch=args.tile_batch, tile_weight=args.tile_weight)
    engine = NasdmEngine(args.model, device=args.device, precision=args.precision, compile=args.compile or False)
    info = engine.describe()
    eprint(f"Model {info['model']} ({info['weights']}, sha256 {info['sha256'][:12]}..."
           f"{' checked' if info['sha256_checked'] else ''}), scheme {info['scheme']}, {info['image_size']} px "
           f"at {info['mpp']:g} µm/px, device {engine.device}.")
    bar = ProgressBar("synthesis", "step")
    try:
        report = synthesize_masks(paths, args.out, engine, request, tile=args.tile, scheme=args.scheme,
                                  mask_batch=args.mask_batch, shard=shard, progress=bar, log=eprint)
    finally:
        bar.close()
    return report_batch(report, args.out, "mask(s)")


def cmd_merge_shards(args) -> int:
    """Check that every shard of a sharded synthesis run is complete."""
    from .core.engines.batch import merge_shards

    merged = merge_shards(args.out)
    print(f"All {merged['shards']} shards complete: {len(merged['written'])} image(s) from {merged['n_inputs']} "
          f"mask file(s), {len(merged['skipped'])} skipped; record in {args.out}/shards.json.")
    return 0


def add_merge_parser(sub) -> None:
    p = sub.add_parser("merge-shards", help="check that all shards of a sharded synthesis are complete",
                       description="After `histogen synthesize nasdm --shard I/N --out DIR` for every I, check that "
                                   "DIR holds all N shards of one run and their images; writes DIR/shards.json. "
                                   "Exit 2 names the shards to rerun.")
    p.add_argument("out", help="the shards' common output folder")
    p.set_defaults(func=cmd_merge_shards)


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train a synthesis model (nasdm)")
    engines = train.add_subparsers(dest="engine", metavar="ENGINE", required=True)
    p = engines.add_parser(
        "nasdm", help="train or resume a NASDM model on nuclei masks",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train NASDM on a labelled nuclei dataset. Running it again with the same --out resumes from "
                    "the last checkpoint (--steps is the total). RUN_DIR gets run.json, log.csv, samples/*.png, "
                    "checkpoints/last/ and model/nasdm.safetensors (EMA weights + .json with sha256). "
                    "--family latent trains on TAEF2 latents (40x, 256 px by default); options left unset take "
                    "the family's defaults.")
    p.add_argument("--data", required=True, help="dataset file or folder (Lizard Labels/, CoNSeP Train/ or patch "
                                                 "folders, PanNuke/CoNIC .npy folder, image+mask folder)")
    p.add_argument("--format", default="auto", help="auto, lizard, consep, pannuke, conic or folder")
    p.add_argument("--out", required=True, type=out_dir_arg, help="run folder (created, or resumed)")
    p.add_argument("--family", default="pixel", choices=("pixel", "latent"),
                   help="pixel NASDM, or latent NASDM on the shipped TAEF2 autoencoder")
    p.add_argument("--size", default=None, help="model size: pixel paper/small/cpu/tiny (default small), latent "
                                                "small/cpu/tiny (default cpu)")
    p.add_argument("--steps", type=positive_int, default=None, help="total optimisation steps (pixel 10000, latent 4000)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="pixel 8, latent 16")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (pixel 1e-4, latent 2e-4 after "
                                                           "warm-up; 2e-5 to fine-tune)")
    p.add_argument("--cond-drop", type=float, default=None,
                   help="condition dropout for classifier-free guidance (pixel 0.2, latent 0.15)")
    p.add_argument("--ema", type=float, default=None, help="EMA decay (0.999)")
    p.add_argument("--patch-size", type=positive_int, default=None, help="pixel 128, latent 256")
    p.add_argument("--mpp", type=float, default=None,
                   help="model scale in µm/px (pixel 0.5 = 20x, latent 0.25 = 40x); data is resampled")
    p.add_argument("--prediction", default="v", choices=("v", "epsilon"), help="latent: prediction target")
    p.add_argument("--transforms", type=positive_int, default=8, help="latent: dihedral transforms encoded per window (1-8)")
    p.add_argument("--threads", type=positive_int, default=None, help="latent: torch CPU threads")
    p.add_argument("--source-mpp", type=float, default=None, help="scale of the data when its format does not say")
    p.add_argument("--overlap", type=float, default=None, help="patch overlap (pixel 0.5, latent 0)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="drop patches with less tissue than this fraction")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share, split by source image")
    p.add_argument("--stain-norm", default="none", help="none, macenko or vahadane (reference: the image with most tissue)")
    p.add_argument("--scheme", default=None, help="class scheme for formats that do not record one")
    p.add_argument("--init", default=None, help="start from these NASDM weights (fine-tuning)")
    p.add_argument("--sample-every", type=positive_int, default=None, help="steps between sample grids")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between checkpoints")
    p.add_argument("--sample-steps", type=positive_int, default=None, help="sampling steps for the sample grids")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", help="auto (bf16/fp16 on CUDA), fp32, bf16, fp16")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--workers", type=nonneg_int, default=0, help="data loader processes")
    p.add_argument("--max-patches", type=positive_int, default=None, help="use only the first N training patches")
    p.add_argument("--num-processes", type=positive_int, default=1,
                   help="pixel: data-parallel processes (one GPU each on CUDA, gloo on CPU); --batch-size is the "
                        "global batch, split evenly, and the weights are those of one process")
    p.set_defaults(func=cmd_train_nasdm)
    from .cli_generate import add_train_maskgen_parser  # `histogen train maskgen` (issue 17)

    add_train_maskgen_parser(engines)
    from .cli_cosyn import add_cosyn_train_parser

    add_cosyn_train_parser(engines)


def add_nasdm_parser(engines) -> None:
    """Add ``nasdm`` to the engines of ``histogen synthesize`` (defaults: :class:`NasdmRequest`'s)."""
    from .core.diffusion.tiled import WEIGHTS
    from .core.engines.nasdm import DEFAULT_STEPS_CPU, DEFAULT_STEPS_GPU, SAMPLERS, VARIANCES, NasdmRequest

    d = defaults_of(NasdmRequest)
    p = engines.add_parser(
        "nasdm", help="H&E patches that follow nuclei masks, with a NASDM model",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For every mask (a .npz/.ome.tif/.mat/.geojson file, FILE.npy::N, or a folder of them) draw N "
                    "images and write <mask>_s<seed>.png, .npz (mask), .ome.tif, _side_by_side.png and .json "
                    "(provenance) to --out.")
    p.add_argument("--mask", required=True, help="mask file or folder")
    p.add_argument("--model", default="default", help="'default' (embedded), a cached model name, or a model path")
    p.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    p.add_argument("--n", type=positive_int, default=d["n_samples"], help="samples per mask")
    p.add_argument("--steps", type=positive_int, default=d["steps"],
                   help="sampling steps (default: the model's recommendation, 20 for the embedded model; pixel "
                        f"models without one: {DEFAULT_STEPS_GPU} on CUDA, {DEFAULT_STEPS_CPU} on CPU)")
    p.add_argument("--guidance", type=float, default=d["guidance"],
                   help="classifier-free guidance scale s (default: the model's recommendation)")
    p.add_argument("--sampler", default=d["sampler"], choices=SAMPLERS)
    p.add_argument("--variance", default=d["variance"], choices=VARIANCES,
                   help="variance of the DDPM step (default: the model's recommended one)")
    p.add_argument("--seed", type=seed_int, default=d["seed"], help="sample k uses seed + k")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"])
    p.add_argument("--mask-batch", type=positive_int, default=None,
                   help="masks of a folder sampled together, their samples sharing network batches of --batch-size "
                        "(the same images); default batch-size // n (one network batch full), except pixel models on "
                        "CPU: 1")
    p.add_argument("--tile", action="store_true",
                   help="cut masks larger than the model's patch into independent tiles (naive tiling, seams "
                        "show; without it a large mask is one seamless canvas of overlapping tiles)")
    p.add_argument("--tile-overlap", type=float, default=d["tile_overlap"],
                   help="large masks: overlap of neighbouring tiles as a fraction of a tile (0-0.9)")
    p.add_argument("--tile-batch", type=positive_int, default=d["tile_batch"],
                   help="large masks: tiles per network call (memory; the images do not depend on it)")
    p.add_argument("--tile-weight", default=d["tile_weight"], choices=WEIGHTS,
                   help="large masks: how overlapping tiles are recombined (pathup = PathUp eq. 6)")
    p.add_argument("--scheme", default=None, help="class scheme for mask files that do not record one")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="synthesize only shard I of N of the masks (one per process or GPU, same --out); then "
                        "`histogen merge-shards OUT` checks completeness")
    add_device_options(p, precision_help="auto (bf16 on CUDA and on CPUs with native bf16 such as AMX, else "
                                         "fp32), fp32, bf16, fp16 (CUDA)")
    p.add_argument("--compile", nargs="?", const="default", default=None,
                   choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the denoiser (reduce-overhead: CUDA graphs, CUDA only); on CPU compiling "
                        "takes about a minute per batch shape, then network calls are 10-25%% faster: for runs of "
                        "hundreds of patches (docs/performance.md)")
    p.set_defaults(func=cmd_synthesize_nasdm)
