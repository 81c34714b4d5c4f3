"""What the ``histogen`` verbs share: the progress bar, device options, schemes, request defaults, batch reports."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["ProgressBar", "add_device_options", "scheme_or_none", "defaults_of", "eprint", "report_batch",
           "positive_int", "nonneg_int", "seed_int", "positive_float", "has_display", "check_out_dir",
           "check_out_file", "out_dir_arg"]

#: Seeds the product accepts: every random generator it feeds (numpy, torch) takes them.
SEED_MAX = 2**32 - 1


def _int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def nonneg_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed 0 .. 2**32 - 1."""
    value = _int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is 0..{SEED_MAX}, not {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


class ProgressBar:
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


def eprint(message: str) -> None:
    """Print a log line on stderr (stdout carries the results)."""
    print(message, file=sys.stderr)


def print_trained(result) -> None:
    """Print where a finished training run (a :class:`~napari_histogen.core.nasdm.train.TrainResult`) put its outputs."""
    print(f"Trained to step {result.step} in {result.seconds:.0f} s (last loss {result.last_loss}).")
    print(f"  model        {result.model_path}")
    for grid in result.sample_grids[-1:]:
        print(f"  sample grid  {grid}")
    print(f"  log          {result.run_dir / 'log.csv'}")


def run_training(train, settings) -> int:
    """``train(settings, progress=..., log_fn=eprint)`` with a progress bar, then :func:`print_trained`; exit code 0."""
    bar = ProgressBar("training", "step")
    try:
        result = train(settings, progress=bar, log_fn=eprint)
    finally:
        bar.close()
    print_trained(result)
    return 0


def add_device_options(parser, *, precision_help: str = "auto (bf16 on CUDA), fp32, bf16, fp16") -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", default="auto", help=precision_help)


def scheme_or_none(spec):
    """The class scheme named ``spec`` (None for none); unknown names are an input error."""
    if not spec:
        return None
    from .core.schemes import get_scheme

    return get_scheme(spec)


def defaults_of(request_type) -> dict:
    """A request dataclass's defaults (the CLI writes none of its own)."""
    from .core.engines.base import request_defaults

    return request_defaults(request_type)


def report_batch(report, out, what: str) -> int:
    """Print what a batch run wrote and skipped (with reasons); the exit code: 0, or 2 when nothing was written.

    ``report`` is a :class:`~napari_histogen.core.engines.batch.BatchReport`; ``what`` names the
    skipped inputs (``'mask(s)'``, ``'source(s)'``).
    """
    print(f"Wrote {len(report.written)} image + mask pairs to {out}"
          + (f"; skipped {len(report.skipped)} {what}:" if report.skipped else "."))
    for path, reason in report.skipped:
        print(f"  {path}: {reason}")
    return 0 if report.written else 2


def has_display() -> bool:
    """Whether a window can open (X11/Wayland, or macOS/Windows)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def check_out_dir(path, what: str = "--out"):
    """Before any work: ``path`` is a folder, or can be made one, where we may write.

    Raises
    ------
    HistogenInputError
        ``path`` is a file, a name in it is too long, or the nearest existing folder
        above it is not writable.
    """
    from pathlib import Path

    from .core.errors import HistogenInputError

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise HistogenInputError(f"{what} {out} is a file, not a folder; give a folder.")
    _check_names(out, what)
    _check_writable(out if out.is_dir() else _existing_ancestor(out), what, out)
    return out


def check_out_file(path, what: str = "output file"):
    """Before any work: ``path`` is not a folder, and its folder exists (or can be made) and is writable."""
    from pathlib import Path

    from .core.errors import HistogenInputError

    out = Path(path)
    if out.is_dir():
        raise HistogenInputError(f"The {what} {out} is a folder; give a file name.")
    _check_names(out, what)
    _check_writable(_existing_ancestor(out.parent), what, out)
    return out


def _check_names(path, what) -> None:
    from .core.errors import HistogenInputError

    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise HistogenInputError(f"The {what} has a name over 255 bytes ({part[:40]}...); shorten it.")


def _existing_ancestor(path):
    from pathlib import Path

    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    return here


def _check_writable(folder, what, target) -> None:
    from .core.errors import HistogenInputError

    if not folder.is_dir():
        raise HistogenInputError(f"Cannot make the {what} {target}: {folder} is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise HistogenInputError(f"Cannot write the {what} {target}: {folder} is not writable; choose another place.")


def out_dir_arg(text: str) -> str:
    """argparse type: an output folder checked before any work (see :func:`check_out_dir`)."""
    from .core.errors import HistogenInputError

    try:
        check_out_dir(text, "output folder")
    except HistogenInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text
