"""Generated nuclei masks against real ones on the validation tiles (issue 17, NASDM++ section 3.1).

Sets of masks, all at 40x (0.25 µm/px, 256 px = the CoNSeP patches), N = the validation patches
(or ``--max-patches`` evenly spaced ones):

- **val**: the real masks of the validation tiles (``train_3``, ``train_13``, ``train_19``);
- **train** (the floor): N random training masks (real vs real);
- **generated**: one mask per validation patch from the mask model, conditioned on that patch's
  type vector (the classes it holds), seed ``seed + i``, decoded at 40x;
- **baseline** (trivial): the procedural grower (``core.points``) on uniformly random points,
  as many as the training patches' mean count, each of a random class of the same type vector.

Statistics, each a Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) to **val**:
nuclei per patch; area (µm²) and eccentricity per class; nearest-neighbour centroid distance
(µm); touching fraction (share of a patch's nuclei that touch another nucleus) and nuclei per
foreground blob (how well touching nuclei are told apart). Type composition: recall (share of
requested types present, per patch) and leak (share of patches holding an unrequested type).

Realism (``--kid``): the default NASDM image model draws one image per real validation mask and
one per generated mask (same seeds); KID (Inception, ``core.metrics.realism``) of each set
against the real validation H&E patches, at 20x as ``benchmarks/nasdm_quality.py`` scores.

Run (one thread; about 10 minutes with --kid on this project's CPU)::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/mask_generation.py \
        --model runs/maskgen/model --data ../shared/data/consep_patches256 --kid --out mask-generation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from scipy.stats import wasserstein_distance

from napari_histogen.core.engines.maskgen import MaskGenEngine, MaskGenRequest
from napari_histogen.core.masks import NucleiMask
from napari_histogen.core.nasdm.data import build_patch_set
from napari_histogen.core.points import grow_nuclei_from_points

MPP = 0.25
EVAL_MPP = 0.5


def mask_stats(mask: NucleiMask, class_ids) -> dict:
    """Per-patch and per-nucleus statistics of one mask (µm units)."""
    from skimage.measure import regionprops

    inst = mask.instances
    props = regionprops(inst)
    area = {c: [] for c in class_ids}
    ecc = {c: [] for c in class_ids}
    cents = []
    for p in props:
        cid = mask.classes.get(int(p.label), 0)
        if cid in area:
            area[cid].append(p.area * MPP ** 2)
            ecc[cid].append(p.eccentricity)
        cents.append(p.centroid)
    nn = []
    if len(cents) > 1:
        d, _ = cKDTree(np.array(cents)).query(np.array(cents), k=2)
        nn = list(d[:, 1] * MPP)
    # touching: a nucleus with a 4-neighbour pixel of another nucleus
    touching = set()
    for a, b in ((inst[:, :-1], inst[:, 1:]), (inst[:-1, :], inst[1:, :])):
        edge = (a != b) & (a > 0) & (b > 0)
        touching.update(np.unique(a[edge]).tolist())
        touching.update(np.unique(b[edge]).tolist())
    n = len(props)
    blobs = ndi.label(inst > 0)[1]
    present = {c for c in mask.classes.values()}
    return {"count": n, "area": area, "ecc": ecc, "nn": nn,
            "touching": len(touching) / n if n else 0.0, "per_blob": n / blobs if blobs else 0.0,
            "present": present}


def pooled(stats, key, cid=None):
    if cid is None:
        return [s[key] for s in stats] if not isinstance(stats[0][key], list) else \
            [v for s in stats for v in s[key]]
    return [v for s in stats for v in s[key][cid]]


def w1(a, b) -> float:
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


def baseline_masks(vectors, mean_count, class_ids, scheme, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i, vec in enumerate(vectors):
        allowed = [c for c, v in zip(class_ids, vec) if v] or list(class_ids)
        n = int(round(mean_count))
        pts = rng.uniform(0, 256, size=(n, 2))
        cls = rng.choice(allowed, size=n)
        out.append(grow_nuclei_from_points(pts, cls, (256, 256), scheme, mpp=MPP, seed=seed + i, outside="drop"))
    return out


def composition(stats, vectors, class_ids):
    recall, leak = [], []
    for s, vec in zip(stats, vectors):
        wanted = {c for c, v in zip(class_ids, vec) if v}
        if wanted:
            recall.append(len(wanted & s["present"]) / len(wanted))
        leak.append(1.0 if s["present"] - wanted else 0.0)
    return float(np.mean(recall)) if recall else float("nan"), float(np.mean(leak))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="mask-generation model (folder or file)")
    parser.add_argument("--data", default="../shared/data/consep_patches256")
    parser.add_argument("--out", default="mask-generation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--sampler", default=None,
                        help="dpmpp, dpmpp_sde, ddim or ddpm (the long ancestral chain); default: the model's")
    parser.add_argument("--max-patches", type=int, default=None)
    parser.add_argument("--kid", action="store_true", help="also the KID of images from generated vs real masks")
    parser.add_argument("--image-model", default="default")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ps = build_patch_set(args.data, target_mpp=MPP, patch_size=256, overlap=0.0, min_tissue=0.5, val_fraction=0.1,
                         seed=0)
    scheme = ps.scheme
    class_ids = list(ps.class_ids)
    refs = list(ps.val)
    if args.max_patches and args.max_patches < len(refs):
        refs = [refs[int(i)] for i in np.linspace(0, len(refs) - 1, args.max_patches).round()]
    n = len(refs)
    val_items = [ps.crop(r) for r in refs]
    val = [NucleiMask.create(np.ascontiguousarray(inst), classes, scheme, mpp=MPP) for _, inst, classes in val_items]
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(ps.train), size=min(n, len(ps.train)), replace=False)
    train = [NucleiMask.create(np.ascontiguousarray(ps.crop(ps.train[i])[1]), ps.crop(ps.train[i])[2], scheme,
                               mpp=MPP) for i in pick]
    all_train_counts = [len(np.unique(ps.crop(r)[1])) - 1 for r in ps.train]
    vectors = [[1.0 if c in set(m.classes.values()) else 0.0 for c in class_ids] for m in val]
    print(f"{n} validation patches from tiles {sorted({r.source_id for r in refs})}; "
          f"{len(ps.train)} training patches (mean {np.mean(all_train_counts):.1f} nuclei)")

    engine = MaskGenEngine(args.model, device="cpu")
    start = time.perf_counter()
    generated = []
    for i, vec in enumerate(vectors):
        types = [c for c, v in zip(class_ids, vec) if v]
        res = engine.run(MaskGenRequest(types=types, seed=args.seed + i, steps=args.steps, guidance=args.guidance,
                                        mpp=MPP, sampler=args.sampler))[0]
        generated.append(res.mask)
        print(f"\rgenerated {i + 1}/{n}", end="", flush=True)
    gen_seconds = (time.perf_counter() - start) / n
    print(f" ({gen_seconds:.1f} s/mask)")
    baseline = baseline_masks(vectors, np.mean(all_train_counts), class_ids, scheme, args.seed)
    sets = {"train (floor)": train, "generated": generated, "baseline": baseline}
    stats = {name: [mask_stats(m, class_ids) for m in masks] for name, masks in {"val": val, **sets}.items()}

    rows = [("nuclei per patch", "count", None), ("nearest-neighbour distance (µm)", "nn", None),
            ("touching fraction per patch", "touching", None), ("nuclei per foreground blob", "per_blob", None)]
    rows += [(f"area µm² ({scheme.name_of(c)})", "area", c) for c in class_ids]
    rows += [(f"eccentricity ({scheme.name_of(c)})", "ecc", c) for c in class_ids]
    table = {}
    header = "| statistic | val mean | " + " | ".join(f"{k} mean | W1 {k}" for k in sets) + " |"
    lines = [header, "|" + " --- |" * (2 + 2 * len(sets))]
    for label, key, cid in rows:
        ref = pooled(stats["val"], key, cid)
        cells = [label, f"{np.mean(ref):.3g}" if ref else "-"]
        table[label] = {"val_mean": float(np.mean(ref)) if ref else None}
        for name in sets:
            vals = pooled(stats[name], key, cid)
            d = w1(vals, ref)
            table[label][name] = {"mean": float(np.mean(vals)) if vals else None, "w1": d}
            cells += [f"{np.mean(vals):.3g}" if vals else "-", f"{d:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    comp = {name: composition(stats[name], vectors, class_ids) for name in ["val", *sets]}
    lines.append("")
    lines.append("| type composition | " + " | ".join(["val", *sets]) + " |")
    lines.append("|" + " --- |" * (2 + len(sets)))
    lines.append("| requested types present (recall) | " + " | ".join(f"{comp[k][0]:.2f}" for k in ["val", *sets])
                 + " |")
    lines.append("| patches with an unrequested type (leak) | "
                 + " | ".join(f"{comp[k][1]:.2f}" for k in ["val", *sets]) + " |")
    # single-type requests: does the model obey a vector it did not see with this patch?
    single = {}
    for k, cid in enumerate(class_ids):
        res = engine.run(MaskGenRequest(types=[cid], n_samples=4, seed=1000 + 10 * k, steps=args.steps,
                                        guidance=args.guidance, mpp=MPP, sampler=args.sampler))
        shares = [np.mean([v == cid for v in r.mask.classes.values()]) if r.mask.n_nuclei else float("nan")
                  for r in res]
        single[scheme.name_of(cid)] = (float(np.nanmean(shares)), float(np.mean([r.mask.n_nuclei for r in res])))
    lines.append("")
    lines.append("| single-type request (4 masks each) | share of nuclei of that type | nuclei per mask |")
    lines.append("| --- | --- | --- |")
    for name, (share, count) in single.items():
        lines.append(f"| {name} | {share:.2f} | {count:.1f} |")
    text = "\n".join(lines)
    print(text)
    result = {"n": n, "table": table, "composition": comp, "single_type": single, "seconds_per_mask": gen_seconds,
              "model": engine.describe()}

    from skimage.io import imsave

    from napari_histogen.core.render import hstack_panels, render_overlay

    panels = []
    for k in range(min(4, n)):
        row = [render_overlay(np.full((256, 256, 3), 255, np.uint8), nuclei=m, alpha=1.0)
               for m in (val[k], generated[k], baseline[k])]
        panels.append(hstack_panels(row))
    imsave(out / "masks_val_generated_baseline.png", np.concatenate(panels, axis=0), check_contrast=False)

    if args.kid:
        result["kid"] = kid_table(args, val_items, val, generated, out)
    (out / "mask_generation.json").write_text(json.dumps(result, indent=2, default=str))


def kid_table(args, val_items, val, generated, out):
    from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
    from napari_histogen.core.metrics.realism import inception_features, kid, load_inception

    from nasdm_quality import to_eval_scale

    engine = NasdmEngine(args.image_model, device="cpu")
    imgs = {"real H&E": [to_eval_scale(np.asarray(img), MPP) for img, _, _ in val_items]}
    for name, masks in (("from real masks", val), ("from generated masks", generated)):
        images = []
        start = time.perf_counter()
        for i, m in enumerate(masks):
            if m.n_nuclei == 0:
                continue
            res = engine.run(NasdmRequest(nuclei=m, seed=args.seed + i))[0]
            images.append(to_eval_scale(res.image, engine.config.mpp))
            print(f"\rimages {name}: {i + 1}/{len(masks)}", end="", flush=True)
        print(f" ({(time.perf_counter() - start) / max(1, len(images)):.1f} s/image)")
        imgs[name] = images
    net = load_inception()
    feats = {k: inception_features(net, v) for k, v in imgs.items()}
    real = feats["real H&E"]
    m = max(2, min(len(v) for v in feats.values()) // 2)
    res = {}
    print(f"KID against {len(real)} real validation H&E patches (subsets of {m}, x1e3):")
    for name in ("from real masks", "from generated masks"):
        mean, sd = kid(feats[name], real, subset_size=m)
        res[name] = {"kid": mean, "sd": sd, "n": len(feats[name])}
        print(f"  images {name:22s} n={len(feats[name])}: {mean * 1e3:.2f} ± {sd * 1e3:.2f}")
    mean, sd = kid(feats["from generated masks"], feats["from real masks"], subset_size=m)
    res["generated vs real-mask images"] = {"kid": mean, "sd": sd}
    print(f"  generated-mask images vs real-mask images: {mean * 1e3:.2f} ± {sd * 1e3:.2f}")
    return res


if __name__ == "__main__":
    main()
