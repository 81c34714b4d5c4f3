"""Peak memory and time of one NASDM canvas by size (PathUp tiling), each size in a fresh process.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/canvas_memory.py --sizes 512 1024 2048 4096 --steps 1

The mask is a regular grid of small typed nuclei at the model's scale (0.25 µm/px for the
embedded default); peak resident memory does not depend on the number of steps, so
``--steps 1`` measures memory quickly, and the full step count measures time.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _one(size: int, steps: int | None, model: str, threads: int) -> dict:
    import numpy as np
    import torch

    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest, read_model_config
    from napari_histogen.core.masks import NucleiMask

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    inst = np.zeros((size, size), np.int32)
    k = 0
    for y in range(8, size - 16, 24):
        for x in range(8, size - 16, 24):
            k += 1
            dy, dx = rng.integers(-4, 5, 2)
            inst[y + dy:y + dy + 12, x + dx:x + dx + 10] = k
    classes = {i: int(rng.integers(1, 5)) for i in range(1, k + 1)}
    nuclei = NucleiMask.create(inst, classes, "consep", mpp=read_model_config(model).mpp)
    engine = NasdmEngine(model, device="cpu")
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    engine.run(NasdmRequest(nuclei=nuclei, seed=0, steps=steps))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"size": size, "seconds": seconds, "peak_mib": peak, "model_loaded_mib": loaded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--steps", type=int, default=None, help="default: the model's recommendation")
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:  # child: one size, JSON on stdout
        print(json.dumps(_one(args.one, args.steps, args.model, args.threads)))
        return
    print(f"model {args.model}, steps {args.steps or 'model default'}, {args.threads} thread(s)")
    print(f"{'size px':>8} {'seconds':>9} {'s/MP':>7} {'peak MiB':>9} {'model MiB':>10}")
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(size), "--model", args.model, "--threads", str(args.threads)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        print(f"{size:>8} {row['seconds']:>9.1f} {row['seconds'] / (size * size / 1e6):>7.1f} "
              f"{row['peak_mib']:>9.0f} {row['model_loaded_mib']:>10.0f}")


if __name__ == "__main__":
    main()
