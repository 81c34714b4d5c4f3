"""What the ``histogen`` verbs share: the progress bar, device options, schemes, request defaults."""

from __future__ import annotations

import sys

__all__ = ["ProgressBar", "add_device_options", "scheme_or_none", "defaults_of", "eprint"]


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
