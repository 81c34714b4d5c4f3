"""Does synthetic data help a nuclei segmenter? ``histogen evaluate downstream`` with the CoNSeP defaults.

Arms (a) 25 % real, (b) 100 % real, (c) 25 % real + synthetic from the other 75 %'s masks,
(d) generated masks (skipped until the mask-generation engine exists), (e) synthetic only;
seeds 0 1 2; Dice, AJI, PQ and per-type F1 on the validation tiles of the default model's
split, with 95 % t intervals; a Markdown table, a JSON and a bar plot (see docs/downstream.md).
Resumable: run it again with the same options to continue.

Run (every option of ``histogen evaluate downstream --help`` is accepted)::

    .venv/bin/python benchmarks/downstream.py --out downstream-default --model default --threads 1
    .venv/bin/python benchmarks/downstream.py --out downstream-quick --seeds 0 --arms a b c --steps 300
"""

from __future__ import annotations

import sys

from napari_histogen.cli import main

DEFAULT_DATA = "../shared/data/consep_patches256"


def run(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--data" not in args:
        args = ["--data", DEFAULT_DATA] + args
    return main(["evaluate", "downstream", *args])


if __name__ == "__main__":
    sys.exit(run())
