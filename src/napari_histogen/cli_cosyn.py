"""``histogen synthesize cosyn`` and ``histogen train cosyn``, headless.

``cli.py`` wires :func:`add_cosyn_parser` under the engines of ``histogen synthesize``;
``cli_nasdm.add_train_parser`` calls :func:`add_cosyn_train_parser`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli_common import (ProgressBar, add_device_options, defaults_of, eprint, out_dir_arg, positive_int, run_training,
                         seed_int)

__all__ = ["add_cosyn_parser", "add_cosyn_train_parser", "cmd_synthesize_cosyn", "cmd_train_cosyn"]


def cmd_synthesize_cosyn(args) -> int:
    """Point files -> image + nuclei mask + distance map per file (and per sample)."""
    import numpy as np
    from skimage.io import imsave

    from .core.engines.cosyn import CosynEngine, CosynRequest
    from .core.errors import HistogenInputError
    from .core.io.points import collect_point_files, read_point_layout
    from .core.io.synthesis import write_synthesis_pair

    files = collect_point_files(args.points)
    engine = CosynEngine(args.model, device=args.device, precision=args.precision)
    info = engine.describe()
    eprint(f"Model {info['model']} ({info['weights']}, sha256 {str(info['sha256'])[:12]}...), scheme "
           f"{info['scheme']}, {info['image_size']} px at {info['mpp']:g} µm/px, device {engine.device}.")
    scheme = engine.scheme
    out = Path(args.out)
    written, skipped = 0, []
    bar = ProgressBar("co-synthesis", "step")
    try:
        for i, path in enumerate(files):
            try:
                points, classes = read_point_layout(path, scheme)
                shape = tuple(args.shape) if args.shape else _shape_around(points)
                request = CosynRequest(points=points, point_classes=classes, shape=shape, mpp=args.mpp,
                                       prompt=args.prompt, n_samples=args.n, steps=args.steps,
                                       guidance=args.guidance, seed=args.seed, min_size=args.min_size)
                results = engine.run(request, progress=bar)
            except HistogenInputError as err:
                skipped.append((path.name, str(err)))
                eprint(f"Skipped {path.name}: {err}")
                continue
            for res in results:
                stem = f"{path.stem}_s{res.seed}"
                res.provenance["parameters"]["points_source"] = path.name
                paths = write_synthesis_pair(out, stem, res.image, res.nuclei, res.provenance)
                dist = res.extras["distance"]
                np.save(out / f"{stem}_distance.npy", dist.astype(np.float32))
                imsave(out / f"{stem}_distance.png", np.round(np.clip(dist, 0, 1) * 255).astype(np.uint8),
                       check_contrast=False)
                for note in res.notes:
                    eprint(f"Note ({stem}): {note}")
                eprint(f"{stem}: {paths['image']} ({res.nuclei.n_nuclei} nuclei from {len(points)} points)")
                written += 1
    finally:
        bar.close()
    print(f"{written} output(s) written to {out}; {len(skipped)} point file(s) skipped.")
    return 0 if written else 2


def _shape_around(points) -> tuple[int, int]:
    """Without --shape: the smallest multiple of 8 holding every point with a margin of 8 px."""
    import numpy as np

    high = np.max(points, axis=0) if len(points) else np.zeros(2)
    return tuple(int(-(-(int(v) + 9) // 8) * 8) for v in high)  # type: ignore[return-value]


def add_cosyn_parser(engines) -> None:
    """Add ``cosyn`` to the engines of ``histogen synthesize`` (defaults: :class:`CosynRequest`'s)."""
    from .core.engines.cosyn import CosynRequest

    d = defaults_of(CosynRequest)
    p = engines.add_parser(
        "cosyn", help="H&E patch + typed nuclei mask + distance map from a point layout (co-synthesis)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="For every point file (CSV x,y,class or our row,col,class_id export; GeoJSON Point features; "
                    "or a folder of them) draw N outputs and write <points>_s<seed>.png (image), .npz/.ome.tif "
                    "(nuclei mask from the generated distance map, one nucleus per point by marker-controlled "
                    "watershed), _distance.npy/.png, _side_by_side.png and .json (provenance) to --out.")
    p.add_argument("--points", required=True, help="point file (.csv, .geojson) or a folder of them")
    p.add_argument("--model", default="default", help="'default' (embedded, if any), a cached model name, or a path")
    p.add_argument("--out", required=True, type=out_dir_arg, help="output folder")
    p.add_argument("--shape", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                   help="image size in pixels at --mpp (default: just around the points)")
    p.add_argument("--mpp", type=float, default=d["mpp"], help="µm/px of the points (default: the model's)")
    p.add_argument("--prompt", type=int, nargs="+", default=None,
                   help="class ids of the type prompt (default: the classes present among the points)")
    p.add_argument("--n", type=positive_int, default=d["n_samples"], help="outputs per point file")
    p.add_argument("--steps", type=positive_int, default=d["steps"], help="denoising steps")
    p.add_argument("--guidance", type=float, default=d["guidance"], help="classifier-free guidance scale")
    p.add_argument("--min-size", type=int, default=d["min_size"], help="smallest nucleus kept (pixels)")
    p.add_argument("--seed", type=seed_int, default=d["seed"], help="output k uses seed + k")
    add_device_options(p)
    p.set_defaults(func=cmd_synthesize_cosyn)


def cmd_train_cosyn(args) -> int:
    """Train or resume a co-synthesis model."""
    from .core.cosyn.train import CosynTrainSettings, train_cosyn

    settings = CosynTrainSettings(
        data=args.data, out=args.out, fmt=args.format, size=args.size, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, cond_drop=args.cond_drop, lambda_i=args.lambda_i, lambda_d=args.lambda_d,
        lambda_l=args.lambda_l, label_ce=args.label_ce, val_fraction=args.val_fraction,
        transforms=args.transforms, sample_every=args.sample_every, checkpoint_every=args.checkpoint_every,
        device=args.device, seed=args.seed, threads=args.threads,
        precision=args.precision if args.precision in ("auto", "fp32", "bf16") else "auto")
    return run_training(train_cosyn, settings)


def add_cosyn_train_parser(engines) -> None:
    """Add ``cosyn`` to the engines of ``histogen train`` (defaults: :class:`CosynTrainSettings`'s)."""
    from dataclasses import fields

    from .core.cosyn.train import CosynTrainSettings

    d = {f.name: f.default for f in fields(CosynTrainSettings)}
    p = engines.add_parser(
        "cosyn", help="train or resume a co-synthesis model (image + label + distance map from points)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train the joint co-synthesis model on a labelled nuclei dataset (centroids from its instance "
                    "maps; validation tiles held out by source). Running it again with the same --out resumes "
                    "(--steps is the total). RUN_DIR gets run.json, log.csv, latents/, samples/*.png, "
                    "checkpoints/last/ and model/cosyn.safetensors + .json.")
    p.add_argument("--data", required=True, help="dataset file or folder (e.g. CoNSeP patches)")
    p.add_argument("--out", required=True, help="run folder (resumed when it holds a checkpoint)")
    p.add_argument("--format", default=d["fmt"], help="dataset format (auto-detected by default)")
    p.add_argument("--size", default=d["size"], choices=("tiny", "cpu", "small"), help="network preset")
    p.add_argument("--steps", type=positive_int, default=d["steps"], help="total optimisation steps")
    p.add_argument("--batch-size", type=positive_int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--cond-drop", type=float, default=d["cond_drop"], help="classifier-free guidance dropout")
    p.add_argument("--lambda-i", type=float, default=d["lambda_i"], help="weight of the image loss")
    p.add_argument("--lambda-d", type=float, default=d["lambda_d"], help="weight of the distance-map loss")
    p.add_argument("--lambda-l", type=float, default=d["lambda_l"], help="weight of the label loss")
    p.add_argument("--label-ce", type=float, default=d["label_ce"], help="weight of the clean-label cross-entropy")
    p.add_argument("--val-fraction", type=float, default=d["val_fraction"], help="fraction of source tiles held out")
    p.add_argument("--transforms", type=positive_int, default=d["transforms"], help="dihedral transforms (1-8)")
    p.add_argument("--sample-every", type=positive_int, default=d["sample_every"])
    p.add_argument("--checkpoint-every", type=positive_int, default=d["checkpoint_every"])
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads")
    p.add_argument("--seed", type=seed_int, default=d["seed"])
    add_device_options(p)
    p.set_defaults(func=cmd_train_cosyn)
