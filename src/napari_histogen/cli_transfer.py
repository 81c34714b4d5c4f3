"""``histogen synthesize transfer`` and ``histogen models fetch``: zero-shot appearance transfer, headless.

Wiring (in ``cli.py``): the ``synthesize`` parser calls ``add_transfer_parser(engines)`` with its
engines sub-parsers; the ``models`` parser calls ``add_models_fetch(p)`` (it adds a ``fetch``
sub-command; ``histogen models`` alone still lists). Defaults come from
:class:`~napari_histogen.core.engines.transfer.TransferRequest` and
:class:`~napari_histogen.core.transfer.settings.TransferSettings`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import (
    ProgressBar,
    add_device_options,
    defaults_of,
    eprint,
    nonneg_int,
    out_dir_arg,
    positive_int,
    report_batch,
    scheme_or_none,
    seed_int,
)

__all__ = ["add_transfer_parser", "add_models_fetch", "cmd_synthesize_transfer", "cmd_transfer_example", "cmd_models_fetch",
           "sd_model_lines"]


def _settings_from_args(args):
    from .core.transfer.settings import SwapRange, TransferSettings

    swaps = (SwapRange(32, args.swap_32[0], args.swap_32[1]), SwapRange(64, args.swap_64[0], args.swap_64[1]))
    return TransferSettings(
        steps=args.steps, skip_steps=args.skip, inversion=args.inversion.replace("-", "_"),
        inversion_guidance=args.inversion_guidance, prompt=args.prompt, swap=not args.no_swap, swap_ranges=swaps,
        contrast=args.contrast, swap_guidance_start=args.swap_guidance[0], swap_guidance_end=args.swap_guidance[1],
        adain=args.adain, adain_start=args.adain_steps[0], adain_end=args.adain_steps[1], render=args.render,
        freeu=not args.no_freeu, size=args.size, batch_targets=args.batch_targets).check()


def cmd_synthesize_transfer(args) -> int:
    """Appearance transfer for one source + target mask, or for a dataset folder."""
    if getattr(args, "method", "sd") == "example":
        return cmd_transfer_example(args)
    from .core.engines.transfer import TransferEngine, TransferRequest
    from .core.errors import HistogenInputError
    from .core.io.pairs import read_rgb_image
    from .core.io.tissue import read_tissue_mask, write_transfer_result

    single = args.source is not None or args.target_mask is not None
    if single and args.dataset:
        raise HistogenInputError("Give either --source/--source-mask/--target-mask (one source) or --dataset "
                                 "(a folder of image + mask pairs), not both.")
    if not single and not args.dataset:
        raise HistogenInputError("Give --source IMG --source-mask M --target-mask M2, or --dataset DIR.")
    request = TransferRequest(n_outputs=args.n, augment=not args.no_augment, seed=args.seed,
                              settings=_settings_from_args(args))
    if single:
        if args.source is None or args.target_mask is None:
            raise HistogenInputError("One-source mode needs --source IMG and --target-mask M2 (and --source-mask M "
                                     "for mask-guided AdaIN).")
        scheme = scheme_or_none(args.scheme)
        source_mask = None
        if args.source_mask:
            source_mask = read_tissue_mask(args.source_mask, name="source mask", scheme=scheme)
        target = read_tissue_mask(args.target_mask, name="target mask", scheme=scheme)
        # one scheme names the classes of both masks: the option, else the source's, else the target's
        scheme = scheme or (source_mask.scheme if source_mask is not None else None) or target.scheme
        target.scheme, target.name = scheme, str(args.target_mask)
        if source_mask is not None:
            source_mask.scheme = scheme
        request.source_image = read_rgb_image(args.source, name="source image")
        request.source_mask, request.target_masks, request.source_name = source_mask, [target], str(args.source)
        request.check()
    engine = TransferEngine(args.model, device=args.device, precision=args.precision)
    info_model = engine.describe()
    eprint(f"Model {info_model['model']} ({info_model['path']}, unet sha256 {str(info_model['sha256'])[:12]}...), "
           f"{info_model['native_size']} px, device {engine.device}, {info_model['dtype']}.")
    bar = ProgressBar("transfer", "step")
    try:
        if single:
            results = engine.run(request, progress=bar)
            stem = Path(args.source).stem
            written = []
            for k, result in enumerate(results):
                files = write_transfer_result(args.out, f"{stem}_transfer_s{args.seed + k}", result.image, result.mask,
                                              result.provenance, source=request.source_image)
                written.append(files)
            bar.close()
            for note in dict.fromkeys(n for r in results for n in r.notes):
                eprint(f"note: {note}")
            print(f"Wrote {len(written)} image + mask pair(s) to {args.out}.")
            return 0
        from .core.engines.batch import transfer_folder

        report = transfer_folder(args.dataset, args.out, engine, request, targets=args.targets,
                                 scheme=scheme_or_none(args.scheme), progress=bar, log=eprint)
    finally:
        bar.close()
    return report_batch(report, args.out, "source(s)")


def _read_example_mask(path, kind: str, scheme, name: str):
    """A nuclei mask (any annotated format) or a tissue mask (class ids) for the example-based method."""
    from .core.errors import HistogenInputError
    from .core.io.tissue import read_tissue_mask

    if kind == "tissue":
        return read_tissue_mask(path, name=name, scheme=scheme)
    from .core.io.dispatch import read_annotated

    nuclei = read_annotated(path, scheme=scheme).nuclei
    if nuclei is None:
        raise HistogenInputError(f"{path}: no nuclei mask in this file (use --mask-kind tissue for class-id masks).")
    return nuclei


def cmd_transfer_example(args) -> int:
    """Example-based transfer (``--method example``): one source + its mask + a target mask, on the CPU."""
    from .core.engines.exemplar import ExemplarEngine, ExemplarRequest
    from .core.errors import HistogenInputError
    from .core.exemplar import ExemplarSettings
    from .core.io.pairs import read_rgb_image
    from .core.io.tissue import write_transfer_result
    from .core.masks import NucleiMask

    if args.dataset:
        raise HistogenInputError("--method example takes one source (--source, --source-mask, --target-mask); "
                                 "dataset folders run with the Stable Diffusion method only.")
    if args.source is None or args.source_mask is None or args.target_mask is None:
        raise HistogenInputError("--method example needs --source IMG, --source-mask M (its nuclei or tissue mask) "
                                 "and --target-mask M2.")
    if args.model:
        raise HistogenInputError("--method example uses no model; leave out --model.")
    scheme = scheme_or_none(args.scheme)
    source_mask = _read_example_mask(args.source_mask, args.mask_kind, scheme, "source mask")
    target = _read_example_mask(args.target_mask, args.mask_kind, scheme, "target mask")
    if args.mask_kind == "tissue":
        scheme = scheme or source_mask.scheme or target.scheme
        target.scheme, target.name = scheme, str(args.target_mask)
        source_mask.scheme = scheme
    settings = ExemplarSettings(patch_px=args.patch_px, overlap_px=args.overlap_px, candidates=args.candidates,
                                nucleus_choices=args.nucleus_choices).check()
    nuclei = isinstance(source_mask, NucleiMask)
    request = ExemplarRequest(source_image=read_rgb_image(args.source, name="source image"), target_masks=[target],
                              source_nuclei=source_mask if nuclei else None,
                              source_tissue=None if nuclei else source_mask, n_outputs=args.n, seed=args.seed,
                              settings=settings, source_name=str(args.source))
    request.check()
    engine = ExemplarEngine(device="cpu")
    bar = ProgressBar("transfer", "step")
    try:
        results = engine.run(request, progress=bar)
    finally:
        bar.close()
    stem = Path(args.source).stem
    for k, result in enumerate(results):
        mask = result.mask
        if isinstance(mask, NucleiMask):  # the PNG holds class ids (the type map); the instances are the target's
            labels, mask_scheme = mask.type_map(), mask.scheme
        else:
            labels, mask_scheme = mask.labels, mask.scheme
        write_transfer_result(args.out, f"{stem}_example_s{args.seed + k}", result.image, labels, result.provenance,
                              source=request.source_image, scheme=mask_scheme)
    for note in dict.fromkeys(n for r in results for n in r.notes):
        eprint(f"note: {note}")
    seconds = results[0].provenance["parameters"]["seconds_total"] / len(results)
    print(f"Wrote {len(results)} image + mask pair(s) to {args.out} ({seconds:.1f} s per image, example-based).")
    return 0


def add_transfer_parser(engines) -> None:
    """Add ``transfer`` to the engines of ``histogen synthesize``."""
    from .core.engines.transfer import TransferRequest
    from .core.transfer.settings import ADAIN_MODES, INVERSIONS, RENDER_MODES, TransferSettings

    from .core.exemplar import ExemplarSettings

    d = defaults_of(TransferRequest)
    st = defaults_of(TransferSettings)
    ed = defaults_of(ExemplarSettings)
    swaps = {r.tokens: [r.start, r.end] for r in st["swap_ranges"]}

    p = engines.add_parser(
        "transfer", help="zero-shot appearance transfer: a real patch's look on new masks (Stable Diffusion 1.5)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Mask-guided cross-image attention (AstraZeneca; no training). One source: make N images that "
                    "look like --source (stain, scanner, tissue) and follow --target-mask, each with a random "
                    "flip/rotation of the mask. Dataset: for every image + mask pair in --dataset make N images whose "
                    "target masks are other pairs' masks (or --targets). Writes <name>.png, <name>_mask.png (class "
                    "ids), <name>_side_by_side.png and <name>.json (provenance) to --out. Needs Stable Diffusion 1.5 "
                    "weights on this machine (see `histogen models fetch`).")
    p.add_argument("--method", default="sd", choices=("sd", "example"),
                   help="sd: cross-image attention on Stable Diffusion (GPU advised); example: example-based, the "
                        "source's own pixels quilted by class and its nuclei copied by class and shape (CPU, seconds, "
                        "no model; one source only)")
    src = p.add_argument_group("one source")
    src.add_argument("--source", default=None, help="appearance image (PNG/JPEG/TIFF)")
    src.add_argument("--source-mask", default=None, help="its tissue mask (class ids: .png/.tif/.npy/.npz/.ome.tif)")
    src.add_argument("--target-mask", default=None, help="the mask the outputs follow (same class ids)")
    data = p.add_argument_group("dataset")
    data.add_argument("--dataset", default=None, help="folder of pairs: images/ + masks/, or <name>.png + <name>_mask.png")
    data.add_argument("--targets", default=None, help="folder of target masks (default: the dataset's other masks)")
    p.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    p.add_argument("--n", type=positive_int, default=d["n_outputs"], help="images per source (the paper: 4)")
    p.add_argument("--seed", type=seed_int, default=d["seed"], help="output k uses seed + k (its flip/rotation and inversion noise)")
    p.add_argument("--no-augment", action="store_true", help="use the target masks as they are (no flips/rotations)")
    p.add_argument("--model", default=None, help="model folder, cached name, or hub id in the local HF cache "
                                                 "(default $HISTOGEN_SD_MODEL or stable-diffusion-v1-5)")
    p.add_argument("--steps", type=positive_int, default=st["steps"], help="DDIM steps of the chain")
    p.add_argument("--skip", type=nonneg_int, default=st["skip_steps"], help="noisiest steps not run")
    p.add_argument("--inversion", default=st["inversion"].replace("_", "-"),
                   choices=tuple(i.replace("_", "-") for i in INVERSIONS))
    p.add_argument("--inversion-guidance", type=float, default=st["inversion_guidance"],
                   help="text guidance while inverting (edit-friendly only; DDIM inversion runs at 1 to round-trip)")
    p.add_argument("--swap-32", type=int, nargs=2, default=swaps[32], metavar=("START", "END"),
                   help="steps of the key/value swap at 32x32 tokens")
    p.add_argument("--swap-64", type=int, nargs=2, default=swaps[64], metavar=("START", "END"),
                   help="steps of the key/value swap at 64x64 tokens")
    p.add_argument("--no-swap", action="store_true", help="no cross-image attention (diagnostic)")
    p.add_argument("--contrast", type=float, default=st["contrast"], help="attention contrast on the swapped maps")
    p.add_argument("--swap-guidance", type=float, nargs=2, default=[st["swap_guidance_start"], st["swap_guidance_end"]], metavar=("FIRST", "LAST"),
                   help="swap guidance, linear over the steps run")
    p.add_argument("--adain", default=st["adain"], choices=ADAIN_MODES,
                   help="masked = per class, alternating (the paper); global = the baseline")
    p.add_argument("--adain-steps", type=int, nargs=2, default=[st["adain_start"], st["adain_end"]],
                   metavar=("START", "END"))
    p.add_argument("--render", default=st["render"], choices=RENDER_MODES,
                   help="structure image: the target mask painted in the source's class means (ours), in the "
                        "scheme's colours, or the mask itself as grey levels (the paper's wording)")
    p.add_argument("--no-freeu", action="store_true",
                   help="plain UNet: no FreeU on the backbone features (the reference applies it on every call)")
    p.add_argument("--prompt", default=st["prompt"], help="the sentence for all branches")
    p.add_argument("--size", type=positive_int, default=st["size"], help="working size in px (default: the model's, 512)")
    p.add_argument("--batch-targets", type=nonneg_int, default=st["batch_targets"], help="targets denoised together (0 = 4 on CUDA, 1 on CPU)")
    p.add_argument("--scheme", default=None, help="class scheme of the masks (names, colours), e.g. tissue")
    ex = p.add_argument_group("example-based method (--method example)")
    ex.add_argument("--mask-kind", default="tissue", choices=("tissue", "nuclei"),
                    help="tissue: class-id masks (.png/.tif/.npy); nuclei: nuclei masks (.npz/.ome.tif/.mat/.geojson)")
    ex.add_argument("--patch-px", type=positive_int, default=ed["patch_px"], help="side of the quilted blocks")
    ex.add_argument("--overlap-px", type=positive_int, default=ed["overlap_px"], help="overlap of the blocks")
    ex.add_argument("--candidates", type=positive_int, default=ed["candidates"],
                    help="random source blocks compared per block")
    ex.add_argument("--nucleus-choices", type=positive_int, default=ed["nucleus_choices"],
                    help="a target nucleus takes one of this many closest-shaped source nuclei")
    add_device_options(p)
    p.set_defaults(func=cmd_synthesize_transfer)


def cmd_models_fetch(args) -> int:
    """Download Stable Diffusion 1.5 (on a networked machine) into a folder to copy to offline workstations."""
    from .core.models.stable_diffusion import fetch_stable_diffusion

    path = fetch_stable_diffusion(args.model, args.out, variant=args.variant,
                                  log=eprint)
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
    p.add_argument("--out", default=None, type=out_dir_arg, help="folder (default: the model cache, $HISTOGEN_HOME/models/"
                                               "stable-diffusion/<name>)")
    p.add_argument("--variant", default=None, choices=("fp16",), help="half-precision weights (about 2 GB instead of 4)")
    p.set_defaults(func=cmd_models_fetch)


def sd_model_lines() -> list[str]:
    """Lines for ``histogen models``: the Stable Diffusion models usable offline, and where to put more."""
    from .core.engines.transfer import model_lines

    return model_lines()
