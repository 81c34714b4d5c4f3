"""Train the latent NASDM default model on the CoNSeP train split (resumable).

Run on a CPU or GPU machine; running it again on the same --out continues the run::

    .venv/bin/python scripts/train_latent_default.py --data ../shared/data/consep_patches256 \
        --out runs/latent_consep [--steps 4000] [--threads 2] [--device cuda]

Then export the EMA weights as the embedded default with ``scripts/export_default_model.py``.
The recipe (what the shipped default was trained with) lives in the defaults of
:class:`napari_histogen.core.latent.train.LatentTrainSettings`.
"""

from __future__ import annotations

import argparse

from napari_histogen.core.latent.train import LatentTrainSettings, train_latent_nasdm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/consep_patches256")
    parser.add_argument("--out", default="runs/latent_consep")
    parser.add_argument("--steps", type=int, default=LatentTrainSettings.steps)
    parser.add_argument("--batch-size", type=int, default=LatentTrainSettings.batch_size)
    parser.add_argument("--transforms", type=int, default=LatentTrainSettings.transforms)
    parser.add_argument("--size", default=LatentTrainSettings.size)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    settings = LatentTrainSettings(data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size,
                                   transforms=args.transforms, size=args.size, device=args.device,
                                   threads=args.threads)
    result = train_latent_nasdm(settings, log_fn=lambda m: print(m, flush=True))
    print(f"step {result.step}, model {result.model_path}")


if __name__ == "__main__":
    main()
