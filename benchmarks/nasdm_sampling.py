"""NASDM sampling speed and peak memory: model sizes x batch sizes x guidance, CPU or CUDA.

Random weights cost the same as trained ones. For every (size, batch, guidance) the script
times whole sampler steps (network forward with cond + null batched, plus the diffusers
DDPM learned-range update) and derives patches/s for each respaced step count
(``batch / (steps * seconds_per_step)``; the cost per step does not depend on the step
count). ``--full`` also runs complete sampling loops to check that figure.

Run (CPU, a few minutes)::

    .venv/bin/python benchmarks/nasdm_sampling.py --device cpu --sizes cpu,small --batch-sizes 1,4

On a GPU (the issue's grid)::

    python benchmarks/nasdm_sampling.py --device cuda --sizes paper,small --batch-sizes 1,2,4,8,16,32,64 \
        --precision bf16 --json nasdm_sampling.json

Prints a table; ``--json FILE`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from napari_histogen.core.devices import autocast_dtype, describe_device, resolve_device
from napari_histogen.core.diffusion.gaussian import GaussianDiffusion
from napari_histogen.core.nasdm.sampling import guided_output, make_scheduler, sample
from napari_histogen.core.nasdm.unet import NasdmUNet, preset_config


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def time_steps(model, device, batch, guidance, amp_dtype, warmup, repeat, image_size, cond_channels):
    """Median seconds of one sampler step, and peak memory (MB) during it."""
    diffusion = GaussianDiffusion().config()
    scheduler = make_scheduler("ddpm", diffusion, 1000)
    cond = torch.zeros(batch, cond_channels, image_size, image_size, device=device)
    cond[:, 0] = 1
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    gens = [torch.Generator().manual_seed(i) for i in range(batch)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            t = scheduler.timesteps[100 + i]
            _sync(device)
            start = time.perf_counter()
            if amp_dtype is not None:
                with torch.autocast(device.type, dtype=amp_dtype):
                    out = guided_output(model, x, t.to(device), cond, guidance)
            else:
                out = guided_output(model, x, t.to(device), cond, guidance)
            scheduler.step(out, int(t), x, generator=gens)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    return statistics.median(times), peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="cpu,small", help="comma list of model presets (paper, small, cpu, tiny)")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--steps", default="50,100,250,1000", help="step counts to report patches/s for")
    parser.add_argument("--guidance", default="1.5,0", help="guidance scales (0 = conditional pass only)")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (CUDA)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (CUDA)")
    parser.add_argument("--full", type=int, default=0, help="also time a complete loop of this many steps (batch 1)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    amp_dtype = autocast_dtype(device, args.precision)
    steps_list = [int(s) for s in args.steps.split(",")]
    cond_channels = 6  # CoNSeP: background + 4 types + edges (Lizard: 8; the cost differs by < 1 %)
    rows = []
    print(f"# device {describe_device(device)}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"precision {str(amp_dtype).replace('torch.', '') if amp_dtype else 'fp32'}, {platform.processor() or platform.machine()}")
    header = (f"{'size':6s} {'params':>8s} {'batch':>5s} {'guid':>4s} {'s/step':>8s} {'peak MB':>8s} "
              + " ".join(f"{f'p/s@{s}':>9s}" for s in steps_list))
    print(header)
    print("-" * len(header))
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        model = NasdmUNet(preset_config(size, image_size=args.image_size, cond_channels=cond_channels)).to(device).eval()
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        params = model.n_parameters()
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            for guidance in [float(g) for g in args.guidance.split(",")]:
                try:
                    sec, peak = time_steps(model, device, batch, guidance, amp_dtype, args.warmup, args.repeat,
                                           args.image_size, cond_channels)
                except torch.OutOfMemoryError:
                    print(f"{size:6s} {params / 1e6:7.1f}M {batch:5d} {guidance:4.1f}  out of memory")
                    torch.cuda.empty_cache()
                    continue
                per_s = {s: batch / (s * sec) for s in steps_list}
                row = {"device": describe_device(device), "size": size, "params": params, "batch": batch,
                       "guidance": guidance, "seconds_per_step": sec, "peak_mb": peak,
                       "patches_per_s": per_s, "precision": str(amp_dtype) if amp_dtype else "fp32"}
                rows.append(row)
                print(f"{size:6s} {params / 1e6:7.1f}M {batch:5d} {guidance:4.1f} {sec:8.3f} {peak:8.0f} "
                      + " ".join(f"{per_s[s]:9.3f}" for s in steps_list), flush=True)
        if args.full:
            cond = torch.zeros(1, cond_channels, args.image_size, args.image_size, device=device)
            cond[:, 0] = 1
            _sync(device)
            start = time.perf_counter()
            sample(model, cond, GaussianDiffusion().config(), steps=args.full, guidance=1.5, autocast_dtype=amp_dtype)
            _sync(device)
            full = time.perf_counter() - start
            print(f"{size:6s} full loop: {args.full} steps, batch 1, guidance 1.5: {full:.1f} s "
                  f"({1 / full:.3f} patches/s)")
            rows.append({"device": describe_device(device), "size": size, "full_steps": args.full, "full_seconds": full})
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
