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
    args = parser.parse_args(argv)

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
