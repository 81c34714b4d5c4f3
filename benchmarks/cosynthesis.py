"""Co-synthesis against the no-model route (procedural grower + NASDM) on held-out CoNSeP tiles.

Input layouts: the centroids (with classes) of the real nuclei of the validation patches
(CoNSeP tiles held out by the training split: train_3, train_13, train_19), 256 px at 40x.
Sets, N patches each (evenly spaced over the validation patches):

- **real**: the validation patches with their real masks; **train_real**: as many training
  patches (the real-vs-real floor of KID);
- **cosyn**: ``CosynEngine`` (``--model``): image + mask from the points;
- **grower+nasdm**: ``grow_nuclei_from_points`` (the procedural ellipses) -> mask ->
  ``NasdmEngine`` (``--nasdm``, the embedded default) -> image.

Measures:

- realism: KID (x1000, mean ± sd over subsets of N/2) of each set's images against the real
  validation images, Inception features at 20x (2x2 box average, as benchmarks/nasdm_quality.py);
- label-image agreement: the classical haematoxylin-watershed segmenter
  (``core.metrics.segment.segment_nuclei_hed``) on each image against the mask that came with
  it (Dice, AJI), at 20x; "real" is the same for the real pairs (the target);
- point fidelity: fraction of input points that lie in exactly one nucleus of their class that
  holds no other point; fraction of nuclei that hold no point; nuclei per point.

``--crc FOLDER`` adds real typed point layouts without masks: the CRCHistoPhenotypes
validation images (20x), the typed points of a 128 px crop (epithelial -> epithelial,
inflammatory -> inflammatory, fibroblast -> spindle-shaped, others -> other), generated at the
model's 40x (256 px); point fidelity and label-image agreement only (research data: never shipped).

Run::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/cosynthesis.py \
        --data ../shared/data/consep_patches256 --model runs/cosyn/model --n 40 --out runs/cosyn_bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_histogen.core.cosyn.layout import centroids, pixel_of
from napari_histogen.core.engines.cosyn import CosynEngine, CosynRequest
from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
from napari_histogen.core.masks import NucleiMask, resample_nuclei
from napari_histogen.core.metrics.consistency import consistency_scores
from napari_histogen.core.metrics.realism import inception_features, kid, load_inception
from napari_histogen.core.metrics.segment import segment_nuclei_hed
from napari_histogen.core.nasdm.data import build_patch_set
from napari_histogen.core.points import grow_nuclei_from_points

DATA_MPP = 0.25
EVAL_MPP = 0.5


def to_eval_scale(image: np.ndarray) -> np.ndarray:
    from skimage.transform import downscale_local_mean

    return np.clip(np.rint(downscale_local_mean(image.astype(np.float64), (2, 2, 1))), 0, 255).astype(np.uint8)


def point_fidelity(mask: NucleiMask, points, classes) -> dict:
    """Points in exactly one nucleus of their class (holding no other point); nuclei without a point."""
    inst = mask.instances
    h, w = inst.shape
    pix = pixel_of(points)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < h) & (pix[:, 1] >= 0) & (pix[:, 1] < w)
    hit = np.zeros(len(pix), np.int64)
    hit[inside] = inst[pix[inside, 0], pix[inside, 1]]
    counts: dict[int, int] = {}
    for nid in hit[hit > 0]:
        counts[int(nid)] = counts.get(int(nid), 0) + 1
    good = [nid > 0 and counts[int(nid)] == 1 and mask.classes.get(int(nid)) == int(c) for nid, c in zip(hit, classes)]
    ids = set(np.unique(inst).tolist()) - {0}
    without = len(ids - set(counts))
    return {"points_ok": float(np.mean(good)) if len(good) else float("nan"),
            "nuclei_without_point": without / max(1, len(ids)), "nuclei_per_point": len(ids) / max(1, len(pix))}


def summarise(rows: list[dict]) -> dict:
    return {k: (float(np.nanmean([r[k] for r in rows])), float(np.nanstd([r[k] for r in rows]))) for k in rows[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True, help="co-synthesis model (run's model/ folder)")
    parser.add_argument("--nasdm", default="default", help="NASDM model of the baseline")
    parser.add_argument("--n", type=int, default=40, help="validation patches (evenly spaced)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/cosyn_bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--crc", default=None, help="CRCHistoPhenotypes cls_and_det/validation folder (optional)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ps = build_patch_set(args.data, target_mpp=DATA_MPP, patch_size=256, overlap=0.0, min_tissue=0.5,
                         val_fraction=0.1, seed=0)
    refs = list(ps.val)
    if args.n < len(refs):
        refs = [refs[int(i)] for i in np.linspace(0, len(refs) - 1, args.n).round()]
    val = [ps.crop(r) for r in refs]
    n = len(val)
    print(f"{n} validation patches from tiles {sorted({r.source_id for r in refs})}")
    rng = np.random.default_rng(args.seed)
    train_refs = list(ps.train)
    train_real = [to_eval_scale(np.asarray(ps.crop(train_refs[i])[0]))
                  for i in rng.choice(len(train_refs), size=n, replace=False)]

    cosyn = CosynEngine(args.model, device="cpu")
    nasdm = NasdmEngine(args.nasdm, device="cpu")
    sets: dict[str, list] = {"real": [], "cosyn": [], "grower+nasdm": []}
    masks: dict[str, list] = {"real": [], "cosyn": [], "grower+nasdm": []}
    fidelity: dict[str, list] = {"real": [], "cosyn": [], "grower+nasdm": []}
    seconds = {"cosyn": 0.0, "grower+nasdm": 0.0}
    for i, (image, inst, classes) in enumerate(val):
        real_mask = NucleiMask.create(np.ascontiguousarray(inst), classes, "consep", mpp=DATA_MPP)
        pts, cls = centroids(real_mask.instances, real_mask.classes)
        sets["real"].append(np.asarray(image))
        masks["real"].append(real_mask)
        fidelity["real"].append(point_fidelity(real_mask, pts, cls))
        t0 = time.perf_counter()
        res = cosyn.run(CosynRequest(points=pts, point_classes=cls, shape=(256, 256), mpp=DATA_MPP, steps=args.steps,
                                     guidance=args.guidance, seed=args.seed + i))[0]
        seconds["cosyn"] += time.perf_counter() - t0
        sets["cosyn"].append(res.image)
        masks["cosyn"].append(res.mask)
        fidelity["cosyn"].append(point_fidelity(res.mask, pts, cls))
        t0 = time.perf_counter()
        grown = grow_nuclei_from_points(pts, cls, (256, 256), "consep", mpp=DATA_MPP, seed=args.seed + i,
                                        outside="drop")
        base = nasdm.run(NasdmRequest(nuclei=grown, seed=args.seed + i))[0]
        seconds["grower+nasdm"] += time.perf_counter() - t0
        sets["grower+nasdm"].append(base.image)
        masks["grower+nasdm"].append(base.mask)
        fidelity["grower+nasdm"].append(point_fidelity(base.mask, pts, cls))
        print(f"\r{i + 1}/{n}", end="", flush=True)
    print()

    from skimage.io import imsave

    rows = []
    for k in range(min(4, n)):
        from napari_histogen.core.cosyn.train import label_rgb

        row = [sets["real"][k], sets["cosyn"][k], label_rgb(masks["cosyn"][k].type_map()), sets["grower+nasdm"][k],
               label_rgb(masks["grower+nasdm"][k].type_map())]
        rows.append(np.concatenate(row, axis=1))
    imsave(out / "side_by_side.png", np.concatenate(rows, axis=0), check_contrast=False)

    agreement = {}
    for name in sets:
        scores = []
        for img, m in zip(sets[name], masks[name]):
            m20 = resample_nuclei(m, EVAL_MPP)
            scores.append(consistency_scores(m20.instances, segment_nuclei_hed(to_eval_scale(img), mpp=EVAL_MPP)))
        agreement[name] = summarise(scores)
    net = load_inception(None)
    feats = {name: inception_features(net, [to_eval_scale(im) for im in images]) for name, images in sets.items()}
    feats["train_real"] = inception_features(net, train_real)
    subset = max(2, n // 2)
    realism = {name: kid(feats[name], feats["real"], subset_size=subset, n_subsets=100, seed=args.seed)
               for name in ("train_real", "cosyn", "grower+nasdm")}
    fid_sum = {name: summarise(rows_) for name, rows_ in fidelity.items()}

    print(f"\nRealism: KID x1000 vs {n} real validation patches (Inception at 20x, subsets of {subset})")
    for name, (m, s) in realism.items():
        print(f"  {name:14s} {1000 * m:7.1f} ± {1000 * s:5.1f}")
    print("\nLabel-image agreement: classical watershed segmenter on the image vs the image's own mask (20x)")
    print(f"  {'set':14s} {'Dice':>6s} {'AJI':>6s} {'recovered':>9s}")
    for name, a in agreement.items():
        print(f"  {name:14s} {a['dice'][0]:6.3f} {a['aji'][0]:6.3f} {a.get('recovered', (float('nan'),))[0]:9.3f}")
    print("\nPoint fidelity (input points = real centroids)")
    print(f"  {'set':14s} {'points ok':>9s} {'nuclei w/o point':>16s} {'nuclei/point':>12s} {'s/patch':>8s}")
    for name, f in fid_sum.items():
        sec = seconds.get(name)
        print(f"  {name:14s} {f['points_ok'][0]:9.3f} {f['nuclei_without_point'][0]:16.3f} "
              f"{f['nuclei_per_point'][0]:12.3f} {'' if sec is None else f'{sec / n:8.1f}'}")
    crc = crc_layouts(args.crc) if args.crc else []
    crc_rows, crc_agree = [], []
    for i, (name, pts, cls) in enumerate(crc):
        res = cosyn.run(CosynRequest(points=pts, point_classes=cls, shape=(128, 128), mpp=0.5, steps=args.steps,
                                     guidance=args.guidance, seed=args.seed + i))[0]
        scaled = pts * (0.5 / DATA_MPP)
        crc_rows.append(point_fidelity(res.nuclei, scaled, cls))
        m20 = resample_nuclei(res.nuclei, EVAL_MPP)
        crc_agree.append(consistency_scores(m20.instances, segment_nuclei_hed(to_eval_scale(res.image), mpp=EVAL_MPP)))
        if i < 4:
            imsave(out / f"crc_{name}.png", np.concatenate([res.image, label_rgb_of(res.nuclei)], axis=1),
                   check_contrast=False)
    crc_summary = None
    if crc_rows:
        crc_summary = {**summarise(crc_rows), **summarise(crc_agree)}
        print(f"\nCRCHistoPhenotypes layouts ({len(crc_rows)} crops of 128 px at 20x, typed points only)")
        print(f"  points ok {crc_summary['points_ok'][0]:.3f}, nuclei w/o point "
              f"{crc_summary['nuclei_without_point'][0]:.3f}, nuclei/point {crc_summary['nuclei_per_point'][0]:.3f}, "
              f"segmenter vs generated mask Dice {crc_summary['dice'][0]:.3f} AJI {crc_summary['aji'][0]:.3f}")
    (out / "results.json").write_text(json.dumps({"crc": crc_summary,
        "n": n, "kid_subset": subset, "steps": args.steps, "guidance": args.guidance, "model": cosyn.describe(),
        "nasdm": nasdm.describe(), "realism_kid": realism, "agreement": agreement, "point_fidelity": fid_sum,
        "seconds_per_patch": {k: v / n for k, v in seconds.items()}}, indent=2, default=str))


def label_rgb_of(mask: NucleiMask) -> np.ndarray:
    from napari_histogen.core.cosyn.train import label_rgb

    return label_rgb(mask.type_map())


#: CRCHistoPhenotypes point files -> CoNSeP class ids
CRC_CLASSES = {"epithelial": 3, "inflammatory": 2, "fibroblast": 4, "others": 1}


def crc_layouts(folder, crop: int = 128):
    """``(name, points (N, 2) row/col at 20x, classes)`` of the top-left ``crop`` px of each image."""
    import scipy.io as sio

    out = []
    for img_dir in sorted(Path(folder).iterdir()):
        if not img_dir.is_dir():
            continue
        pts, cls = [], []
        for kind, cid in CRC_CLASSES.items():
            f = img_dir / f"{img_dir.name}_{kind}.mat"
            if f.is_file():
                xy = sio.loadmat(str(f))["detection"].astype(float).reshape(-1, 2) - 1  # 1-based (x, y)
                pts.append(xy[:, ::-1])
                cls.append(np.full(len(xy), cid))
        if not pts:
            continue
        p, c = np.concatenate(pts), np.concatenate(cls)
        keep = (p[:, 0] < crop - 0.5) & (p[:, 1] < crop - 0.5)
        if keep.sum() >= 3:
            out.append((img_dir.name, p[keep], c[keep]))
    return out


if __name__ == "__main__":
    main()
