"""``histogen evaluate``: does synthetic data help a nuclei segmenter? (``evaluate downstream``).

Wired into :func:`napari_histogen.cli.build_parser` by :func:`add_evaluate_parser`. The verb
calls one core function, :func:`napari_histogen.core.downstream.run_downstream`, and prints
its news and its table; bad input raises ``HistogenInputError`` (one line, status 2).
"""

from __future__ import annotations

import argparse

from .cli_common import positive_float, positive_int, seed_int
from .core.errors import HistogenInputError

__all__ = ["add_evaluate_parser", "cmd_evaluate_downstream", "parse_engine_options"]


def parse_engine_options(items) -> dict:
    """``['steps=20', 'guidance=0.25', 'sampler=dpmpp']`` -> ``{'steps': 20, 'guidance': 0.25, 'sampler': 'dpmpp'}``."""
    out: dict = {}
    for item in items or []:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise HistogenInputError(f"Engine options are KEY=VALUE (e.g. guidance=0.25), not {item!r}.")
        value: object = text.strip()
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def cmd_evaluate_downstream(args) -> int:
    """Train the segmenter on each arm and seed, score it on the validation tiles, print the table."""
    from .core.downstream import DownstreamSettings, run_downstream

    settings = DownstreamSettings(
        data=args.data, fmt=args.format, out=args.out, engine=args.engine, model=args.model,
        engine_options=parse_engine_options(args.engine_option), device=args.device, arms=tuple(args.arms),
        seeds=tuple(args.seeds), real_fraction=args.real_fraction, mpp=args.mpp, patch_size=args.patch_size,
        min_tissue=args.min_tissue, val_fraction=args.val_fraction, split_seed=args.split_seed,
        max_val=args.max_val, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        base_channels=args.base_channels, depth=args.depth, precision=args.precision)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = run_downstream(settings, log=print)
    print()
    print(report.files[1].read_text().rstrip())
    print(f"\nWrote {', '.join(str(p) for p in report.files)} ({report.seconds / 60:.1f} min)")
    return 0


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` with its subcommand ``downstream`` to ``subparsers``."""
    from .core.downstream import ARMS, DownstreamSettings

    d = DownstreamSettings()
    evaluate = subparsers.add_parser("evaluate", help="benchmarks of synthetic data: downstream segmentation",
                                     description="Measure what synthetic patches are worth.")
    sub = evaluate.add_subparsers(dest="evaluate_verb", metavar="BENCHMARK")
    evaluate.set_defaults(func=lambda args: (evaluate.print_help(), 0)[1])
    p = sub.add_parser(
        "downstream", help="train a nuclei segmenter on real / synthetic patches, score it on real validation tiles",
        description="Arms: " + "; ".join(f"{k}: {v.format(part=25, rest=75)}" for k, v in ARMS.items())
        + ". Each arm and seed trains the same small HoVer-style U-Net for the same number of steps and is scored "
          "on the validation tiles of the split by source image (Dice, AJI, PQ, per-type F1; mean ± 95 % t "
          "interval over seeds). Resumable: finished runs and synthetic patches are cached in --out. "
          "See docs/downstream.md.")
    p.add_argument("--data", required=True, help="dataset folder or file (formats of 'histogen train nasdm')")
    p.add_argument("--format", default="auto", help="dataset format (auto, lizard, consep, pannuke, conic, folder)")
    p.add_argument("--out", default=d.out, help="run folder (resumed when it exists; default %(default)s)")
    p.add_argument("--engine", default=d.engine, help="synthesis engine by name (default %(default)s)")
    p.add_argument("--model", default=d.model, help="its model: a name of 'histogen models' or a path "
                                                     "(default %(default)s)")
    p.add_argument("--engine-option", action="append", default=None, metavar="KEY=VALUE",
                   help="a request field of the engine, e.g. steps=20 or guidance=0.25 (repeatable)")
    p.add_argument("--device", default=d.device, help="device of the synthesis engine (default %(default)s)")
    p.add_argument("--arms", nargs="+", default=list(d.arms), choices=list(ARMS), help="arms to run (default: all)")
    p.add_argument("--seeds", nargs="+", type=seed_int, default=list(d.seeds), help="seeds (default 0 1 2)")
    p.add_argument("--real-fraction", type=positive_float, default=d.real_fraction,
                   help="the real part of arms a, c, d (default %(default)s)")
    p.add_argument("--mpp", type=positive_float, default=d.mpp, help="segmenter scale, µm/px (default %(default)s)")
    p.add_argument("--patch-size", type=positive_int, default=d.patch_size, help="patch side in px (default %(default)s)")
    p.add_argument("--min-tissue", type=float, default=d.min_tissue, help="drop windows with less tissue "
                                                                           "(default %(default)s)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="fraction of source images held out (default %(default)s)")
    p.add_argument("--split-seed", type=seed_int, default=d.split_seed, help="seed of the split (default %(default)s)")
    p.add_argument("--max-val", type=positive_int, default=None, help="score on N evenly spaced validation patches")
    p.add_argument("--steps", type=positive_int, default=d.steps, help="training steps per arm (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="default %(default)s")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="default %(default)s")
    p.add_argument("--base-channels", type=positive_int, default=d.base_channels, help="default %(default)s")
    p.add_argument("--depth", type=positive_int, default=d.depth, help="default %(default)s")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=d.precision,
                   help="segmenter training precision (bf16 autocast is 2-3x faster on CPUs with AMX; "
                        "default %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_evaluate_downstream)
    return evaluate
