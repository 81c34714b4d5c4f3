"""More than one process on CPU (gloo): data-parallel training equals one process with the same
global batch; sharded synthesis equals unsharded; shard syntax."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import write_pairs_dataset  # noqa: E402
from napari_histogen.core.distributed import launch, parse_shard, shard_items  # noqa: E402
from napari_histogen.core.errors import HistogenInputError  # noqa: E402
from napari_histogen.core.nasdm.train import TrainSettings, train_nasdm  # noqa: E402


def test_shard_syntax_and_split():
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    items = list(range(8))
    shards = [shard_items(items, (i, 3)) for i in (1, 2, 3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]] and sorted(sum(shards, [])) == items
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(HistogenInputError, match="shard|Shard"):
            parse_shard(bad)


def _settings(data, out, **kw):
    base = dict(data=str(data), out=str(out), size="tiny", steps=3, batch_size=4, image_size=32, val_fraction=0.25,
                sample_every=100, checkpoint_every=2, log_every=1, sample_steps=2, device="cpu", min_tissue=0.1)
    base.update(kw)
    return TrainSettings(**base)


def _weights(run):
    from safetensors.torch import load_file

    return (load_file(str(run / "checkpoints" / "last" / "model.safetensors")),
            load_file(str(run / "model" / "nasdm.safetensors")))


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one_and_resume(tmp_path):
    data = write_pairs_dataset(tmp_path / "data", n=4, size=64)
    train_nasdm(_settings(data, tmp_path / "one", steps=2), log=lambda m: None)
    at_step_2, _ = _weights(tmp_path / "one")
    train_nasdm(_settings(data, tmp_path / "one"), log=lambda m: None)  # resumed to 3 in one process
    # two processes (gloo), stopped after 2 steps and resumed to 3: the same global batches
    launch(train_nasdm, 2, (_settings(data, tmp_path / "two", steps=2),))
    launch(train_nasdm, 2, (_settings(data, tmp_path / "two"),))
    (raw1, ema1), (raw2, ema2) = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert raw1.keys() == raw2.keys()
    step = max(float((raw1[k] - at_step_2[k]).abs().max()) for k in raw1)
    assert step > 1e-5  # one step moves the weights far more than the tolerance below
    for k in raw1:
        assert torch.allclose(raw1[k], raw2[k], atol=2e-6, rtol=1e-4), k
        assert torch.allclose(ema1[k], ema2[k], atol=2e-6, rtol=1e-4), k
    log = (tmp_path / "two" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["1", "2", "3"]  # one process writes, once per step
    with pytest.raises(Exception, match="multiple of the number of processes"):
        launch(train_nasdm, 2, (_settings(data, tmp_path / "odd", batch_size=3),))



def _mask_folder(folder, n=5):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        inst = np.zeros((32, 32), np.int32)
        for i in range(1, 4):
            r, c = rng.integers(0, 26, 2)
            inst[r: r + 6, c: c + 6] = i
        ids = [int(i) for i in np.unique(inst) if i]
        np.savez(folder / f"m{k}.npz", inst_map=inst, classes=np.array([[i, 1 + i % 4] for i in ids]),
                 scheme=np.array("consep"), mpp=np.array(0.5))
    return folder


def test_sharded_synthesis_equals_unsharded_and_merge_checks_completeness(tiny_nasdm, tmp_path, capsys):
    from skimage.io import imread

    from napari_histogen.cli import main

    masks = _mask_folder(tmp_path / "masks")
    common = ["synthesize", "nasdm", "--mask", str(masks), "--model", str(tiny_nasdm), "--steps", "2",
              "--device", "cpu", "--n", "2", "--seed", "1"]
    assert main(common + ["--out", str(tmp_path / "whole")]) == 0
    for i in (1, 3):
        assert main(common + ["--out", str(tmp_path / "sharded"), "--shard", f"{i}/3"]) == 0
    capsys.readouterr()
    assert main(["merge-shards", str(tmp_path / "sharded")]) == 2
    assert "Shards 2/3 are missing" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "sharded"), "--shard", "2/3"]) == 0
    assert main(["merge-shards", str(tmp_path / "sharded")]) == 0
    assert "All 3 shards complete: 10 image(s) from 5 mask file(s)" in capsys.readouterr().out
    whole = sorted(p.name for p in (tmp_path / "whole").glob("m*_s*.png") if "side" not in p.name)
    assert len(whole) == 10
    for name in whole:  # each mask's images do not depend on its shard (same batches: one mask at a time)
        assert np.array_equal(imread(tmp_path / "whole" / name), imread(tmp_path / "sharded" / name)), name
    (tmp_path / "sharded" / whole[0]).unlink()
    assert main(["merge-shards", str(tmp_path / "sharded")]) == 2
    assert "gone" in capsys.readouterr().err
    assert main(["merge-shards", str(tmp_path / "whole")]) == 2  # no shard records there
