"""The prepared GPU check (scripts/device_check.sh, benchmarks/device_check.py) in its CPU dry run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, timeout=240):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1",
               HISTOGEN_SITE=str(Path(os.environ.get("TMPDIR", "/tmp")) / "histogen-device-check-site"))
    return subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_at_most_eight_files(tmp_path):
    done = _run("--dry-run", "--budget", "5", "--out", str(tmp_path), "--train-minutes", "0.02")
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in tmp_path.iterdir())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["machine"]["device"] == "cpu"
    assert set(summary["parts"]) == {"gpu_tests", "nasdm_pixel", "nasdm_latent", "transfer", "training", "train_run"}
    assert all(p["status"] == "done" for p in summary["parts"].values()), summary["parts"]
    tests = json.loads((tmp_path / "gpu_tests.json").read_text())
    assert tests["returncode"] == 0 and tests["counts"].get("skipped", 0) >= 1  # no GPU here: skipped, not failed
    pixel = json.loads((tmp_path / "nasdm_pixel.json").read_text())["rows"]
    assert [r["batch"] for r in pixel] == [1, 2] and all(r["seconds_per_step"] > 0 for r in pixel)
    latent_part = json.loads((tmp_path / "nasdm_latent.json").read_text())
    latent = latent_part["rows"]
    assert latent[0]["family"] == "latent" and latent[0]["patches_per_s"] > 0 and latent[0]["peak_mb"] > 0
    variants = {r["variant"]: r for r in latent_part["variants"]}  # CPU: the layouts (compiling needs minutes)
    assert set(variants) == {"eager", "channels_last"} and variants["channels_last"]["channels_last"] == "True"
    assert all(r["max_grey_level_difference_to_first_variant"] <= 1 for r in variants.values())
    transfer = json.loads((tmp_path / "transfer.json").read_text())
    assert {r["path"] for r in transfer["rows"]} == {"straightforward", "optimised"}
    training = json.loads((tmp_path / "training.json").read_text())["rows"]
    assert {r["family"] for r in training} == {"pixel", "latent"} and all(r["patches_per_s_last_window"] > 0
                                                                         for r in training)
    assert summary["train_run"]["weights"] == "trained_model.safetensors"
    assert (tmp_path / "trained_model.safetensors").stat().st_size < 16 * 2**20
    from napari_histogen.core.nasdm.checkpoint import load_nasdm

    loaded = load_nasdm(tmp_path / "trained_model.safetensors")  # the weights check against their record
    assert loaded.sha256_checked and loaded.config.image_size == 32


def test_an_exhausted_budget_skips_the_parts_with_a_note(tmp_path):
    done = _run("--dry-run", "--budget", "0.001", "--out", str(tmp_path), "--parts", "nasdm_pixel,bogus")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["parts"] == {}
    assert "out of time" in summary["skipped"]["nasdm_pixel"] and summary["skipped"]["bogus"] == "unknown part"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
