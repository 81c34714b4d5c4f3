"""The reader study played by an attacker (issue 12): a reader with the study folder tries to unblind it;
races and damaged logs try to lose or double answers."""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_histogen.core.errors import HistogenInputError
from napari_histogen.core.study import (
    ReaderSession,
    check_reader_id,
    create_study,
    key_dir,
    load_manifest,
    reader_progress,
    write_report,
)
from napari_histogen.core.study import create as create_mod
from napari_histogen.core.study.leaks import blockiness


def _tissue(rng, shape, *, smooth=True) -> np.ndarray:
    """A smooth pinkish picture (JPEG artefacts show on it) or noise."""
    if not smooth:
        return rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = np.stack([200 + 40 * np.sin(xx / 7.0 + rng.uniform(0, 6)), 120 + 50 * np.cos(yy / 5.0),
                     170 + 30 * np.sin((xx + yy) / 9.0)], axis=-1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _masks(shape, n, *, ids=None, scale=1) -> tuple[np.ndarray, np.ndarray]:
    inst = np.zeros(shape, np.int32)
    ids = list(range(1, n + 1)) if ids is None else ids
    for k, nid in enumerate(ids):
        r, c = (k // 4) * 14 * scale + 2, (k % 4) * 14 * scale + 2
        inst[r: r + 8 * scale, c: c + 8 * scale] = nid
    return inst, np.where(inst > 0, 1, 0).astype(np.int32)


def make_inputs(root: Path, *, n=6, real_ids=None, real_mpp=0.5, syn_mpp=0.5, real_jpeg=False, masks=True,
                real_smooth=True, syn_smooth=True) -> dict:
    """real/real_<i>.png|jpg with <stem>_mask.npz (ids ``real_ids``: gaps, like a cropped real mask) and
    synthetic/syn_<i>.png with masks numbered 1..N, as a synthesis run writes them."""
    rng = np.random.default_rng(3)
    out = {"real": root / "real", "synthetic": root / "synthetic"}
    for kind in out:
        out[kind].mkdir(parents=True, exist_ok=True)
    for i in range(n):
        for kind in ("real", "synthetic"):
            mpp = real_mpp if kind == "real" else syn_mpp
            scale = int(round(0.5 / mpp))
            shape = (64 * scale, 64 * scale)
            smooth = real_smooth if kind == "real" else syn_smooth
            rgb = _tissue(rng, shape, smooth=smooth)
            stem = f"{kind}_{i}"
            if kind == "real" and real_jpeg:
                Image.fromarray(rgb).save(out[kind] / f"{stem}.jpg", quality=40)
            else:
                Image.fromarray(rgb).save(out[kind] / f"{stem}.png")
            if masks:
                ids = real_ids if kind == "real" else None
                inst, types = _masks(shape, 8, ids=ids, scale=scale)
                np.savez(out[kind] / f"{stem}_mask.npz", inst_map=inst, type_map=types, scheme=np.array("consep"),
                         mpp=np.array(mpp))
            if kind == "synthetic":
                (out[kind] / f"{stem}.json").write_text(json.dumps({"engine": "nasdm", "seed": i}))
    return out


def _truth_in_id_order(result) -> list[str]:
    key = json.loads(result.key_path.read_text())
    return [key["cases"][i]["truth"] for i in sorted(key["cases"])]


# -- blinding -------------------------------------------------------------------------------------------
def test_a_seeded_study_cannot_be_unblinded_by_replaying_seeds(tmp_path):
    f = make_inputs(tmp_path / "in", masks=False)
    made = [create_study(f["real"], f["synthetic"], tmp_path / f"s{k}", readers=["r1", "r2"], seed=0)
            for k in range(6)]
    manifests = [load_manifest(r.study) for r in made]
    # nothing a reader holds records a seed
    for r in made:
        assert "seed" not in (r.study / "study.json").read_text()
    # the old attack: try seeds until the study id (or a case id) matches -> no seed reproduces anything
    for m in manifests:
        ids = {m["study_id"], *m["cases"]}
        for seed in range(300):
            rng = np.random.default_rng(seed)
            assert not {rng.bytes(6).hex() for _ in range(len(ids) + 1)} & ids
    # the same seed and inputs give new ids and a new assignment every time: which id is real is secret
    assert len({tuple(m["cases"]) for m in manifests}) == len(made)
    patterns = {tuple(_truth_in_id_order(r)) for r in made}
    assert len(patterns) > 1
    # reader orders are reproducible as permutations (the seed's job), yet the truth along them differs
    def truth_along(r, m, reader):
        key = json.loads(r.key_path.read_text())
        return tuple(key["cases"][c]["truth"] for c in m["readers"][reader]["order"])

    assert len({truth_along(r, m, "r1") for r, m in zip(made, manifests)}) > 1


def test_mask_ids_are_1_to_n_in_random_order(tmp_path):
    # real masks keep gappy ids from cropping; synthetic ones are 1..N in raster order
    f = make_inputs(tmp_path / "in", real_ids=[3, 9, 17, 40, 41, 77, 120, 500])
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", masks=[f["real"], f["synthetic"]], seed=1)
    key = json.loads(result.key_path.read_text())
    sorted_first_seen = {"real": [], "synthetic": []}
    for case in load_manifest(result.study)["cases"]:
        maps = np.load(result.study / "cases" / f"{case}_mask.npy")
        ids = np.unique(maps[0])
        ids = ids[ids > 0]
        assert ids.tolist() == list(range(1, len(ids) + 1))  # no gaps, no large ids
        flat = maps[0].ravel()
        _, first = np.unique(flat, return_index=True)
        in_raster = flat[np.sort(first)]
        in_raster = in_raster[in_raster > 0].tolist()
        sorted_first_seen[key["cases"][case]["truth"]].append(in_raster == sorted(in_raster))
    # raster numbering would mark every synthetic case; a random order marks (almost) none
    assert sum(sorted_first_seen["synthetic"]) <= 1 and sum(sorted_first_seen["real"]) <= 1


def test_cases_are_brought_to_one_scale(tmp_path):
    f = make_inputs(tmp_path / "in", real_mpp=0.25, syn_mpp=0.5)  # real at 40x (twice the pixels per nucleus)
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", masks=[f["real"], f["synthetic"]], seed=2)
    key = json.loads(result.key_path.read_text())
    assert any("resampled to 0.5 um/px" in n for n in result.notes)
    areas = {"real": [], "synthetic": []}
    for case in load_manifest(result.study)["cases"]:
        inst = np.load(result.study / "cases" / f"{case}_mask.npy")[0]
        assert inst.shape == (64, 64)
        sizes = np.bincount(inst.ravel())[1:]
        areas[key["cases"][case]["truth"]].append(float(np.median(sizes[sizes > 0])))
    assert np.median(areas["real"]) == pytest.approx(np.median(areas["synthetic"]), rel=0.2)
    with pytest.raises(HistogenInputError, match="differ in scale"):
        create_study(f["real"], f["synthetic"], tmp_path / "t", masks=[f["real"], f["synthetic"]], scale="refuse")
    assert not (tmp_path / "t").exists()


def test_mixed_jpeg_origins_are_refused_unless_reencoded_alike(tmp_path):
    f = make_inputs(tmp_path / "in", real_jpeg=True, masks=False)
    with pytest.raises(HistogenInputError, match="JPEG-compressed"):
        create_study(f["real"], f["synthetic"], tmp_path / "s")
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", reencode="jpeg")
    assert any("re-encoded alike through JPEG" in n for n in result.notes)
    key = json.loads(result.key_path.read_text())
    assert {c["jpeg_origin"] for c in key["cases"].values()} == {True, False}
    assert "blockiness" in key["leak_check"]["auc"]
    # re-encoding puts a block grid on every case: the synthetic ones are no longer grid-free
    syn = [c for c, v in key["cases"].items() if v["truth"] == "synthetic"]
    assert all(blockiness(np.asarray(Image.open(result.study / "cases" / f"{c}.png"))) > 1.05 for c in syn)


def test_creation_reports_statistics_that_separate_the_groups(tmp_path):
    # real: smooth (many colours); synthetic: flat 4-colour pictures -> unique colours separate them
    f = make_inputs(tmp_path / "in", masks=False)
    for p in f["synthetic"].glob("*.png"):
        Image.fromarray(np.asarray(Image.open(p)).copy() // 64 * 64).save(p)
    result = create_study(f["real"], f["synthetic"], tmp_path / "s")
    warning = [n for n in result.notes if "unique colours separates" in n]
    assert warning and "AUC 1.00" in warning[0]
    key = json.loads(result.key_path.read_text())
    assert key["leak_check"]["separating"]["unique_colours"] == 1.0
    # matched groups (the same pictures on both sides): no warning
    g = make_inputs(tmp_path / "in2", masks=False)
    for p in g["real"].glob("*.png"):
        (g["synthetic"] / p.name.replace("real", "synthetic")).write_bytes(p.read_bytes())
    clean = create_study(g["real"], g["synthetic"], tmp_path / "t")
    assert not [n for n in clean.notes if "separates" in n]
    assert set(json.loads(clean.key_path.read_text())["leak_check"]["auc"].values()) == {0.5}


def test_key_is_owner_only_outside_the_study_parent_and_leaves_no_temp_file(tmp_path, monkeypatch):
    f = make_inputs(tmp_path / "in", masks=False)
    result = create_study(f["real"], f["synthetic"], tmp_path / "s")
    assert result.key_path.parent == key_dir() and not result.key_path.resolve().is_relative_to(tmp_path)
    assert result.key_path.stat().st_mode & 0o777 == 0o600
    # a full disk while the key is written: no study, no key, no temp file with the truth in it
    real_write = os.write

    def full(fd, data):
        if os.fstat(fd).st_size > 100:
            raise OSError(28, "No space left on device")
        return real_write(fd, bytes(data)[:50])

    monkeypatch.setattr(create_mod, "write_json_atomic", _failing_json(real_write, full))
    with pytest.raises(HistogenInputError, match="No space left"):
        create_study(f["real"], f["synthetic"], tmp_path / "t", key_path=tmp_path / "keys" / "t.json")
    monkeypatch.undo()
    assert not (tmp_path / "t").exists() and not list(tmp_path.glob(".t.*"))
    assert not list((tmp_path / "keys").iterdir())


def _failing_json(real_write, full):
    """write_json_atomic with os.write replaced while it runs (the manifest and the key)."""
    from napari_histogen.core.study import layout

    def wrapped(path, data, **kwargs):
        layout.os.write = full
        try:
            return layout.write_json_atomic(path, data, **kwargs)
        finally:
            layout.os.write = real_write

    return wrapped


def test_reader_ids_with_a_newline_are_refused():
    for bad in ("r1\n", "r1\r", " r1", "r1/..", "", "a" * 33):
        with pytest.raises(HistogenInputError):
            check_reader_id(bad)


# -- races ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("same_key", [False, True])
def test_two_concurrent_creations_leave_one_complete_study_and_one_clear_error(tmp_path, monkeypatch, same_key):
    f = make_inputs(tmp_path / "in", masks=False)
    barrier = threading.Barrier(2, timeout=30)
    real_write_cases = create_mod._write_cases

    def write_then_wait(*args, **kwargs):  # both passed every check; now both publish at once
        out = real_write_cases(*args, **kwargs)
        barrier.wait()
        return out

    monkeypatch.setattr(create_mod, "_write_cases", write_then_wait)
    results, errors = [], []
    key = tmp_path / "owner" / "k.json" if same_key else None

    def run():
        try:
            results.append(create_study(f["real"], f["synthetic"], tmp_path / "s", key_path=key))
        except HistogenInputError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 1 and len(errors) == 1
    assert "nothing was written" in errors[0]
    winner = results[0]
    manifest = load_manifest(winner.study)
    assert all((winner.study / "cases" / f"{c}.png").is_file() for c in manifest["cases"])
    key_data = json.loads(winner.key_path.read_text())  # the winner's key is there and is the winner's
    assert key_data["study_id"] == manifest["study_id"]
    if not same_key:
        assert [p.name for p in key_dir().glob("s-*.key.json")
                if json.loads(p.read_text())["options"]["real"] == str(f["real"].resolve())] == [winner.key_path.name]
    assert not list(tmp_path.glob(".s.creating-*"))


# -- the report: duplicated, stray and damaged logs -------------------------------------------------------
def _scored_study(tmp_path):
    f = make_inputs(tmp_path / "in", masks=False)
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", readers=["r1", "r2"], seed=5)
    key = json.loads(result.key_path.read_text())
    for reader, shift in (("r1", 0), ("r2", 1)):
        with ReaderSession(result.study, reader) as s:
            for _ in range(s.n_cases):
                s.record(8 - shift if key["cases"][s.case_id]["truth"] == "real" else 3 + shift)
                s.next()
    return result


def _table(report):
    return report.answers.sort_values(["reader", "case"])[["reader", "case", "realism"]].to_numpy().tolist()


def test_duplicated_stray_and_damaged_logs_do_not_change_the_report(tmp_path):
    result = _scored_study(tmp_path)
    baseline = write_report(result.study, tmp_path / "rep0", n_boot=50, plots=False)
    answers = result.study / "answers"
    r1 = (answers / "r1.jsonl").read_bytes()
    (answers / "r1.jsonl").write_bytes(r1 + r1)  # a sync merge appended the log twice
    (answers / "r1-laptop.jsonl").write_bytes(r1.replace(b'"reader":"r1"', b'"reader":"r1-laptop"'))
    (answers / "r1 (conflicted copy).jsonl").write_bytes(r1)
    lines = (answers / "r2.jsonl").read_bytes().splitlines(keepends=True)
    extra = lines[3]
    lines.insert(3, b'{"type":"answ\n')  # one damaged middle line
    lines[0] = b"\xef\xbb\xbf" + lines[0]  # an editor's BOM
    (answers / "r2.jsonl").write_bytes(b"".join(lines))
    assert extra  # r2's real answers are all still there

    report = write_report(result.study, tmp_path / "rep1", n_boot=50, plots=False)
    assert _table(report) == _table(baseline)
    assert report.by_group.to_dict() == baseline.by_group.to_dict()
    notes = " ".join(report.notes)
    assert "r1-laptop.jsonl" in notes and "r1 (conflicted copy).jsonl" in notes
    assert "repeated records" in notes and "damaged line 4" in notes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {r["reader"]: r for r in reader_progress(result.study)}
    assert rows["r1"]["answered"] == rows["r2"]["answered"] == result.n_cases
    assert rows["r1"]["records"] == result.n_cases and rows["r1-laptop.jsonl"]["ignored"]


def test_non_utf8_image_names_reach_the_report(tmp_path):
    f = make_inputs(tmp_path / "in", masks=False, n=3)
    odd = f["real"] / os.fsdecode(b"r\xe9al_\xff.png")
    (f["real"] / "real_0.png").rename(odd)
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", readers=["r1"])
    key = json.loads(result.key_path.read_text())
    assert any("\\xff" in c["source"] for c in key["cases"].values())
    with ReaderSession(result.study, "r1") as s:
        for _ in range(s.n_cases):
            s.record(5)
            s.next()
    report = write_report(result.study, tmp_path / "rep", n_boot=20, plots=False)
    assert "\\xff" in (tmp_path / "rep" / "answers.csv").read_text(encoding="utf-8")
    assert report.files["answers"].stat().st_size > 200
