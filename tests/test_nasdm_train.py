"""Training through the CLI on a small generated dataset: run folder, resume, cancel, bad input."""

from __future__ import annotations

import csv
import json

import pytest

torch = pytest.importorskip("torch")

from napari_histogen.cli import main  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.nasdm.train import TrainSettings, train_nasdm  # noqa: E402
from napari_histogen.core.progress import CancelToken  # noqa: E402
from conftest import write_pairs_dataset  # noqa: E402


def _dataset(folder, n=4, size=64, seed=0):
    return write_pairs_dataset(folder, n, size, seed)


def _settings(data, out, **kw):
    base = dict(data=str(data), out=str(out), size="tiny", steps=4, batch_size=2, image_size=32, val_fraction=0.25,
                sample_every=4, checkpoint_every=2, sample_steps=3, device="cpu", min_tissue=0.1, log_every=1)
    base.update(kw)
    return TrainSettings(**base)


@pytest.mark.slow
def test_train_writes_run_folder_and_resumes_exactly(tmp_path):
    data = _dataset(tmp_path / "data")
    straight = train_nasdm(_settings(data, tmp_path / "a", steps=4), log=lambda m: None)
    assert straight.step == 4
    run = tmp_path / "a"
    for rel in ("run.json", "log.csv", "samples/step_000004.png", "checkpoints/last/state.json",
                "model/nasdm.safetensors", "model/nasdm.json"):
        assert (run / rel).is_file(), rel
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    meta = json.loads((run / "model" / "nasdm.json").read_text())
    assert meta["class_ids"] == [1, 2, 3, 4] and meta["mpp"] == 0.5 and len(meta["weights"]["sha256"]) == 64

    # the same run in two parts: 2 steps, then resumed to 4
    train_nasdm(_settings(data, tmp_path / "b", steps=2), log=lambda m: None)
    messages = []
    resumed = train_nasdm(_settings(data, tmp_path / "b", steps=4), log=messages.append)
    assert any("Resuming" in m and "step 2" in m for m in messages)
    assert resumed.step == 4
    from safetensors.torch import load_file

    a = load_file(str(run / "checkpoints/last/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/last/model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # resumed == uninterrupted

    # resuming with another architecture is refused
    with pytest.raises(HistogenInputError, match="other size"):
        train_nasdm(_settings(data, tmp_path / "b", steps=6, size="cpu"), log=lambda m: None)


def test_cancelled_training_keeps_a_checkpoint(tmp_path):
    data = _dataset(tmp_path / "data")
    token = CancelToken()

    def progress(step, total):
        if step == 1:
            token.cancel()

    result = train_nasdm(_settings(data, tmp_path / "run", steps=50), progress=progress, cancel=token,
                         log=lambda m: None)
    assert result.step == 1
    state = json.loads((tmp_path / "run/checkpoints/last/state.json").read_text())
    assert state["step"] == 1 and (tmp_path / "run/model/nasdm.safetensors").is_file()


def test_cli_train_then_synthesize_with_the_trained_model(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    rc = main(["train", "nasdm", "--data", str(data), "--out", str(tmp_path / "run"), "--size", "tiny",
               "--steps", "2", "--batch-size", "2", "--patch-size", "32", "--sample-every", "2",
               "--sample-steps", "2", "--min-tissue", "0.1", "--val-fraction", "0.25", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and "Trained to step 2" in out and "sample grid" in out
    rc = main(["synthesize", "nasdm", "--mask", str(data / "img0.npz"), "--model", str(tmp_path / "run" / "model"),
               "--out", str(tmp_path / "syn"), "--steps", "3", "--device", "cpu", "--tile"])
    assert rc == 0, capsys.readouterr()
    tiles = {p.name for p in (tmp_path / "syn").glob("img0_r*_s0.png") if "side_by_side" not in p.name}
    assert tiles and tiles <= {f"img0_r{r}_c{c}_s0.png" for r in (0, 32) for c in (0, 32)}  # empty tiles skipped


def test_cli_train_bad_input(tmp_path, capsys):
    rc = main(["train", "nasdm", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")])
    assert rc == 2 and "histogen: error" in capsys.readouterr().err
    if not torch.cuda.is_available():
        data = _dataset(tmp_path / "data")
        rc = main(["train", "nasdm", "--data", str(data), "--out", str(tmp_path / "run2"), "--device", "cuda"])
        assert rc == 2 and "sees no GPU" in capsys.readouterr().err
