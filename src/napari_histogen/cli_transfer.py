"""``histogen synthesize transfer`` and ``histogen models fetch``: zero-shot appearance transfer, headless.

Wiring (in ``cli_nasdm.py``): ``add_synthesize_parser`` calls ``add_transfer_parser(engines)``
with its engines sub-parsers; ``add_models_parser`` calls ``add_models_fetch(p)`` with the
``models`` parser (it adds a ``fetch`` sub-command; ``histogen models`` alone still lists).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_transfer_parser", "add_models_fetch", "cmd_synthesize_transfer", "cmd_models_fetch",
           "sd_model_lines"]


def _settings_from_args(args):
    from .core.transfer.settings import SwapRange, TransferSettings

    swaps = (SwapRange(32, args.swap_32[0], args.swap_32[1]), SwapRange(64, args.swap_64[0], args.swap_64[1]))
    return TransferSettings(
        steps=args.steps, skip_steps=args.skip, inversion=args.inversion.replace("-", "_"),
        inversion_guidance=args.inversion_guidance, prompt=args.prompt, swap=not args.no_swap, swap_ranges=swaps,
        contrast=args.contrast, swap_guidance_start=args.swap_guidance[0], swap_guidance_end=args.swap_guidance[1],
        adain=args.adain, adain_start=args.adain_steps[0], adain_end=args.adain_steps[1], render=args.render,
        size=args.size, batch_targets=args.batch_targets).check()


def cmd_synthesize_transfer(args) -> int:
    """Appearance transfer for one source + target mask, or for a dataset folder."""
    from .cli_nasdm import _Bar
    from .core.engines.transfer import TransferEngine, TransferRequest
    from .core.errors import HistogenInputError
    from .core.io.pairs import read_rgb_image
    from .core.io.tissue import read_label_map, write_transfer_result

    single = args.source is not None or args.target_mask is not None
    if single and args.dataset:
        raise HistogenInputError("Give either --source/--source-mask/--target-mask (one source) or --dataset "
                                 "(a folder of image + mask pairs), not both.")
    if not single and not args.dataset:
        raise HistogenInputError("Give --source IMG --source-mask M --target-mask M2, or --dataset DIR.")
    settings = _settings_from_args(args)
    if single:
        if args.source is None or args.target_mask is None:
            raise HistogenInputError("One-source mode needs --source IMG and --target-mask M2 (and --source-mask M "
                                     "for mask-guided AdaIN).")
        source = read_rgb_image(args.source, name="source image")
        source_mask = info = None
        if args.source_mask:
            source_mask, info = read_label_map(args.source_mask, name="source mask")
        target_mask, tinfo = read_label_map(args.target_mask, name="target mask")
        scheme = _scheme(args.scheme or (info or {}).get("scheme") or tinfo.get("scheme"))
    engine = TransferEngine(args.model, device=args.device, precision=args.precision)
    info_model = engine.describe()
    print(f"Model {info_model['model']} ({info_model['path']}, unet sha256 {str(info_model['sha256'])[:12]}...), "
          f"{info_model['native_size']} px, device {engine.device}, {info_model['dtype']}.", file=sys.stderr)
    bar = _Bar("transfer", "step")
    try:
        if single:
            request = TransferRequest(source_image=source, source_mask=source_mask, target_mask=target_mask,
                                      n_outputs=args.n, augment=not args.no_augment, seed=args.seed, settings=settings,
                                      scheme=scheme, source_name=str(args.source), target_name=str(args.target_mask))
            results = engine.run(request, progress=bar)
            from pathlib import Path

            stem = Path(args.source).stem
            written = []
            for k, result in enumerate(results):
                files = write_transfer_result(args.out, f"{stem}_transfer_s{args.seed + k}", result.image, result.mask,
                                              result.provenance, source=source, scheme=scheme)
                written.append(files)
            bar.close()
            for note in dict.fromkeys(n for r in results for n in r.notes):
                print(f"note: {note}", file=sys.stderr)
            print(f"Wrote {len(written)} image + mask pair(s) to {args.out}.")
            return 0
        from .core.transfer.batch import transfer_folder

        report = transfer_folder(args.dataset, args.out, engine, n=args.n, seed=args.seed, settings=settings,
                                 targets=args.targets, augment=not args.no_augment, scheme=_scheme(args.scheme),
                                 progress=bar, log=lambda msg: print(msg, file=sys.stderr))
    finally:
        bar.close()
    print(f"Wrote {len(report.written)} image + mask pairs to {args.out}"
          + (f"; skipped {len(report.skipped)} source(s):" if report.skipped else "."))
    for path, reason in report.skipped:
        print(f"  {path}: {reason}")
    return 0 if report.written else 2


def _scheme(spec):
    if not spec:
        return None
    from .core.schemes import get_scheme

    return get_scheme(spec)


def add_transfer_parser(engines) -> None:
    """Add ``transfer`` to the engines of ``histogen synthesize``."""
    from .core.transfer.settings import DEFAULT_PROMPT

    p = engines.add_parser(
        "transfer", help="zero-shot appearance transfer: a real patch's look on new masks (Stable Diffusion 1.5)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Mask-guided cross-image attention (AstraZeneca; no training). One source: make N images that "
                    "look like --source (stain, scanner, tissue) and follow --target-mask, each with a random "
                    "flip/rotation of the mask. Dataset: for every image + mask pair in --dataset make N images whose "
                    "target masks are other pairs' masks (or --targets). Writes <name>.png, <name>_mask.png (class "
                    "ids), <name>_side_by_side.png and <name>.json (provenance) to --out. Needs Stable Diffusion 1.5 "
                    "weights on this machine (see `histogen models fetch`).")
    src = p.add_argument_group("one source")
    src.add_argument("--source", default=None, help="appearance image (PNG/JPEG/TIFF)")
    src.add_argument("--source-mask", default=None, help="its tissue mask (class ids: .png/.tif/.npy/.npz/.ome.tif)")
    src.add_argument("--target-mask", default=None, help="the mask the outputs follow (same class ids)")
    data = p.add_argument_group("dataset")
    data.add_argument("--dataset", default=None, help="folder of pairs: images/ + masks/, or <name>.png + <name>_mask.png")
    data.add_argument("--targets", default=None, help="folder of target masks (default: the dataset's other masks)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=4, help="images per source (the paper: 4)")
    p.add_argument("--seed", type=int, default=0, help="output k uses seed + k (its flip/rotation and inversion noise)")
    p.add_argument("--no-augment", action="store_true", help="use the target masks as they are (no flips/rotations)")
    p.add_argument("--model", default=None, help="model folder, cached name, or hub id in the local HF cache "
                                                 "(default $HISTOGEN_SD_MODEL or stable-diffusion-v1-5)")
    p.add_argument("--steps", type=int, default=100, help="DDIM steps of the chain")
    p.add_argument("--skip", type=int, default=32, help="noisiest steps not run")
    p.add_argument("--inversion", default="edit-friendly", choices=("edit-friendly", "ddim"))
    p.add_argument("--inversion-guidance", type=float, default=3.5, help="text guidance while inverting")
    p.add_argument("--swap-32", type=int, nargs=2, default=[10, 70], metavar=("START", "END"),
                   help="steps of the key/value swap at 32x32 tokens")
    p.add_argument("--swap-64", type=int, nargs=2, default=[10, 90], metavar=("START", "END"),
                   help="steps of the key/value swap at 64x64 tokens")
    p.add_argument("--no-swap", action="store_true", help="no cross-image attention (diagnostic)")
    p.add_argument("--contrast", type=float, default=1.67, help="attention contrast on the swapped maps")
    p.add_argument("--swap-guidance", type=float, nargs=2, default=[3.5, 1.75], metavar=("FIRST", "LAST"),
                   help="swap guidance, linear over the steps run")
    p.add_argument("--adain", default="masked", choices=("masked", "global", "off"),
                   help="masked = per class, alternating (the paper); global = the baseline")
    p.add_argument("--adain-steps", type=int, nargs=2, default=[20, 100], metavar=("START", "END"))
    p.add_argument("--render", default="mean", choices=("mean", "scheme"),
                   help="structure image colours: class means of the source, or the scheme's")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the sentence for all branches")
    p.add_argument("--size", type=int, default=None, help="working size in px (default: the model's, 512)")
    p.add_argument("--batch-targets", type=int, default=0, help="targets denoised together (0 = 4 on CUDA, 1 on CPU)")
    p.add_argument("--scheme", default=None, help="class scheme of the masks (names, colours), e.g. tissue")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16, fp16")
    p.set_defaults(func=cmd_synthesize_transfer)


def cmd_models_fetch(args) -> int:
    """Download Stable Diffusion 1.5 (on a networked machine) into a folder to copy to offline workstations."""
    from .core.models.stable_diffusion import fetch_stable_diffusion

    path = fetch_stable_diffusion(args.model, args.out, variant=args.variant,
                                  log=lambda msg: print(msg, file=sys.stderr))
    print(f"Stable Diffusion is in {path}. Copy this folder to the workstation and choose it as the model "
          f"(dock: 'Folder…'; CLI: --model {path}), or put it in the model cache there.")
    return 0


def add_models_fetch(models_parser) -> None:
    """Add ``fetch`` under ``histogen models`` (``models_parser`` is the ``models`` argparse parser)."""
    sub = models_parser.add_subparsers(dest="models_command", metavar="COMMAND")
    p = sub.add_parser(
        "fetch", help="download Stable Diffusion 1.5 for appearance transfer (run where there is internet)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Download the parts of Stable Diffusion 1.5 that appearance transfer needs (UNet, VAE, "
                    "scheduler, CLIP text encoder and tokenizer; safetensors only) into --out, to copy to an "
                    "offline workstation. Respects HF_ENDPOINT, HTTPS_PROXY and `hf auth login`.")
    p.add_argument("model", nargs="?", default="sd15", help="sd15 or a hub id in the SD 1.5 format")
    p.add_argument("--out", default=None, help="folder (default: the model cache, $HISTOGEN_HOME/models/"
                                               "stable-diffusion/<name>)")
    p.add_argument("--variant", default=None, choices=("fp16",), help="half-precision weights (about 2 GB instead of 4)")
    p.set_defaults(func=cmd_models_fetch)


def sd_model_lines() -> list[str]:
    """Lines for ``histogen models``: the Stable Diffusion models usable offline, and where to put more."""
    from .core.models.stable_diffusion import list_sd_models, sd_cache_dir

    models = list_sd_models()
    lines = [f"{name:20s} {path}  (stable diffusion)" for name, path in models.items()]
    if not models:
        lines.append("No Stable Diffusion model on this machine (appearance transfer): run `histogen models fetch` "
                     "where there is internet and copy the folder here.")
    lines.append(f"(Stable Diffusion cache folder: {sd_cache_dir()})")
    return lines
