"""Blinded reader study (issue 6): creation without provenance leaks, crash-safe answer logs, statistics, CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from napari_histogen.core.errors import CorruptFileError, HistogenInputError
from napari_histogen.core.study import (
    AnswerLog,
    LogWarning,
    ReaderSession,
    create_study,
    load_manifest,
    read_answer_log,
    reader_order,
    reader_progress,
    resume_index,
    write_report,
)
from napari_histogen.core.study.answers import Answer
from napari_histogen.core.study.report import compute_report
from napari_histogen.core.study.stats import (
    accuracy_vs_chance,
    auc_from_histograms,
    bootstrap_auc_ci,
    krippendorff_alpha,
    mann_whitney,
    roc_points,
    score_histograms,
    wilcoxon_paired,
)

ENGINE, MODEL, SEED_MARK = "nasdm-test-engine", "model-XYZ-0042", 424242
GROUPS = ("tumour", "stroma")


def _png(path, rgb, text=None):
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
    Image.fromarray(rgb).save(path, pnginfo=info)


def make_folders(root: Path, n_real=3, n_synthetic=3, masks=False, groups=GROUPS, jpeg=False) -> dict:
    """real/<group>/real_<group>_<i>.png (72x80, one JPEG when asked), synthetic/<group>/syn_<group>_<i>.png
    (64x64) with provenance sidecars and PNG text; masks/<stem>_mask.npz when asked."""
    rng = np.random.default_rng(7)
    out = {"real": root / "real", "synthetic": root / "synthetic", "masks": root / "masks"}
    for group in groups:
        for kind, n, shape in (("real", n_real, (72, 80)), ("synthetic", n_synthetic, (64, 64))):
            folder = out[kind] / group
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                stem = f"{'real' if kind == 'real' else 'syn'}_{group}_{i}"
                rgb = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
                if kind == "real" and i == 0 and jpeg:
                    Image.fromarray(rgb).save(folder / f"{stem}.jpg", quality=95)
                elif kind == "synthetic":
                    _png(folder / f"{stem}.png", rgb, {"parameters": json.dumps({"engine": ENGINE, "seed": i})})
                    (folder / f"{stem}.json").write_text(json.dumps(
                        {"engine": ENGINE, "model": MODEL, "seed": SEED_MARK + i}))
                else:
                    _png(folder / f"{stem}.png", rgb)
                if masks:
                    inst = np.zeros(shape, np.int32)
                    inst[10:20, 10:20] = 1
                    inst[30:40, 30:44] = 2
                    types = np.where(inst == 1, 1, np.where(inst == 2, 3, 0)).astype(np.int32)
                    out["masks"].mkdir(exist_ok=True)
                    np.savez(out["masks"] / f"{stem}_mask.npz", inst_map=inst, type_map=types,
                             scheme=np.array("consep"))
    return out


@pytest.fixture
def folders(tmp_path):
    return make_folders(tmp_path / "in")


@pytest.fixture
def study(folders, tmp_path):
    return create_study(folders["real"], folders["synthetic"], tmp_path / "study", per_class_from="subfolders",
                        readers=["r1", "r2"], seed=3)


def _key(result):
    return json.loads(Path(result.key_path).read_text())


def _png_chunks(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos: pos + 8])
        chunks.append(kind.decode())
        pos += 12 + length
    return chunks


# -- creation: no provenance anywhere a reader can see ----------------------------------------------
def test_study_reader_visible_files_reveal_no_provenance(study, folders):
    root = study.study
    key = _key(study)
    # outside what readers receive, and outside the folder that holds the study; owner-only
    assert not study.key_path.resolve().is_relative_to(root.parent.resolve())
    assert study.key_path.stat().st_mode & 0o777 == 0o600
    visible = [p for p in root.rglob("*") if p.is_file()]
    names = sorted(str(p.relative_to(root)) for p in visible)
    ids = load_manifest(root)["cases"]
    assert names == sorted(["study.json"] + [f"cases/{i}.png" for i in ids])
    assert all(len(i) == 12 and int(i, 16) >= 0 for i in ids) and ids == sorted(ids)

    # no original name, group, engine, model, seed or source path in any byte a reader can open
    stems = [p.stem for p in folders["real"].rglob("*.*")] + [p.stem for p in folders["synthetic"].rglob("*.png")]
    tokens = stems + [ENGINE, MODEL, str(SEED_MARK), *GROUPS, "real/", "synthetic/", str(folders["real"]),
                      "parameters", ".jpg"]
    for path in visible:
        blob = path.read_bytes()
        for token in tokens:
            assert token.encode() not in blob, (path.name, token)
    manifest_text = (root / "study.json").read_text()
    for case_id in ids:  # the manifest says nothing per case beyond its id (in the list, and each reader's order)
        assert manifest_text.count(case_id) == 1 + len(load_manifest(root)["readers"])

    # pixels only: no text/time/profile chunks; one size for all (real were larger); same mtimes
    for path in visible:
        if path.suffix == ".png":
            assert _png_chunks(path) == ["IHDR", "IDAT", "IEND"] or set(_png_chunks(path)) == {"IHDR", "IDAT", "IEND"}
            assert Image.open(path).size == (64, 64)
    assert len({p.stat().st_mtime for p in root.glob("cases/*")}) == 1

    # the key holds what was hidden
    assert {c["truth"] for c in key["cases"].values()} == {"real", "synthetic"}
    syn = [c for c in key["cases"].values() if c["truth"] == "synthetic"]
    assert {c["engine"] for c in syn} == {ENGINE} and {c["model"] for c in syn} == {MODEL}
    assert sorted(c["seed"] for c in syn if c["group"] == "tumour") == [SEED_MARK, SEED_MARK + 1, SEED_MARK + 2]
    assert {c["group"] for c in key["cases"].values()} == set(GROUPS)
    assert study.n_real == study.n_synthetic == 6


def test_case_order_is_not_correlated_with_truth_or_group(study):
    key = _key(study)
    ids = load_manifest(study.study)["cases"]
    truth = np.array([key["cases"][i]["truth"] == "real" for i in ids])
    # id order vs truth: the ids are random, so sorted ids mix real and synthetic
    assert 0 < truth[:6].sum() < 6 or 0 < truth[6:].sum() < 6
    from scipy.stats import mannwhitneyu

    # Case ids come from secret randomness, so this study differs on every run: the bounds
    # below are about 5 standard deviations of the no-shift distribution (false alarm ~1e-6).
    stats, firsts = [], []
    for seed in range(60):
        order = reader_order(ids, seed)
        real = [k for k, c in enumerate(order) if key["cases"][c]["truth"] == "real"]
        syn = [k for k, c in enumerate(order) if key["cases"][c]["truth"] == "synthetic"]
        stats.append(mannwhitneyu(real, syn).statistic)
        firsts.append(key["cases"][order[0]]["truth"] == "real")
    n1, n2 = 6, 6  # positions of real vs synthetic: the mean U stays at n1 n2 / 2 without a systematic shift
    sd_mean_u = np.sqrt(n1 * n2 * (n1 + n2 + 1) / 12) / np.sqrt(len(stats))
    assert abs(np.mean(stats) - n1 * n2 / 2) < 5 * sd_mean_u
    assert 0.2 < np.mean(firsts) < 0.8
    # each reader has a recorded order (the order itself, no seed) and a different one
    manifest = load_manifest(study.study)
    orders = {r: v["order"] for r, v in manifest["readers"].items()}
    assert set(orders) == {"r1", "r2"} and orders["r1"] != orders["r2"]
    assert sorted(orders["r1"]) == sorted(ids) and "seed" not in json.dumps(manifest)


def test_key_lives_outside_the_study(folders, tmp_path):
    result = create_study(folders["real"], folders["synthetic"], tmp_path / "s", per_class_from="subfolders",
                          key_path=tmp_path / "owner" / "key.json", seed=1)
    assert result.key_path == tmp_path / "owner" / "key.json" and result.key_path.is_file()
    assert not any("key" in p.name for p in (tmp_path / "s").rglob("*"))
    with pytest.raises(HistogenInputError, match="outside the study folder"):
        create_study(folders["real"], folders["synthetic"], tmp_path / "t", key_path=tmp_path / "t" / "key.json")
    with pytest.raises(HistogenInputError, match="A key already exists"):
        create_study(folders["real"], folders["synthetic"], tmp_path / "u", key_path=result.key_path)
    assert not (tmp_path / "t").exists() and not (tmp_path / "u").exists()


def test_balance_groups_csv_and_bad_inputs(tmp_path):
    f = make_folders(tmp_path / "in", n_real=4, n_synthetic=2)
    overall = create_study(f["real"], f["synthetic"], tmp_path / "a", per_class_from="subfolders", seed=0)
    assert overall.n_real == overall.n_synthetic == 4 and overall.excluded == 4
    per_group = create_study(f["real"], f["synthetic"], tmp_path / "b", per_class_from="subfolders",
                             balance="group", seed=0)
    assert per_group.groups == {"stroma": (2, 2), "tumour": (2, 2)}
    capped = create_study(f["real"], f["synthetic"], tmp_path / "c", per_class_from="subfolders",
                          balance="none", max_per_kind=3, seed=0)
    assert (capped.n_real, capped.n_synthetic) == (3, 3)

    # groups from a CSV (flat folders)
    flat = {k: tmp_path / "flat" / k for k in ("real", "synthetic")}
    rows = ["file,group"]
    for kind, folder in flat.items():
        folder.mkdir(parents=True)
        for i in range(2):
            _png(folder / f"{kind}{i}.png", np.full((16, 16, 3), 40 * i, np.uint8))
            rows.append(f"{kind}{i},{'A' if i == 0 else 'B'}")
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    by_csv = create_study(flat["real"], flat["synthetic"], tmp_path / "d", per_class_from=tmp_path / "groups.csv")
    assert by_csv.groups == {"A": (1, 1), "B": (1, 1)}
    (tmp_path / "short.csv").write_text("file,group\nreal0,A\n")
    with pytest.raises(HistogenInputError, match="no group for 3 images"):
        create_study(flat["real"], flat["synthetic"], tmp_path / "e", per_class_from=tmp_path / "short.csv")

    (tmp_path / "empty").mkdir()
    with pytest.raises(HistogenInputError, match="No synthetic images"):
        create_study(flat["real"], tmp_path / "empty", tmp_path / "f")
    with pytest.raises(HistogenInputError, match="No real image folder"):
        create_study(tmp_path / "nope", flat["synthetic"], tmp_path / "f")
    with pytest.raises(HistogenInputError, match="not empty"):
        create_study(flat["real"], flat["synthetic"], tmp_path / "a")
    with pytest.raises(HistogenInputError, match="Reader id"):
        create_study(flat["real"], flat["synthetic"], tmp_path / "f", readers=["bad id"])
    (flat["synthetic"] / "broken.png").write_bytes(b"not a png")
    with pytest.raises(HistogenInputError, match="broken.png cannot be decoded"):
        create_study(flat["real"], flat["synthetic"], tmp_path / "f", balance="none")
    assert not (tmp_path / "f").exists() and not list(tmp_path.glob(".f.creating-*"))  # nothing half-made
    from napari_histogen.core.study import key_dir

    assert not list(key_dir().glob("f-*.key.json")) and not list(key_dir().glob(".*.tmp"))


def test_image_with_mask_study(tmp_path):
    f = make_folders(tmp_path / "in", n_real=2, n_synthetic=2, masks=True)
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", masks=f["masks"], per_class_from="subfolders",
                          seed=5)
    assert result.mode == "image+mask"
    manifest = load_manifest(result.study)
    assert [c["key"] for c in manifest["criteria"]] == ["boundaries", "types", "missing", "extra"]
    assert manifest["mask_scheme"] == "consep"
    with ReaderSession(result.study, "r1") as session:
        case = session.load_case()
        assert case.image.shape == (64, 64, 3) and case.instances.shape == (64, 64)
        # cropped like the image, types kept; ids 1..N in a random order (no numbering pattern)
        assert sorted(case.classes()) == [1, 2] and sorted(case.classes().values()) == [1, 3]
        answer = session.record(4, {"boundaries": True, "missing": True}, comment="blurry")
        assert answer.criteria == {"boundaries": True, "types": False, "missing": True, "extra": False}
        with pytest.raises(HistogenInputError, match="Unknown criteria"):
            session.record(4, {"colour": True})
    missing_mask = make_folders(tmp_path / "in2", n_real=1, n_synthetic=1)
    with pytest.raises(HistogenInputError, match="No mask for the real image"):
        create_study(missing_mask["real"], missing_mask["synthetic"], tmp_path / "t", masks=tmp_path / "in2",
                     per_class_from="subfolders")


# -- the answer log: audit trail, resume, corruption, ownership ------------------------------------
def test_answers_audit_trail_and_resume(study):
    with ReaderSession(study.study, "r1") as s:
        token = s.issued_token
        assert s.index == 0 and s.progress == f"1 / {s.n_cases}"
        with pytest.raises(HistogenInputError, match="Score this case first"):
            s.next()
        for score in (3, 4, 5, 6, 7):
            s.record(score)
            s.next()
        s.go_to(2)
        first = s.record(5)  # unchanged: nothing written
        changed = s.record(9, comment="second look")
        assert changed.seq > first.seq
        with pytest.raises(HistogenInputError, match="1-10"):
            s.record(11)
    log = read_answer_log(study.study / "answers" / "r1.jsonl")
    assert len(log.answers) == 6  # 5 answers + 1 change
    assert [a.realism for a in log.answers if a.index == 2] == [5, 9]
    assert log.latest()[log.answers[2].case].realism == 9  # the last one counts
    with pytest.raises(HistogenInputError, match="reader token"):
        ReaderSession(study.study, "r1")  # another reader cannot open r1's answers without r1's token
    with pytest.raises(HistogenInputError, match="not reader 'r1'"):
        ReaderSession(study.study, "r1", token="0" * 12)
    with ReaderSession(study.study, "r1", token=token) as s:
        assert s.issued_token is None
        assert s.index == 5 and s.progress == f"6 / {s.n_cases}"  # next case after where they stopped
        assert s.answer(2).realism == 9 and s.answer(2).comment == "second look"
    order = ["a", "b", "c", "d"]
    assert resume_index(order, []) == 0
    assert resume_index(order, [Answer("a", 0, 5), Answer("c", 2, 5)]) == 3
    assert resume_index(order, [Answer("c", 2, 5), Answer("d", 3, 5)]) == 0  # wraps to the skipped one
    assert resume_index(order, [Answer(c, i, 5) for i, c in enumerate(order)]) == 3


def test_corrupt_last_line_is_skipped_with_a_warning(study):
    path = study.study / "answers" / "r1.jsonl"
    with ReaderSession(study.study, "r1") as s:
        token = s.issued_token
        for score in (2, 3, 4):
            s.record(score)
            s.next()
    torn = b'{"type":"answer","reader":"r1","seq":99,"case":"abc'
    with open(path, "ab") as fh:
        fh.write(torn)
    with pytest.warns(LogWarning, match="damaged last line"):
        assert len(read_answer_log(path).answers) == 3  # reading leaves the file alone
    assert path.read_bytes().endswith(torn)
    with pytest.warns(LogWarning):
        s = ReaderSession(study.study, "r1", token=token)
    with s:
        assert s.index == 3 and s.n_answered == 3
        assert any("damaged" in w for w in s.warnings)
        s.record(8)
    assert torn in path.with_name("r1.jsonl.corrupt").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the repaired log reads cleanly
        assert [a.realism for a in read_answer_log(path).answers] == [2, 3, 4, 8]

    # a whole record whose newline was lost is kept
    path.write_bytes(path.read_bytes()[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ReaderSession(study.study, "r1", token=token) as s:
            assert s.n_answered == 4
    assert path.read_bytes().endswith(b"}\n")

    # a power cut can leave zero bytes; a damaged line that is not the last one is an error
    with open(path, "ab") as fh:
        fh.write(b"\x00" * 40)
    with pytest.warns(LogWarning):
        ReaderSession(study.study, "r1", token=token).close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"type":"answ\n'
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorruptFileError, match="line 3 is damaged"):
        ReaderSession(study.study, "r1", token=token)


def test_readers_never_write_the_same_file(study):
    answers = study.study / "answers"
    with pytest.raises(HistogenInputError, match="may only write r2.jsonl"):
        AnswerLog(answers / "r1.jsonl", "r2")
    with ReaderSession(study.study, "r1") as s:
        s.record(5)
        with pytest.raises(HistogenInputError, match="open in another"):
            ReaderSession(study.study, "r1")  # one session per reader
        with pytest.raises(HistogenInputError, match="cannot write to 'r1'"):
            s._log.append({"type": "answer", "reader": "r2", "case": s.case_id, "index": 0, "realism": 3})
    (answers / "r2.jsonl").write_bytes((answers / "r1.jsonl").read_bytes())  # a copied log
    with pytest.raises(HistogenInputError, match="belongs to reader 'r1'"):
        ReaderSession(study.study, "r2")
    with pytest.raises(HistogenInputError, match="not in this study"):
        ReaderSession(study.study, "r3")
    with pytest.raises(HistogenInputError, match="Reader id"):
        ReaderSession(study.study, "../r1")
    with pytest.raises(HistogenInputError, match="no study.json"):
        ReaderSession(study.study / "cases", "r1")


_CHILD = textwrap.dedent("""
    import sys, time
    from napari_histogen.core.study import ReaderSession
    s = ReaderSession(sys.argv[1], sys.argv[2])
    print(f"token {s.issued_token}", flush=True)
    while True:
        score = s.index % 10 + 1
        s.record(score, comment=f"c{s.index}")
        print(f"recorded {s.index} {s.case_id} {score}", flush=True)
        time.sleep(0.02)
        if not s.next():
            break
    time.sleep(60)
""")


def test_sigkill_mid_session_loses_no_answer_and_resumes_at_next_case(folders, tmp_path):
    result = create_study(folders["real"], folders["synthetic"], tmp_path / "s", per_class_from="subfolders",
                          seed=2)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(result.study), "k1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        token = proc.stdout.readline().split()[1]
        deadline = time.monotonic() + 60
        while len(seen) < 5 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"child ended early: {proc.stderr.read()}"
            seen.append(line.split())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(seen) == 5
    with ReaderSession(result.study, "k1", token=token) as s:
        recorded = s.answers()
        for _, index, case, score in seen:  # every answer reported as recorded is there
            assert recorded[case].realism == int(score) and recorded[case].index == int(index)
        assert len(recorded) >= 5
        assert s.index == len(recorded) and s.answer() is None  # the first case not yet answered
        assert s.order[: len(recorded)] == [a.case for a in sorted(recorded.values(), key=lambda a: a.index)]


def test_failed_write_is_reported_and_leaves_no_half_record(study, monkeypatch):
    import napari_histogen.core.study.answers as answers_mod

    with ReaderSession(study.study, "r1") as s:
        s.record(4)
        size = (study.study / "answers" / "r1.jsonl").stat().st_size

        def disk_full(fd, data):
            os.write(fd, data[:10])
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(answers_mod, "_write_fully", disk_full)
        with pytest.raises(HistogenInputError, match="NOT recorded"):
            s.record(6)
        assert (study.study / "answers" / "r1.jsonl").stat().st_size == size
        assert s.answer().realism == 4
        monkeypatch.undo()
        s.record(6)
    assert [a.realism for a in read_answer_log(study.study / "answers" / "r1.jsonl").answers] == [4, 6]


def test_progress_without_unblinding(study):
    with ReaderSession(study.study, "r2") as s:
        s.record(7)
    rows = {r["reader"]: r for r in reader_progress(study.study)}
    assert rows["r2"]["answered"] == 1 and rows["r1"]["answered"] == 0 and rows["r2"]["n_cases"] == 12


# -- statistics against hand-computed values -------------------------------------------------------
def test_statistics_match_hand_computed_values():
    real, syn = [8, 9, 7, 6], [3, 5, 6, 2]
    # U by hand: 8, 9, 7 beat all four; 6 beats 3, 5, 2 and ties 6 -> 4 + 4 + 4 + 3.5
    mw = mann_whitney(real, syn)
    assert mw["U"] == 15.5 and mw["auc"] == pytest.approx(15.5 / 16)
    fpr, tpr, _ = roc_points(real, syn)
    assert np.trapezoid(tpr, fpr) == pytest.approx(15.5 / 16)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    h = auc_from_histograms(score_histograms([real]).sum(0), score_histograms([syn]).sum(0))
    assert h == pytest.approx(15.5 / 16)
    # no ties, n = 3 + 3: exact two-sided p = 2 / C(6, 3) = 0.1
    exact = mann_whitney([4, 5, 6], [1, 2, 3])
    assert (exact["U"], exact["auc"]) == (9.0, 1.0) and exact["p"] == pytest.approx(0.1)
    # accuracy at >= 6: real all right, synthetic 3, 5, 2 right, 6 wrong: 7 / 8, p = 2 * 9 / 256
    acc = accuracy_vs_chance(real, syn, threshold=6)
    assert (acc["correct"], acc["n"]) == (7, 8) and acc["p"] == pytest.approx(18 / 256)
    # 8 of 10 -> 2 * (45 + 10 + 1) / 1024
    assert accuracy_vs_chance([9] * 8 + [1, 1], [], threshold=6)["p"] == pytest.approx(112 / 1024)
    # Wilcoxon: differences 1..5 all positive -> W = 0, exact p = 2 / 32
    w = wilcoxon_paired([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert w["W"] == 0 and w["p"] == pytest.approx(2 / 32) and w["mean_difference"] == 3
    # separated data: the bootstrap CI is a point; otherwise it brackets the AUC
    assert bootstrap_auc_ci([[9], [8]], [[1], [2]], n_boot=200) == (1.0, 1.0)
    lo, hi = bootstrap_auc_ci([[r] for r in real], [[s] for s in syn], n_boot=500, seed=1)
    assert lo <= 15.5 / 16 <= hi and hi <= 1.0 and lo < hi
    assert bootstrap_auc_ci([[r] for r in real], [[s] for s in syn], n_boot=500, seed=1) == (lo, hi)


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 observers x 12 units
    nan = np.nan
    data = [[1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
            [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]]
    assert krippendorff_alpha(data, level="nominal", value_domain=[1, 2, 3, 4, 5]) == pytest.approx(0.743, abs=1e-3)
    assert krippendorff_alpha(data, level="ordinal") == pytest.approx(0.815, abs=1e-3)
    assert krippendorff_alpha(data, level="interval") == pytest.approx(0.849, abs=1e-3)
    assert np.isnan(krippendorff_alpha([[1, 2, 3]]))  # one reader: undefined


def _score_all(study_dir, reader, key, scores_by_truth):
    """Score every case: the next planted score of its truth."""
    pools = {k: list(v) for k, v in scores_by_truth.items()}
    with ReaderSession(study_dir, reader) as s:
        while True:
            truth = key["cases"][s.case_id]["truth"]
            s.record(pools[truth].pop(0))
            if not s.next():
                break


def test_report_statistics_match_hand_computed_case(tmp_path):
    f = make_folders(tmp_path / "in", n_real=4, n_synthetic=4, groups=("g",))
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", per_class_from="subfolders", seed=9)
    key = _key(result)
    _score_all(result.study, "r1", key, {"real": [8, 9, 7, 6], "synthetic": [3, 5, 6, 2]})
    report = write_report(result.study, tmp_path / "report", n_boot=300)
    overall = report.by_group.set_index("group").loc["overall"]
    assert overall["U"] == 15.5 and overall["auc"] == pytest.approx(0.96875)
    assert overall["real_mean"] == 7.5 and overall["real_sd"] == pytest.approx(np.sqrt(5 / 3))
    assert overall["synthetic_mean"] == 4.0 and overall["synthetic_sd"] == pytest.approx(np.sqrt(10 / 3))
    assert overall["n_correct"] == 7 and overall["p_binomial"] == pytest.approx(18 / 256)
    assert overall["auc_ci_low"] <= 0.96875 <= overall["auc_ci_high"]
    answers = (tmp_path / "report" / "answers.csv").read_text()
    assert answers.count("\n") == 9 and "real/g/real_g_0.png" in answers
    for name in ("summary.md", "summary.json", "records.csv", "realism_by_group.png", "roc.png",
                 "realism_by_reader.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert Image.open(tmp_path / "report" / "roc.png").size[0] > 200
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "| overall | 7.50 ± 1.29 | 4.00 ± 1.83 |" in md and "0.97 [" in md


def test_report_with_groups_readers_criteria_and_pairs(tmp_path):
    f = make_folders(tmp_path / "in", n_real=3, n_synthetic=3, masks=True)
    # synthetic images named like the real ones (made from their masks) are pairs; their masks lie next to them
    for g in GROUPS:
        for p in sorted((f["synthetic"] / g).glob("syn_*.png")):
            p.rename(p.with_name(p.name.replace("syn_", "real_")))
        for p in sorted(f["masks"].glob(f"syn_{g}_*")):
            p.rename(f["synthetic"] / g / p.name.replace("syn_", "real_"))
    (f["real"] / GROUPS[0] / f"real_{GROUPS[0]}_0.png").unlink()
    (f["synthetic"] / GROUPS[0] / f"real_{GROUPS[0]}_0.png").unlink()
    result = create_study(f["real"], f["synthetic"], tmp_path / "s", masks=f["masks"], per_class_from="subfolders",
                          seed=4)
    key = _key(result)
    assert sum(c["pair"] is not None for c in key["cases"].values()) == 10
    rng = np.random.default_rng(0)
    for reader in ("r1", "r2", "r3"):
        with ReaderSession(result.study, reader) as s:
            while True:
                real = key["cases"][s.case_id]["truth"] == "real"
                s.record(int(rng.integers(6, 11) if real else rng.integers(1, 7)),
                         {"boundaries": real, "types": True, "missing": not real, "extra": False})
                if not s.next():
                    break
    report = write_report(result.study, tmp_path / "rep", n_boot=200)
    assert list(report.by_group["group"]) == sorted(GROUPS) + ["overall"]
    assert list(report.by_reader["reader"]) == ["r1", "r2", "r3"]
    crit = report.criteria.set_index(["group", "truth"])
    assert crit.loc[("overall", "real"), "boundaries_pct"] == 100 and crit.loc[("overall", "synthetic"),
                                                                                "missing_pct"] == 100
    assert crit.loc[("overall", "real"), "n"] == 15
    paired = report.paired.set_index("group")
    assert paired.loc["overall", "n_pairs"] == 5 and paired.loc["overall", "mean_difference"] > 0
    alpha = report.agreement["value"].iloc[0]
    assert 0 < alpha <= 1  # readers agree: every real above every synthetic... mostly
    assert (tmp_path / "rep" / "criteria.png").is_file()
    table5 = report.table5()
    assert list(table5.columns) == ["group", "real", "synthetic"] and "±" in table5["real"].iloc[0]


def test_report_needs_this_studys_key(study, tmp_path, folders):
    with pytest.raises(HistogenInputError, match="No reader has answered"):
        write_report(study.study, tmp_path / "r")
    with ReaderSession(study.study, "r1") as s:
        s.record(5)
    other = create_study(folders["real"], folders["synthetic"], tmp_path / "other", per_class_from="subfolders")
    with pytest.raises(HistogenInputError, match="belongs to another study"):
        write_report(study.study, tmp_path / "r", key_path=other.key_path)
    with pytest.raises(HistogenInputError, match="No study key"):
        write_report(study.study, tmp_path / "r", key_path=tmp_path / "missing.json")
    with pytest.raises(HistogenInputError, match="threshold"):
        compute_report(__import__("pandas").DataFrame({"reader": ["a"], "case": ["x"], "realism": [5],
                                                       "truth": ["real"], "group": ["g"]}), threshold=11)


# -- CLI ----------------------------------------------------------------------------------------------------
def _cli(argv) -> int:
    """``histogen`` through cli.main when study is wired there, else a local parser with the same handling."""
    from napari_histogen import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "study" in sub.choices:
        return cli.main(argv)
    from napari_histogen.cli_study import add_study_parser

    local = argparse.ArgumentParser(prog="histogen")
    add_study_parser(local.add_subparsers(dest="verb"))
    args = local.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HistogenInputError as err:
        print(f"histogen: error: {err}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT


def test_cli_create_status_report(folders, tmp_path, capsys):
    study = tmp_path / "cli-study"
    assert _cli(["study", "create", "--real", str(folders["real"]), "--synthetic", str(folders["synthetic"]),
                 "--per-class-from", "subfolders", "--readers", "a", "b", "--seed", "1", "--out", str(study)]) == 0
    out = capsys.readouterr().out
    assert "12 cases (6 real, 6 synthetic)" in out
    key_path = Path(out.split("Key (keep it from the readers): ", 1)[1].splitlines()[0])
    assert key_path.name.startswith("cli-study-") and not key_path.resolve().is_relative_to(tmp_path.resolve())
    key = json.loads(key_path.read_text())
    _score_all(study, "a", key, {"real": [9, 8, 7, 9, 8, 7], "synthetic": [2, 3, 4, 6, 5, 1]})
    assert _cli(["study", "status", str(study)]) == 0
    status = capsys.readouterr().out
    assert "12 / 12 answered" in status and "0 / 12 answered" in status
    assert "real" not in status.replace("Reader study", "")  # status unblinds nothing
    assert _cli(["study", "report", str(study), "--out", str(tmp_path / "rep"), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "| overall | 8.00 ± 0.89 | 3.50 ± 1.87 |" in out
    assert (tmp_path / "rep" / "answers.csv").is_file()

    assert _cli(["study", "create", "--real", str(tmp_path / "none"), "--synthetic", str(folders["synthetic"]),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("histogen: error: No real image folder") and err.count("\n") == 1
    assert _cli(["study", "report", str(tmp_path / "nostudy"), "--out", str(tmp_path / "y")]) == 2
    assert "No study folder" in capsys.readouterr().err
    assert _cli(["study", "score", str(study), "--reader", "zz"]) == 2  # fails before napari starts
    assert "not in this study" in capsys.readouterr().err
    assert _cli(["study", "report", str(study), "--out", str(tmp_path / "z"), "--threshold", "0"]) == 2
    assert "threshold" in capsys.readouterr().err


def test_study_from_a_synthesis_output_folder(tmp_path):
    """The folder layout our engines write (<name>.png, .npz, .ome.tif, _side_by_side.png, .json)."""
    from napari_histogen.core.io.synthesis import write_synthesis_pair
    from napari_histogen.core.masks import NucleiMask
    from napari_histogen.core.provenance import make_provenance

    rng = np.random.default_rng(1)
    real, syn = tmp_path / "real", tmp_path / "generated"
    real.mkdir()
    inst = np.zeros((32, 32), np.int32)
    inst[4:12, 4:12] = 1
    nuclei = NucleiMask.create(inst, {1: 2}, "consep")
    for i in range(2):
        _png(real / f"patch{i}.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
        np.savez(real / f"patch{i}.npz", inst_map=inst, type_map=inst * 2, scheme=np.array("consep"))
        for k in range(2):
            prov = make_provenance("nasdm synthesis", engine="nasdm", model="tiny-test", seed=10 * i + k,
                                   mask_source=f"patch{i}.npz")
            write_synthesis_pair(syn, f"patch{i}_s{k}", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), nuclei,
                                 prov)
    result = create_study(real, syn, tmp_path / "s", masks=[real], balance="none", seed=0)
    assert (result.n_real, result.n_synthetic) == (2, 4)  # no .ome.tif or side-by-side copies
    key = _key(result)
    gen = sorted((c for c in key["cases"].values() if c["truth"] == "synthetic"), key=lambda c: c["source"])
    assert [c["source"] for c in gen] == [f"synthetic/patch{i}_s{k}.png" for i in range(2) for k in range(2)]
    assert {c["engine"] for c in gen} == {"nasdm"} and {c["model"] for c in gen} == {"tiny-test"}
    assert [c["seed"] for c in gen] == [0, 1, 10, 11]
    assert [c["pair"] for c in gen] == ["all/patch0", "all/patch0", "all/patch1", "all/patch1"]
    assert all(c["mask_source"].endswith(".npz") for c in gen)
