import json

import pytest

from napari_histogen.core.errors import CorruptFileError, HistogenInputError, UnknownClassError
from napari_histogen.core.schemes import (
    BUILTIN_SCHEMES,
    ClassInfo,
    ClassScheme,
    get_scheme,
    list_schemes,
    load_scheme,
    save_scheme,
)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_HOME", str(tmp_path / "home"))


def test_builtin_schemes_match_the_datasets():
    assert get_scheme("lizard").names == ("neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective")
    assert get_scheme("lizard").ids == (1, 2, 3, 4, 5, 6)
    assert get_scheme("consep").names == ("other", "inflammatory", "epithelial", "spindle")
    assert get_scheme("pannuke").names == ("neoplastic", "inflammatory", "connective", "dead", "epithelial")
    assert get_scheme("nucls").names == ("tumor_any", "nonTIL_stromal", "sTIL", "other_nucleus")
    assert get_scheme("tissue").names == ("epithelium", "stroma")
    assert get_scheme("tissue").kind == "tissue"


def test_colours_are_distinct_within_each_scheme():
    for scheme in BUILTIN_SCHEMES.values():
        colors = [c.color for c in scheme.classes]
        assert len(set(colors)) == len(colors), scheme.name
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)


def test_lookups_and_unknown_ids():
    consep = get_scheme("consep")
    assert consep.id_of("Epithelial") == 3
    assert consep.name_of(0) == "unclassified"
    assert consep.color(3) == (220, 20, 60)
    with pytest.raises(UnknownClassError, match=r"\[7, 9\]"):
        consep.check_ids([1, 7, 9])
    consep.check_ids([0, 1, 4])
    with pytest.raises(UnknownClassError):
        consep.check_ids([0], allow_unclassified=False)
    with pytest.raises(UnknownClassError):
        consep.id_of("macrophage")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_user_scheme_round_trip_and_listing(tmp_path, suffix):
    scheme = ClassScheme("glands", (ClassInfo(1, "tumour gland", (200, 10, 10)), ClassInfo(3, "normal gland", (10, 200, 10))),
                         kind="tissue", description="test")
    path = save_scheme(scheme, tmp_path / f"glands{suffix}")
    assert load_scheme(path) == scheme
    save_scheme(scheme)  # into the user scheme folder
    assert "glands" in list_schemes()
    assert "glands" in list_schemes(kind="tissue") and "glands" not in list_schemes(kind="nuclei")
    assert get_scheme("glands") == scheme


def test_user_scheme_cannot_shadow_builtin(tmp_path):
    fake = ClassScheme("consep", (ClassInfo(1, "x", (1, 2, 3)),))
    save_scheme(fake)
    assert get_scheme("consep") == BUILTIN_SCHEMES["consep"]


def test_bad_scheme_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CorruptFileError):
        load_scheme(bad)
    bad.write_text(json.dumps({"name": "x", "classes": [{"id": 1}]}))
    with pytest.raises(CorruptFileError, match="valid class scheme"):
        load_scheme(bad)
    bad.write_text(json.dumps({"name": "x", "classes": [{"id": 0, "name": "bg"}]}))
    with pytest.raises(HistogenInputError, match=">= 1"):
        load_scheme(bad)
    bad.write_text(json.dumps({"name": "x", "classes": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}))
    with pytest.raises(HistogenInputError, match="repeats"):
        load_scheme(bad)
    with pytest.raises(HistogenInputError, match="Unknown class scheme"):
        get_scheme("nonexistent")
