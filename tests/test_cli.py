import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_histogen.cli import build_parser, main


def _verbs():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


@pytest.mark.parametrize("verb", [None, *_verbs()])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(([verb] if verb else []) + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: histogen" in capsys.readouterr().out


def test_console_script_is_installed():
    exe = shutil.which("histogen") or str(__import__("pathlib").Path(sys.executable).with_name("histogen"))
    out = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "napari-histogen" in out.stdout


def test_demo_headless_writes_samples_and_synthesizes(tmp_path, capsys, tiny_nasdm):
    root = tmp_path / "demo"
    assert main(["demo", "--headless", "--out", str(root), "--model", str(tiny_nasdm), "--steps", "3",
                 "--device", "cpu"]) == 0
    out = root / "samples"
    names = {p.name for p in out.iterdir()}
    for stem in ("ihc_colon", "nucls_test_2"):
        for suffix in (".png", "_overlay.png", ".ome.tif", "_nuclei.geojson", "_provenance.json"):
            assert f"{stem}{suffix}" in names, (stem, suffix, sorted(names))
    assert "nucls_test_2_points.csv" in names
    record = json.loads((out / "ihc_colon_provenance.json").read_text())
    assert record["nuclei"]["count"] > 100 and record["nuclei"]["scheme"] == "consep"
    assert record["export"]["operation"] == "histogen demo"
    from skimage.io import imread

    overlay, image = imread(out / "ihc_colon_overlay.png"), imread(out / "ihc_colon.png")
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)
    # synthesis: one pair per sample mask, at the model's patch size (32 px for the tiny model)
    syn = root / "synthetic"
    pairs = sorted(p.name for p in syn.glob("*_nasdm_s0.png"))
    assert pairs == ["ihc_nuclei_r192_c192_nasdm_s0.png", "nucls_test_2_nasdm_s0.png"]
    side = imread(syn / "nucls_test_2_nasdm_s0_side_by_side.png")
    assert side.shape[0] == 32 and side.shape[1] == 3 * 32 + 2 * 4  # mask | synthetic | real
    prov = json.loads((syn / "nucls_test_2_nasdm_s0.json").read_text())
    assert prov["parameters"]["engine"] == "nasdm" and prov["parameters"]["steps"] == 3

def test_convert_round_trips_the_demo_output(tmp_path, tiny_nasdm):
    root = tmp_path / "demo"
    main(["demo", "--headless", "--out", str(root), "--model", str(tiny_nasdm), "--steps", "2", "--device", "cpu"])
    demo = root / "samples"
    again = tmp_path / "again"
    assert main(["convert", str(demo / "nucls_test_2.ome.tif"), "--out", str(again)]) == 0
    from napari_histogen.core.io.dispatch import read_annotated

    a = read_annotated(demo / "nucls_test_2.ome.tif")
    b = read_annotated(next(again.glob("*.ome.tif")))
    np.testing.assert_array_equal(a.nuclei.instances, b.nuclei.instances)
    assert a.nuclei.classes == b.nuclei.classes and b.nuclei.scheme.name == "nucls"
    np.testing.assert_array_equal(a.image, b.image)


def test_grow_from_points_csv(tmp_path):
    csv = tmp_path / "pts.csv"
    csv.write_text("10,20,0\n40,40,2\n60,15,1\n")
    assert main(["grow", str(csv), "--shape", "80", "80", "--seed", "3", "--out", str(tmp_path / "g")]) == 0
    from napari_histogen.core.io.dispatch import read_annotated

    grown = read_annotated(tmp_path / "g" / "pts.ome.tif")
    assert sorted(grown.nuclei.classes.values()) == [1, 2, 3]


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"\x00garbage" * 20)
    assert main(["convert", str(broken), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("histogen: error:") and "Traceback" not in err
    assert main(["convert", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "x")]) == 2
    assert "No file" in capsys.readouterr().err
    assert main(["schemes", "nope"]) == 2
    assert main(["grow", str(broken), "--out", str(tmp_path / "y")]) == 2


def test_schemes_verb(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path))
    assert main(["schemes"]) == 0
    listing = capsys.readouterr().out
    assert "lizard" in listing and "pannuke" in listing and "tissue" in listing
    assert main(["schemes", "consep", "--save", str(tmp_path / "c.yaml")]) == 0
    text = (tmp_path / "c.yaml").read_text().replace("name: consep", "name: mycon", 1)
    (tmp_path / "c.yaml").write_text(text)
    assert main(["schemes", "--add", str(tmp_path / "c.yaml")]) == 0
    capsys.readouterr()
    main(["schemes"])
    assert "mycon" in capsys.readouterr().out


@pytest.mark.gui
def test_demo_with_display_opens_napari_with_sample_and_dock(monkeypatch, qtbot):
    pytest.importorskip("qtpy", reason="needs a Qt binding")
    import napari

    monkeypatch.setattr(napari, "run", lambda *a, **k: None)  # do not block in the event loop
    assert main(["demo", "--gui"]) == 0
    viewer = napari.current_viewer()
    try:
        kinds = {layer.metadata.get("histogen", {}).get("kind") for layer in viewer.layers}
        assert kinds == {"image", "nuclei"}
        docks = " ".join(viewer.window.dock_widgets)
        assert "Annotate nuclei and tissue" in docks and "NASDM synthesis" in docks
    finally:
        viewer.close()
