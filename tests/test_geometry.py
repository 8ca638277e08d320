"""ScanGeometry: validation, YAML round trips, fingerprints, derived numbers."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from deftmed.errors import GeometryError
from deftmed.physics.geometry import GeometryWarning, ScanGeometry

GEOMETRY_DIR = Path(__file__).resolve().parents[1] / "geometries"
GEOMETRY_FILES = sorted(GEOMETRY_DIR.glob("*.yaml"))


def _parallel(**kw):
    base = dict(kind="parallel", image_size=64, pixel_spacing=4.0, n_angles=20,
                angle_range=[0, 180], n_detector=93, detector_spacing=4.0)
    base.update(kw)
    return ScanGeometry(**base)


def _fan(**kw):
    base = dict(kind="fan", image_size=64, pixel_spacing=4.0, n_angles=24,
                angle_range=[0, 360], n_detector=99, detector_spacing=8.0,
                src_radius=500.0, det_radius=500.0)
    base.update(kw)
    return ScanGeometry(**base)


def test_shipped_files_exist():
    names = {p.stem for p in GEOMETRY_FILES}
    assert {"parallel64-20", "parallel128-30", "parallel64-60", "limited64-90deg",
            "irregular64", "fan64-24", "clinical-fan256"} <= names


@pytest.mark.parametrize("path", GEOMETRY_FILES, ids=lambda p: p.stem)
def test_shipped_files_load_without_warnings_and_round_trip(path, tmp_path):
    assert path.read_text().startswith("#"), "each geometry file starts with a comment header"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = ScanGeometry.from_yaml(path)
    assert g.name == path.stem
    out = g.to_yaml(tmp_path / "g.yaml", header="round trip")
    g2 = ScanGeometry.from_yaml(out)
    assert g2 == g
    assert g2.fingerprint() == g.fingerprint()
    assert ScanGeometry.from_dict(g.to_dict()) == g
    s = g.summary()
    assert s["covers_fov"]
    assert s["sinogram_shape"] == list(g.sinogram_shape)


def test_angles_uniform_and_explicit():
    g = _parallel(n_angles=4)
    np.testing.assert_allclose(g.angles_deg(), [0, 45, 90, 135])
    np.testing.assert_allclose(g.angles_rad(), np.deg2rad([0, 45, 90, 135]))
    assert g.n_views == 4 and g.sinogram_shape == (4, 93)
    lim = _parallel(n_angles=30, angle_range=[0, 90])
    assert lim.angles_deg()[-1] == pytest.approx(87.0)
    assert not lim.summary()["complete_coverage"]
    irr = _parallel(n_angles=None, angle_range=None, angles=[0, 10, 12.5, 90, 170])
    assert irr.n_views == 5
    assert not irr.summary()["uniform_angles"]
    # default range: 180 for parallel, 360 for fan
    assert _parallel(angle_range=None).angle_range == (0.0, 180.0)
    assert _fan(angle_range=None).angle_range == (0.0, 360.0)


def test_fingerprint_properties():
    g = _parallel()
    same_explicit = _parallel(n_angles=None, angle_range=None, angles=list(g.angles_deg()))
    assert same_explicit.fingerprint() == g.fingerprint()
    assert _parallel(name="other", description="x").fingerprint() == g.fingerprint()
    assert _parallel(n_angles=21).fingerprint() != g.fingerprint()
    assert _parallel(pixel_spacing=4.0 + 1e-13).fingerprint() == g.fingerprint()
    assert _parallel(pixel_spacing=4.001).fingerprint() != g.fingerprint()
    assert _fan().fingerprint() != g.fingerprint()
    assert len(g.fingerprint()) == 64


def test_rectangular_image_size():
    g = _parallel(image_size=(48, 64))
    assert g.shape == (48, 64)
    g2 = ScanGeometry.from_dict(g.to_dict())
    assert g2.shape == (48, 64) and g2.fingerprint() == g.fingerprint()


def test_scaled_keeps_field_of_view():
    g = _fan(name="fan")
    fine = g.scaled(256)
    assert fine.shape == (256, 256)
    assert fine.pixel_spacing == pytest.approx(1.0)
    assert fine.fov_radius() == pytest.approx(g.fov_radius())
    assert fine.sinogram_shape == g.sinogram_shape
    assert fine.fingerprint() != g.fingerprint()
    assert fine.scaled(64).fingerprint() == g.fingerprint()


def test_summary_numbers():
    s = _parallel().summary()
    assert s["views_nyquist"] == pytest.approx(math.pi / 2 * 64)
    assert s["angular_sampling"] == pytest.approx(20 / (math.pi / 2 * 64))
    assert s["detector_covered_radius_mm"] == pytest.approx(186.0)
    assert s["covers_image_corners"]
    f = _fan().summary()
    assert f["magnification"] == pytest.approx(2.0)
    assert f["detector_spacing_at_centre_mm"] == pytest.approx(4.0)
    assert 0 < f["fan_angle_deg"] < 90


@pytest.mark.parametrize("kw, msg", [
    (dict(kind="cone"), "unknown kind"),
    (dict(image_size=0), "image_size"),
    (dict(image_size=(64, 64, 1)), "image_size"),
    (dict(pixel_spacing=-1.0), "pixel_spacing"),
    (dict(pixel_spacing=float("nan")), "pixel_spacing"),
    (dict(n_detector=0), "n_detector"),
    (dict(detector_spacing=0.0), "detector_spacing"),
    (dict(n_angles=0), "n_angles"),
    (dict(angle_range=[10, 10]), "angle_range"),
    (dict(angle_range=[0, float("inf")]), "angle_range"),
    (dict(n_angles=None, angle_range=None, angles=[0, float("nan")]), "finite"),
    (dict(n_angles=None, angle_range=None, angles=[0, 10, 5]), "increasing"),
    (dict(n_angles=None, angle_range=None, angles=[]), "empty"),
    (dict(angles=[0, 10]), "not both"),
    (dict(n_angles=None, angle_range=None), "n_angles"),
    (dict(src_radius=500.0), "only for fan"),
    (dict(n_detector=20), "detector too small"),
])
def test_invalid_parallel(kw, msg):
    with pytest.raises(GeometryError, match=msg):
        _parallel(**kw)


@pytest.mark.parametrize("kw, msg", [
    (dict(src_radius=None), "src_radius > 0"),
    (dict(src_radius=0.0), "src_radius > 0"),
    (dict(det_radius=-1.0), "det_radius"),
    (dict(src_radius=100.0), "inside the image"),
])
def test_invalid_fan(kw, msg):
    with pytest.raises(GeometryError, match=msg):
        _fan(**kw)


def test_truncating_detector_warns():
    with pytest.warns(GeometryWarning, match="truncated"):
        _parallel(n_detector=50)


def _write(tmp_path, data) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


BASE = dict(kind="parallel", image_size=64, pixel_spacing=4.0, n_angles=20,
            angle_range=[0, 180], n_detector=93, detector_spacing=4.0)


@pytest.mark.parametrize("change, key", [
    ({"n_detectors": 93}, "n_detectors"),            # unknown key
    ({"image_size": "64"}, "image_size"),             # wrong type
    ({"n_angles": 20.5}, "n_angles"),                 # float for int
    ({"n_detector": True}, "n_detector"),             # bool for int
    ({"pixel_spacing": "4mm"}, "pixel_spacing"),
    ({"angles": "0,1,2", "n_angles": None}, "angles"),
    ({"angle_range": [0]}, "angle_range"),
    ({"name": 3}, "name"),
])
def test_yaml_bad_keys_and_types(tmp_path, change, key):
    data = dict(BASE)
    data.update(change)
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(GeometryError, match=key):
        ScanGeometry.from_yaml(_write(tmp_path, data))


@pytest.mark.parametrize("missing", ["kind", "image_size", "pixel_spacing", "n_detector",
                                     "detector_spacing"])
def test_yaml_missing_key(tmp_path, missing):
    data = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(GeometryError, match=missing):
        ScanGeometry.from_yaml(_write(tmp_path, data))


def test_yaml_not_a_mapping_or_broken(tmp_path):
    with pytest.raises(GeometryError, match="mapping"):
        ScanGeometry.from_yaml(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(GeometryError, match="YAML"):
        ScanGeometry.from_yaml(_write(tmp_path, "kind: [unclosed\n"))
    with pytest.raises(GeometryError, match="cannot read"):
        ScanGeometry.from_yaml(tmp_path / "missing.yaml")


def test_to_yaml_is_atomic_and_commented(tmp_path):
    g = _parallel(name="p")
    out = g.to_yaml(tmp_path / "sub" / "p.yaml", header="my scanner\nsecond line")
    text = out.read_text()
    assert text.startswith("# my scanner\n# second line\n# fingerprint: ")
    assert [p.name for p in out.parent.iterdir()] == ["p.yaml"]
