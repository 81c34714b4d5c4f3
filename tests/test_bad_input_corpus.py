"""A corpus of malformed files and bad parameters driven through the CLI verbs and the napari reader
(issue 12): every case ends with exit status 2 and one line on stderr (or a clean decline for the reader),
never a traceback, and leaves no partial output.

Run in-process (``cli.main``) to stay fast. ``CORPUS_FIGURES`` at the end of the module collects the
counts for the report (``pytest tests/test_bad_input_corpus.py -s`` prints them).
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_histogen import cli

FIGURES = {"cases": 0, "clear_errors": 0, "tracebacks": 0, "partial_outputs": 0}


# -- the corpus ------------------------------------------------------------------------------------------
def _png(path: Path, shape=(32, 32)) -> Path:
    Image.fromarray(np.full((*shape, 3), 180, np.uint8)).save(path)
    return path


def _npz_with_declared_shape(path: Path, shape) -> Path:
    """A tiny .npz whose 'inst_map' header claims ``shape`` (data truncated): a decompression bomb's header."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i4", "fortran_order": False, "shape": tuple(shape)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("inst_map.npy", header.getvalue() + b"\0" * 1024)
    return path


def _geojson(path: Path, features, extra=None) -> Path:
    doc = {"type": "FeatureCollection", "features": features, **(extra or {})}
    path.write_text(json.dumps(doc))
    return path


def _square(x, y, size, cls=None) -> dict:
    ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
    props = {"objectType": "detection"}
    if cls:
        props["classification"] = {"name": cls}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}


def make_corpus(root: Path) -> dict[str, Path]:
    """Malformed and hostile annotation files, by case name."""
    root.mkdir(parents=True, exist_ok=True)
    c: dict[str, Path] = {}

    def put(name, data: bytes):
        (root / name).write_bytes(data)
        c[name] = root / name

    # images
    put("empty.png", b"")
    put("truncated.png", (_png(root / "_ok.png").read_bytes())[:60])
    put("random.png", os.urandom(2048))
    put("text.tif", b"this is not a tiff\n" * 10)
    put("bomb_header.png", b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR"
        + struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0) + b"\0\0\0\0")
    # masks
    put("not_zip.npz", b"PK\x03\x04 broken")
    put("random.npz", os.urandom(512))
    np.savez(root / "no_inst.npz", something=np.zeros((8, 8)))
    c["no_inst.npz"] = root / "no_inst.npz"
    np.savez(root / "negative.npz", inst_map=-np.ones((8, 8), np.int32))
    c["negative.npz"] = root / "negative.npz"
    np.savez(root / "fractional.npz", inst_map=np.full((8, 8), 0.5))
    c["fractional.npz"] = root / "fractional.npz"
    np.savez(root / "cube.npz", inst_map=np.zeros((2, 3, 4, 5), np.int32))
    c["cube.npz"] = root / "cube.npz"
    np.savez(root / "strings.npz", inst_map=np.array([["a", "b"], ["c", "d"]]))
    c["strings.npz"] = root / "strings.npz"
    np.savez(root / "above_int32.npz", inst_map=np.full((8, 8), 2**40, np.int64))
    c["above_int32.npz"] = root / "above_int32.npz"
    np.savez(root / "bad_classes.npz", inst_map=np.ones((8, 8), np.int32), classes=np.array(["x", "y"]))
    c["bad_classes.npz"] = root / "bad_classes.npz"
    np.savez(root / "bad_mpp.npz", inst_map=np.ones((8, 8), np.int32), mpp=np.array("fast"))
    c["bad_mpp.npz"] = root / "bad_mpp.npz"
    c["huge_declared.npz"] = _npz_with_declared_shape(root / "huge_declared.npz", (20000, 20000))
    # GeoJSON
    put("not_json.geojson", b"{ nope")
    put("latin1.geojson", '{"type": "FeatureCollection", "features": [], "name": "caf\xe9"}'.encode("latin-1"))
    put("nested.geojson", b"[" * 100000 + b"]" * 100000)
    put("nul.geojson", b"\x00" * 64)
    c["empty_collection.geojson"] = _geojson(root / "empty_collection.geojson", [])
    c["nan_coords.geojson"] = _geojson(root / "nan_coords.geojson", [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [[["a", 1], [2, 3]]]}}])
    c["points_only.geojson"] = _geojson(root / "points_only.geojson", [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1, 2]}}])
    fmt = "napari-histogen nuclei"
    c["bad_meta.geojson"] = _geojson(root / "bad_meta.geojson", [_square(2, 2, 5)],
                                     {"histogen": {"format": fmt, "shape": "abc", "mpp": "fast", "scheme": 42}})
    c["bad_meta_mpp.geojson"] = _geojson(root / "bad_meta_mpp.geojson", [_square(2, 2, 5)],
                                         {"histogen": {"format": fmt, "shape": [16, 16], "mpp": [1, 2]}})
    c["bad_meta_version.geojson"] = _geojson(root / "bad_meta_version.geojson", [_square(2, 2, 5)],
                                             {"histogen": {"format": fmt, "version": "two"}})
    c["bad_meta_scheme.geojson"] = _geojson(root / "bad_meta_scheme.geojson", [_square(2, 2, 5)],
                                            {"histogen": {"format": fmt, "shape": [16, 16], "scheme": [1, {}]}})
    c["huge_stored_shape.geojson"] = _geojson(root / "huge_stored_shape.geojson", [_square(2, 2, 5)],
                                              {"histogen": {"format": fmt, "shape": [40000, 40000]}})
    c["huge_from_origin.geojson"] = _geojson(root / "huge_from_origin.geojson",
                                             [_square(0, 0, 4), _square(19990, 19990, 8)])
    c["unknown_class.geojson"] = _geojson(root / "unknown_class.geojson", [_square(2, 2, 5, "Martian")])
    c["bad_geometry.geojson"] = _geojson(root / "bad_geometry.geojson", [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": 5}}])
    # MATLAB
    put("random.mat", os.urandom(1024))
    put("text.mat", b"MATLAB 5.0 MAT-file, but not really" + b"\0" * 200)
    try:
        from scipy.io import savemat

        savemat(root / "lizard_string_class.mat", {"inst_map": np.ones((8, 8), np.int32), "class": "epithelial",
                                                   "id": np.array([[1]])})
        c["lizard_string_class.mat"] = root / "lizard_string_class.mat"
        savemat(root / "no_keys.mat", {"x": np.ones(3)})
        c["no_keys.mat"] = root / "no_keys.mat"
    except ImportError:  # pragma: no cover
        pass
    # OME-TIFF
    put("broken.ome.tif", b"II*\x00" + os.urandom(300))
    # dataset arrays
    ds = root / "pannuke"
    ds.mkdir()
    np.save(ds / "images.npy", np.zeros((2, 8, 8, 3), np.uint8))
    np.save(ds / "masks.npy", np.zeros((2, 8, 8, 6), np.float32))
    c["masks.npy::abc"] = Path(str(ds / "masks.npy") + "::abc")
    c["masks.npy::99"] = Path(str(ds / "masks.npy") + "::99")
    put("missing_sibling.npy", b"\x93NUMPY garbage")
    # non-UTF-8 name
    odd = root / os.fsdecode(b"caf\xe9_\xff.png")
    odd.write_bytes(b"not an image")
    c["non_utf8_name.png"] = odd
    return c


# -- running the CLI -------------------------------------------------------------------------------------
def run_cli(argv, capsys) -> tuple[int, str, str]:
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: bad option values end here (status 2)
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def check_clear_error(rc, err, *, case: str, allow_usage=False) -> None:
    FIGURES["cases"] += 1
    if "Traceback" in err:
        FIGURES["tracebacks"] += 1
    assert "Traceback" not in err, (case, err)
    lines = [line for line in err.splitlines() if line.strip()]
    if allow_usage:  # argparse: a usage line, then 'histogen ...: error: ...'
        lines = [line for line in lines if "error:" in line]
    assert rc == 2, (case, rc, err)
    assert len(lines) == 1 and "error:" in lines[0], (case, err)
    FIGURES["clear_errors"] += 1


def no_output(out: Path, case: str) -> None:
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    if leftovers:
        FIGURES["partial_outputs"] += 1
    assert not leftovers, (case, leftovers)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


#: Cases that are valid after all (a clean read is fine): they must not crash and must write a full bundle.
READABLE = {"huge_from_origin.geojson": False}


def test_convert_refuses_every_malformed_file_in_one_line(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    for case, path in corpus.items():
        out = tmp_path / "out" / case.replace("::", "_").replace("/", "_")
        rc, _, err = run_cli(["convert", path, "--out", out], capsys)
        check_clear_error(rc, err, case=case)
        no_output(out, case)


def test_slide_coordinates_are_cropped_to_the_outlines_with_the_offset_recorded(tmp_path, capsys):
    from napari_histogen.core.io.geojson import read_geojson

    path = _geojson(tmp_path / "qupath.geojson", [_square(40000, 30000, 10), _square(40100, 30050, 12)])
    item = read_geojson(path)
    assert item.nuclei.shape[0] * item.nuclei.shape[1] < 200 * 200  # not 30060 x 40112
    assert item.nuclei.metadata["offset_xy"] == [40000, 30000]
    assert item.provenance["offset_xy"] == [40000, 30000]
    rc, out, err = run_cli(["convert", path, "--out", tmp_path / "o"], capsys)
    assert rc == 0 and "Traceback" not in err


def test_masks_above_the_image_limit_are_refused_before_they_are_read(tmp_path):
    from napari_histogen.core.errors import HistogenInputError
    from napari_histogen.core.io.pairs import read_mask_file
    from napari_histogen.core.masks import as_label_image

    with pytest.raises(HistogenInputError, match="above the 8192x8192 px limit"):
        read_mask_file(_npz_with_declared_shape(tmp_path / "big.npz", (20000, 20000)))
    with pytest.raises(HistogenInputError, match="limit"):
        as_label_image(np.broadcast_to(np.int32(0), (9000, 8193)))


BAD_PARAMETERS = [
    ["synthesize", "nasdm", "--mask", "{mask}", "--out", "{out}", "--batch-size", "0"],
    ["synthesize", "nasdm", "--mask", "{mask}", "--out", "{out}", "--seed", str(2**64)],
    ["synthesize", "nasdm", "--mask", "{mask}", "--out", "{out}", "--n", "-1"],
    ["synthesize", "nasdm", "--mask", "{mask}", "--out", "{out}", "--steps", "abc"],
    ["synthesize", "nasdm", "--mask", "{mask}", "--out", "{file}"],
    ["synthesize", "transfer", "--dataset", "{tmp}", "--out", "{out}", "--seed", "-5"],
    ["synthesize", "transfer", "--dataset", "{tmp}", "--out", "{file}"],
    ["train", "nasdm", "--data", "{tmp}", "--out", "{out}", "--batch-size", "0"],
    ["train", "nasdm", "--data", "{tmp}", "--out", "{file}/run"],
    ["study", "report", "{tmp}", "--out", "{out}", "--bootstrap", "0"],
    ["study", "report", "{tmp}", "--out", "{out}", "--seed", str(2**64)],
    ["study", "report", "{tmp}", "--out", "{file}"],
    ["study", "create", "--real", "{tmp}", "--synthetic", "{tmp}", "--out", "{out}", "--max-per-kind", "0"],
    ["study", "create", "--real", "{tmp}", "--synthetic", "{tmp}", "--out", "{out}", "--seed", "-1"],
    ["grow", "{file}", "--shape", "0", "5", "--out", "{out}"],
    ["grow", "{file}", "--mpp", "nan", "--out", "{out}"],
    ["grow", "{file}", "--out", "{file}"],
    ["convert", "{mask}", "--out", "{file}"],
    ["convert", "{mask}", "--out", "{file}/sub"],
    ["convert", "{mask}", "--out", "{out}/" + "x" * 300],
    ["convert", "{mask}", "--out", "{out}", "--index", "-3"],
    ["demo", "--out", "{file}", "--headless"],
    ["demo", "--out", "{out}", "--steps", "0", "--headless"],
    ["models", "fetch", "--out", "{file}"],
]


@pytest.mark.parametrize("argv", BAD_PARAMETERS, ids=lambda a: " ".join(a[:4]))
def test_bad_parameters_and_output_places_are_refused_before_any_work(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    file = tmp_path / "a_file.txt"
    file.write_text("x\n")
    mask = tmp_path / "m.npz"
    np.savez(mask, inst_map=np.ones((8, 8), np.int32))
    out = tmp_path / "out"
    args = [a.format(mask=mask, out=out, file=file, tmp=tmp_path) for a in argv]
    rc, _, err = run_cli(args, capsys)
    check_clear_error(rc, err, case=" ".join(argv), allow_usage=True)
    no_output(out, " ".join(argv))
    assert file.read_text() == "x\n"


def test_study_verbs_refuse_bad_studies_and_readers(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    real, syn = tmp_path / "real", tmp_path / "syn"
    for folder in (real, syn):
        folder.mkdir()
        for i in range(2):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                folder / f"{folder.name}{i}.png")
    _png(real / "tiny.png", (1, 1))
    (tmp_path / "a_file").write_text("x")
    cases = [
        ["study", "create", "--real", real, "--synthetic", real, "--out", tmp_path / "s1"],  # same folder
        ["study", "create", "--real", real, "--synthetic", syn, "--out", tmp_path / "s2", "--balance", "none"],  # 1x1
        ["study", "create", "--real", real, "--synthetic", syn, "--out", tmp_path / "a_file"],
        ["study", "create", "--real", real, "--synthetic", syn, "--out", tmp_path / "a_file" / "s"],
        ["study", "create", "--real", real, "--synthetic", syn, "--out", tmp_path / "s3", "--readers", "r1\n"],
        ["study", "create", "--real", real, "--synthetic", syn, "--out", tmp_path / "s4",
         "--key-out", tmp_path / "a_file" / "k.json"],
        ["study", "status", tmp_path / "nostudy"],
        ["study", "score", tmp_path / "nostudy", "--reader", "r1"],
    ]
    for argv in cases:
        rc, _, err = run_cli(argv, capsys)
        check_clear_error(rc, err, case=" ".join(map(str, argv[:2])) + f" {argv[-1]}")
    for name in ("s1", "s2", "s3", "s4"):
        assert not (tmp_path / name).exists()
    assert not list(tmp_path.glob(".s*.creating-*"))
    (real / "tiny.png").unlink()
    rc, out, _ = run_cli(["study", "create", "--real", real, "--synthetic", syn, "--out", tmp_path / "ok"], capsys)
    assert rc == 0
    for argv in (["study", "score", tmp_path / "ok", "--reader", "r1\n"],
                 ["study", "score", tmp_path / "ok", "--reader", "r1"]):  # no display: a clear line, not Qt's abort
        rc, _, err = run_cli(argv, capsys)
        check_clear_error(rc, err, case=f"study score {argv[-1]!r}")
    # a second reader cannot open r1's answers without r1's token
    rc, _, err = run_cli(["study", "score", tmp_path / "ok", "--reader", "r1"], capsys)
    check_clear_error(rc, err, case="study score r1 again")
    assert "token" in err


def test_schemes_refuse_bad_files_and_names_that_escape(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))
    good = {"name": "../../escaped", "kind": "nuclei", "classes": [{"id": 1, "name": "a", "color": "#ff0000"}]}
    (tmp_path / "escape.json").write_text(json.dumps(good))
    (tmp_path / "latin1.json").write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "nul.json").write_bytes(b'{"name": "x\x00"}')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "folder.json").mkdir()
    for case in ("escape.json", "latin1.json", "nul.json", "list.json", "missing.json"):
        rc, _, err = run_cli(["schemes", "--add", tmp_path / case], capsys)
        check_clear_error(rc, err, case=f"schemes --add {case}")
    assert not list(tmp_path.rglob("escaped*"))
    rc, _, err = run_cli(["schemes", "consep", "--save", tmp_path / "folder.json"], capsys)
    check_clear_error(rc, err, case="schemes --save folder")


def test_a_folder_batch_skips_bad_masks_and_writes_whole_sets(tiny_nasdm, tmp_path, capsys):
    from napari_histogen.core.masks import NucleiMask
    from napari_histogen.core.io.synthesis import write_synthesis_pair  # noqa: F401 - the writer under test

    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "nested.geojson").write_bytes(b"[" * 50000 + b"]" * 50000)
    (masks / "broken.npz").write_bytes(b"PK\x03\x04 nope")
    _npz_with_declared_shape(masks / "huge.npz", (20000, 20000))
    inst = np.zeros((32, 32), np.int32)
    inst[4:12, 4:12] = 2**31 - 1
    inst[20:28, 20:28] = 5
    mask = NucleiMask.create(inst, {2**31 - 1: 1, 5: 2}, "consep", mpp=0.5)
    np.savez(masks / "good.npz", inst_map=mask.instances, type_map=mask.type_map(), scheme=np.array("consep"),
             mpp=np.array(0.5))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(["synthesize", "nasdm", "--mask", masks, "--model", tiny_nasdm, "--out", out, "--steps", "2",
                               "--device", "cpu"], capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert "Wrote 1 image + mask pairs" in stdout and "skipped 3" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["good_s0.json", "good_s0.npz", "good_s0.ome.tif", "good_s0.png", "good_s0_side_by_side.png"]


def test_a_failing_sample_leaves_no_partial_set(tmp_path, monkeypatch):
    from napari_histogen.core.io import synthesis
    from napari_histogen.core.masks import NucleiMask

    inst = np.zeros((16, 16), np.int32)
    inst[2:6, 2:6] = 1
    nuclei = NucleiMask.create(inst, {1: 1}, "consep")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("napari_histogen.core.io.ome_tiff.write_ome_tiff", disk_full)
    with pytest.raises(OSError):
        synthesis.write_synthesis_pair(tmp_path, "x_s0", np.zeros((16, 16, 3), np.uint8), nuclei, {"seed": 0})
    assert list(tmp_path.iterdir()) == []  # neither the png nor the npz written before the failure


def test_unexpected_errors_give_one_line_and_a_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))

    def boom(*args, **kwargs):
        raise ZeroDivisionError("something the code did not expect")

    monkeypatch.setattr("napari_histogen.core.schemes.list_schemes", boom)
    rc, _, err = run_cli(["schemes"], capsys)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err and "ZeroDivisionError" in lines[0]
    log = Path(lines[0].rsplit("details: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "boom" in log.read_text()


def test_a_closed_pipe_ends_quietly(capsys, monkeypatch):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            return os.open(os.devnull, os.O_WRONLY)

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    rc = cli.main(["schemes"])
    err = capsys.readouterr().err
    assert rc == 141 and "Traceback" not in err and err == ""


# -- the napari reader ------------------------------------------------------------------------------------
def test_the_napari_reader_declines_or_reports_every_malformed_file(corpus, monkeypatch):
    pytest.importorskip("napari")
    from napari_histogen import _reader

    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    for case, path in corpus.items():
        FIGURES["cases"] += 1
        reader = _reader.napari_get_reader(str(path))
        if reader is None:
            FIGURES["clear_errors"] += 1
            continue
        before = len(shown)
        result = reader(str(path))  # never raises
        assert result == [(None,)], case
        assert len(shown) == before + 1 and "\n" not in shown[-1].strip(), (case, shown[-1])
        FIGURES["clear_errors"] += 1
    assert _reader.napari_get_reader(str(corpus["masks.npy::abc"])) is None


def test_zz_figures():
    print(f"\nbad-input corpus: {FIGURES}", file=sys.__stderr__)
    assert FIGURES["tracebacks"] == 0 and FIGURES["partial_outputs"] == 0
