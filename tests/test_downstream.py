"""``histogen evaluate downstream`` (core/downstream): end to end on a tiny dataset and a tiny NASDM model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_pairs_dataset
from napari_histogen.cli import main
from napari_histogen.core.downstream import DownstreamSettings, format_table, run_downstream, summarise_runs
from napari_histogen.core.errors import HistogenInputError


def _tiny_args(data, out, model):
    return ["evaluate", "downstream", "--data", str(data), "--out", str(out), "--model", str(model),
            "--engine-option", "steps=2", "--seeds", "0", "--patch-size", "32", "--depth", "2",
            "--base-channels", "8", "--steps", "3", "--batch-size", "4", "--threads", "1"]


@pytest.mark.slow
def test_downstream_runs_end_to_end_and_resumes(tmp_path, tiny_nasdm, capsys):
    pytest.importorskip("torch")
    data = write_pairs_dataset(tmp_path / "data", n=4, size=64)
    out = tmp_path / "run"
    assert main(_tiny_args(data, out, tiny_nasdm)) == 0
    printed = capsys.readouterr().out
    assert "about" in printed and "min of training" in printed  # the time estimate comes first
    assert "needs the mask-generation engine (issue 17)" in printed
    report = json.loads((out / "downstream.json").read_text())
    assert set(report["summary"]) == {"a", "b", "c", "e"} and report["skipped"].keys() == {"d"}
    runs = {r["arm"]: r for r in report["runs"]}
    n_train, n_with_nuclei = report["n_train"], len(list((out / "synthetic").glob("*/*.npz")))
    assert runs["b"]["patches"] == n_train and runs["a"]["patches"] == round(0.25 * n_train)
    assert runs["e"]["patches"] == n_with_nuclei  # every training mask with nuclei, synthesized once
    assert runs["c"]["patches"] < runs["a"]["patches"] + n_with_nuclei
    for run in runs.values():
        assert 0.0 <= run["scores"]["dice"] <= 1.0 and "pq" in run["scores"]
    assert (out / "downstream.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "downstream.md").read_text()
    assert "| (b) 100 % real |" in table and "F1 epithelial" in table
    for arm in "abce":
        assert (out / "runs" / arm / "seed0" / "segmenter.safetensors").is_file()

    # a second call finds every run and synthetic patch done, and changes nothing
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    assert main(_tiny_args(data, out, tiny_nasdm)) == 0
    assert "every training of this run is done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == stamp
    assert json.loads((out / "downstream.json").read_text())["summary"] == report["summary"]

    # other settings on the same folder are refused, with what changed
    args = _tiny_args(data, out, tiny_nasdm)
    args[args.index("--steps") + 1] = "4"
    assert main(args) == 2
    assert "other settings (steps)" in capsys.readouterr().err


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(HistogenInputError, match="--data"):
        run_downstream(DownstreamSettings(out=str(tmp_path / "x")))
    with pytest.raises(HistogenInputError, match="real fraction"):
        run_downstream(DownstreamSettings(data="x", real_fraction=1.0, out=str(tmp_path / "x")))
    with pytest.raises(HistogenInputError, match="multiple of 8"):
        run_downstream(DownstreamSettings(data="x", patch_size=100, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()
    with pytest.raises(HistogenInputError, match="does not exist"):
        run_downstream(DownstreamSettings(data=str(tmp_path / "missing"), out=str(tmp_path / "x")),
                       log=lambda line: None)
    assert not (tmp_path / "x").exists()  # a typo in --data leaves no run folder behind


def test_engine_without_nuclei_masks_is_refused(tmp_path):
    pytest.importorskip("torch")
    data = write_pairs_dataset(tmp_path / "data", n=3, size=32)
    settings = DownstreamSettings(data=str(data), out=str(tmp_path / "run"), engine="transfer", arms=("c",),
                                  seeds=(0,), patch_size=32, depth=2, base_channels=8, steps=1, batch_size=2)
    with pytest.raises(HistogenInputError, match="does not draw images from nuclei masks"):
        run_downstream(settings, log=lambda line: None)


def test_summary_gives_t_intervals_over_seeds():
    def run(arm, seed, dice):
        return {"arm": arm, "seed": seed, "scores": {"dice": dice, "aji": dice / 2, "pq": dice / 3,
                                                     "f1": {"x": dice, "y": float("nan")}}}

    summary = summarise_runs([run("a", 0, 0.6), run("a", 1, 0.7), run("a", 2, 0.8), run("b", 0, 0.9)], ["x", "y"])
    # mean 0.7, sd 0.1, t(0.975, 2) = 4.303: half width 4.303 * 0.1 / sqrt(3)
    assert summary["a"]["dice"]["mean"] == pytest.approx(0.7)
    assert summary["a"]["dice"]["ci95"] == pytest.approx(4.302653 * 0.1 / np.sqrt(3), rel=1e-4)
    assert summary["b"]["dice"]["n"] == 1 and np.isnan(summary["b"]["dice"]["ci95"])
    assert np.isnan(summary["a"]["f1:y"]["mean"])
    table = format_table(summary, {"a": "(a) A", "b": "(b) B"}, {}, ["x", "y"], n_val=5, seeds=[0, 1, 2])
    assert "| (a) A | 0.700 ± 0.248 |" in table and "| (b) B | 0.900 |" in table
