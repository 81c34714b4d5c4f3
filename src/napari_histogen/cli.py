"""The ``histogen`` command: the plugin's core, headless.

Every verb calls one core function; bad input ends with a one-line message on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .cli_common import (
    check_out_dir,
    check_out_file,
    has_display,
    nonneg_int,
    out_dir_arg,
    positive_float,
    positive_int,
    seed_int,
)
from .core.errors import HistogenInputError

EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1


def _has_display() -> bool:
    return has_display()


# -- verbs -------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    """Main job: synthetic H&E patches from the sample masks with the embedded NASDM model.

    Headless: the samples' annotations as files, then one synthetic patch per sample mask
    (image + mask pairs, mask | synthetic | real PNGs, provenance). With a display: napari
    with the sample loaded and the NASDM dock ready.
    """
    gui = args.gui if args.gui is not None else _has_display()
    if gui:
        return _demo_gui()
    from .core.demo import synthesize_demo
    from .core.io.bundle import write_annotated_bundle
    from .core.models.registry import list_nasdm_models
    from .core.provenance import make_provenance
    from .core.sample import ihc_sample, nucls_sample

    out = check_out_dir(args.out)
    for item in (ihc_sample(), nucls_sample()):
        files = write_annotated_bundle(item, out / "samples", provenance=make_provenance("histogen demo"))
        counts = item.nuclei.counts() if item.nuclei is not None else {}
        print(f"{item.name}: {item.nuclei.n_nuclei if item.nuclei else 0} nuclei {counts} -> {files['overlay']}")
    if args.model in (None, "default") and "default" not in list_nasdm_models():
        print("No embedded NASDM model in this installation: skipped synthesis (pass --model RUN/model).")
        return 0
    from .cli_common import ProgressBar, eprint

    bar = ProgressBar("synthesis", "step")
    try:
        written = synthesize_demo(out / "synthetic", model=args.model, steps=args.steps, seed=args.seed,
                                  device=args.device, progress=bar, log=eprint)
    finally:
        bar.close()
    for files in written:
        print(f"  {files['side_by_side']}")
    print(f"Wrote the samples and {len(written)} synthetic patches to {out}/ "
          "(open synthetic/*_side_by_side.png: mask | synthetic | real).")
    return 0


def _demo_gui() -> int:
    import napari

    from . import _layers
    from .core.demo import demo_masks

    from .core.engines.nasdm import read_model_config

    viewer = napari.Viewer(title="napari-histogen demo")
    config = read_model_config(None)  # the embedded default: show the sample at its scale
    size, mpp = (config.image_size, config.mpp) if config is not None else (128, 0.5)
    name, mask, real = demo_masks(size, mpp)[0]
    mag = f"{10 / mpp:g}x"  # 0.25 µm/px = 40x, 0.5 = 20x
    for data, kwargs, kind in (_layers.image_layer_data(real, f"{name} ({mag})", mpp=mask.mpp),
                               _layers.nuclei_layer_data(mask, f"{name} nuclei (CoNSeP classes, {mag})")):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    viewer.window.add_plugin_dock_widget("napari-histogen", "Annotate nuclei and tissue")
    viewer.window.add_plugin_dock_widget("napari-histogen", "NASDM synthesis")
    napari.run()
    return 0


def cmd_convert(args) -> int:
    """Read any supported annotation file and write the full export bundle."""
    from .core.io.bundle import write_annotated_bundle
    from .core.io.dispatch import read_annotated
    from .core.provenance import make_provenance

    from .core.scheme_maps import parse_class_map

    check_out_dir(args.out)
    item = read_annotated(args.input, index=args.index, scheme=args.scheme, class_map=parse_class_map(args.class_map))
    files = write_annotated_bundle(item, args.out, provenance=make_provenance("histogen convert", input=Path(args.input).name))
    n = item.nuclei.n_nuclei if item.nuclei is not None else 0
    print(f"{item.name}: {n} nuclei" + (f" ({item.nuclei.scheme.name}: {item.nuclei.counts()})" if n else ""))
    for role, path in files.items():
        print(f"  {role:10s} {path}")
    return 0


def cmd_convert_scheme(args) -> int:
    """Read any annotation file into another class scheme (NuCLS -> CoNSeP, QuPath -> CoNSeP) and write the bundle."""
    from .core.io.bundle import write_annotated_bundle
    from .core.io.convert import read_converted
    from .core.provenance import make_provenance
    from .core.scheme_maps import parse_class_map

    check_out_dir(args.out)
    class_map = parse_class_map(args.class_map)
    item = read_converted(args.input, args.to, class_map=class_map, index=args.index, scheme=args.scheme,
                          unclassified=args.unclassified)
    files = write_annotated_bundle(item, args.out, provenance=make_provenance(
        "histogen convert-scheme", input=Path(args.input).name, to=args.to, class_map=class_map))
    conversion = item.provenance.get("scheme_conversion", {})
    if conversion.get("mapping"):
        print(f"{conversion['from']} -> {conversion['to']}: "
              + ", ".join(f"{a} -> {b}" for a, b in conversion["mapping"].items()))
    n = item.nuclei.n_nuclei if item.nuclei is not None else 0
    print(f"{item.name}: {n} nuclei" + (f" ({item.nuclei.scheme.name}: {item.nuclei.counts()})" if n else ""))
    for role, path in files.items():
        print(f"  {role:10s} {path}")
    return 0


def cmd_grow(args) -> int:
    """Points CSV -> procedural nuclei mask, written as a bundle."""
    import numpy as np

    from .core.io.annotated import AnnotatedImage
    from .core.io.bundle import write_annotated_bundle
    from .core.io.pairs import read_points_csv, read_rgb_image
    from .core.points import grow_nuclei_from_points
    from .core.schemes import get_scheme

    check_out_dir(args.out)
    scheme = get_scheme(args.scheme)
    points, classes = read_points_csv(args.points, scheme=scheme)
    image = read_rgb_image(args.image) if args.image else None
    if image is not None:
        shape = image.shape[:2]
    elif args.shape:
        shape = tuple(args.shape)
    else:
        raise HistogenInputError("Give --image IMG or --shape H W so the mask has a size.")
    mask = grow_nuclei_from_points(points, classes, shape, scheme, mpp=args.mpp, seed=args.seed,
                                   size_scale=args.size_scale, gap=args.gap, outside=args.outside)
    item = AnnotatedImage(name=Path(args.points).stem, image=image, nuclei=mask, points=np.asarray(points),
                          point_classes=np.asarray(classes), point_scheme=scheme, mpp=args.mpp,
                          provenance=mask.metadata.get("provenance", {}))
    files = write_annotated_bundle(item, args.out)
    print(f"{mask.n_nuclei} nuclei grown from {len(points)} points (seed {args.seed}).")
    for role, path in files.items():
        print(f"  {role:10s} {path}")
    return 0


def cmd_schemes(args) -> int:
    """List the class schemes, show one, or save one as a file to edit."""
    from .core.schemes import get_scheme, list_schemes, load_scheme, save_scheme, scheme_dir

    if args.add:
        scheme = load_scheme(args.add)
        path = save_scheme(scheme)
        print(f"Added scheme '{scheme.name}' ({len(scheme.classes)} classes) as {path}")
        return 0
    if args.name:
        scheme = get_scheme(args.name)
        if args.save:
            check_out_file(args.save, "--save file")
            print(f"Saved {save_scheme(scheme, args.save)}")
        else:
            print(json.dumps(scheme.to_dict(), indent=2))
        return 0
    for name, scheme in list_schemes().items():
        classes = ", ".join(f"{c.id}={c.name}" for c in scheme.classes)
        print(f"{name:10s} {scheme.kind:7s} {classes}")
    print(f"(user schemes folder: {scheme_dir()})")
    return 0


def cmd_models(args) -> int:
    """List the models every engine of the registry can use without a network."""
    from .core.engines.base import ENGINES

    for info in ENGINES.values():
        for line in info.model_lines():
            print(line)
    return 0


def add_synthesize_parser(sub) -> None:
    """``histogen synthesize ENGINE``: one sub-command per engine of the registry."""
    from .cli_nasdm import add_nasdm_parser
    from .cli_transfer import add_transfer_parser
    from .core.engines.base import ENGINES

    from .cli_cosyn import add_cosyn_parser

    adders = {"nasdm": add_nasdm_parser, "transfer": add_transfer_parser, "cosyn": add_cosyn_parser}
    synth = sub.add_parser("synthesize", help=f"synthesize images for masks ({', '.join(n for n in ENGINES if n in adders)})")
    engines = synth.add_subparsers(dest="engine", metavar="ENGINE", required=True)
    for name in ENGINES:
        if name in adders:  # "exemplar" runs as `synthesize transfer --method example`
            adders[name](engines)


def add_models_parser(sub) -> None:
    from .cli_transfer import add_models_fetch

    p = sub.add_parser("models", help="list the synthesis models available offline (`models fetch`: get SD 1.5)")
    p.set_defaults(func=cmd_models)
    add_models_fetch(p)  # `histogen models fetch [sd15] [--out DIR] [--variant fp16]`


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="histogen",
        description="napari-histogen, headless: annotated samples, format conversion, point layouts, NASDM "
                    "training and synthesis, blinded reader studies.",
    )
    parser.add_argument("--version", action="version", version=f"napari-histogen {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")

    demo = sub.add_parser("demo", help="main job: synthetic H&E from the sample masks (napari if a display, else files)",
                          description="With a display: napari with the NuCLS sample's nuclei (CoNSeP classes, 20x) "
                                      "and the annotate and NASDM docks. Headless: the samples' annotations "
                                      "(PNG, overlay, OME-TIFF, GeoJSON, provenance) under OUT/samples, and one "
                                      "synthetic patch per sample mask from the embedded NASDM model under "
                                      "OUT/synthetic (image + mask, mask | synthetic | real PNG, provenance).")
    demo.add_argument("--out", default="histogen-demo", help="output folder when headless (default: histogen-demo)")
    demo.add_argument("--model", default="default", help="NASDM model (default: the embedded one)")
    demo.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the model's recommendation; 20 for the embedded model)")
    demo.add_argument("--seed", type=seed_int, default=0)
    demo.add_argument("--device", default="auto")
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument("--gui", dest="gui", action="store_true", default=None, help="open napari even if no display is detected")
    mode.add_argument("--headless", dest="gui", action="store_false", help="write files even if a display is present")
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser("convert", help="read any supported annotation file and write OME-TIFF, GeoJSON, overlay",
                             description="Read a Lizard/CoNSeP .mat, PanNuke/CoNIC .npy (FILE.npy::N or --index), "
                                         "an image with its .npz/.tif mask, an OME-TIFF or a GeoJSON, and write "
                                         "image PNG, overlay PNG, OME-TIFF, GeoJSON, points CSV and provenance JSON.")
    convert.add_argument("input", help="annotation file (or an image whose mask lies next to it)")
    convert.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    convert.add_argument("--index", type=nonneg_int, default=None, help="patch index in a dataset array (PanNuke, CoNIC)")
    convert.add_argument("--scheme", default=None, help="class scheme for files that do not record one")
    convert.add_argument("--class-map", default=None, metavar="NAME=CLASS,...",
                         help="GeoJSON: map class names the scheme lacks (\"Tumor=epithelial,Immune cells=inflammatory\" "
                              "or a .json/.yaml file of {NAME: CLASS}; CLASS 'unclassified' leaves them without one)")
    convert.set_defaults(func=cmd_convert)

    conv_scheme = sub.add_parser(
        "convert-scheme", help="read an annotation file into another class scheme (e.g. NuCLS or QuPath -> CoNSeP)",
        description="Read any annotation file 'convert' reads and give its nuclei (and points) the classes of "
                    "scheme --to, by the known equivalences (NuCLS tumor_any -> CoNSeP epithelial, nonTIL_stromal -> "
                    "spindle, sTIL -> inflammatory, other_nucleus -> other; Lizard, PanNuke and QuPath likewise) and "
                    "--class-map for the rest; write the same bundle as 'convert'.")
    conv_scheme.add_argument("input", help="annotation file (FILE.npy::N for a dataset patch)")
    conv_scheme.add_argument("--to", default="consep", help="target class scheme (default consep, the NASDM models')")
    conv_scheme.add_argument("--class-map", default=None, metavar="NAME=CLASS,...",
                             help="classes without a known equivalent: \"Positive=epithelial,Negative=unclassified\" "
                                  "or a .json/.yaml file of {NAME: CLASS}")
    conv_scheme.add_argument("--unclassified", default=None, metavar="CLASS",
                             help="class for the nuclei without one (NASDM needs a class for every nucleus; "
                                  "e.g. other); default: keep them unclassified")
    conv_scheme.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    conv_scheme.add_argument("--index", type=nonneg_int, default=None, help="patch index in a dataset array")
    conv_scheme.add_argument("--scheme", default=None, help="class scheme of the input, for files that do not record one")
    conv_scheme.set_defaults(func=cmd_convert_scheme)

    grow = sub.add_parser("grow", help="grow a nuclei mask from a CSV of typed centroid points",
                          description="Procedural nuclei at each point: class-typical ellipses, touching nuclei kept "
                                      "apart, seeded. CSV rows: x,y,class (NuCLS style, class from 0) or with a "
                                      "header row,col,class_id.")
    grow.add_argument("points", help="points CSV")
    grow.add_argument("--scheme", default="nucls", help="class scheme of the points (default nucls)")
    grow.add_argument("--image", default=None, help="image the mask should cover (gives the size)")
    grow.add_argument("--shape", type=positive_int, nargs=2, metavar=("H", "W"), help="mask size without an image")
    grow.add_argument("--mpp", type=positive_float, default=0.25, help="microns per pixel (default 0.25, 40x)")
    grow.add_argument("--seed", type=seed_int, default=0)
    grow.add_argument("--size-scale", type=positive_float, default=1.0, help="scale of the class-typical areas")
    grow.add_argument("--gap", type=nonneg_int, default=1, help="background pixels kept between nuclei")
    grow.add_argument("--outside", choices=("error", "drop"), default="error", help="points outside the image")
    grow.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    grow.set_defaults(func=cmd_grow)

    schemes = sub.add_parser("schemes", help="list, show, save or add class schemes",
                             description="Without arguments, list the schemes. With NAME, print it as JSON "
                                         "(or --save it to a file to edit). --add FILE installs a user scheme.")
    schemes.add_argument("name", nargs="?", help="scheme to show")
    schemes.add_argument("--save", help="write the scheme NAME to this .json/.yaml file")
    schemes.add_argument("--add", help="install a scheme file into the user scheme folder")
    schemes.set_defaults(func=cmd_schemes)

    # the engines' and the reader study's verbs live in their own modules
    from .cli_nasdm import add_merge_parser, add_train_parser
    from .cli_study import add_study_parser

    add_train_parser(sub)
    from .cli_generate import add_generate_parser  # noqa: E402 - NASDM++ mask generation (issue 17)

    add_generate_parser(sub)
    add_merge_parser(sub)
    add_synthesize_parser(sub)
    add_models_parser(sub)
    add_study_parser(sub)
    from .cli_evaluate import add_evaluate_parser  # noqa: E402 - evaluate downstream (issue 15)

    add_evaluate_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run one ``histogen`` verb; its exit status.

    0 done; 2 bad input or a place that cannot be written (one line on stderr); 1 an
    unexpected failure (one line on stderr naming a log file with the details); 130
    interrupted; 141 the reader of our output went away (``histogen ... | head``).
    Never a traceback on the terminal.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the guard, not at interpreter exit
        return status
    except HistogenInputError as err:
        _error_line(str(err))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("histogen: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except RecursionError:
        _error_line("the input is nested too deeply to read (a damaged or hostile file).")
        return EXIT_BAD_INPUT
    except MemoryError:
        _error_line("the input is too large for this machine's memory; crop or tile it first.")
        return EXIT_BAD_INPUT
    except OSError as err:  # a full disk, a read-only folder, a drive gone: the user can act on it
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        _error_line(f"{err.strerror or err}{where}; free space, check permissions or choose another place.")
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - the last guard: one line and a log, never a traceback
        log = _crash_log(err, argv)
        _error_line(f"unexpected {type(err).__name__}: {' '.join(str(err).split())[:300]} (details: {log})")
        return EXIT_UNEXPECTED


def _error_line(message: str) -> None:
    """One line on stderr, whatever the message holds (newlines, undecodable file names)."""
    text = " ".join(str(message).split())
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    try:
        print(f"histogen: error: {text}", file=sys.stderr)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """After a closed pipe, send what Python still flushes at exit nowhere (no second error)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _crash_log(err: BaseException, argv) -> str:
    """Write the traceback to a log file; its path (or a note that none could be written)."""
    import tempfile

    from .core.schemes import histogen_home

    text = (f"histogen {__version__} {_dt.datetime.now(_dt.timezone.utc).isoformat()}\n"
            f"argv: {sys.argv if argv is None else argv}\n\n"
            + "".join(traceback.format_exception(type(err), err, err.__traceback__)))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for folder in (histogen_home() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"histogen-error-{stamp}-{os.getpid()}.log"
            path.write_text(text, encoding="utf-8", errors="backslashreplace")
            return str(path)
        except OSError:
            continue
    return "no log could be written"


if __name__ == "__main__":
    sys.exit(main())
