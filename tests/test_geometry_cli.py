"""``deftmed geometry show|validate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from deftmed.cli import main

GEOMETRY_DIR = Path(__file__).resolve().parents[1] / "geometries"


@pytest.mark.parametrize("name", ["parallel64-20", "fan64-24", "irregular64"])
def test_show_writes_png(tmp_path, capsys, name):
    out = tmp_path / "draw.png"
    rc = main(["geometry", "show", str(GEOMETRY_DIR / f"{name}.yaml"), "--out", str(out)])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "fingerprint" in text and "views" in text and name in text
    assert [p.name for p in tmp_path.iterdir()] == ["draw.png"]  # no temp files left


def test_show_default_output_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["geometry", "show", str(GEOMETRY_DIR / "limited64-90deg.yaml")]) == 0
    assert (tmp_path / "limited64-90deg.png").is_file()


def test_show_reports_limited_angle(tmp_path, capsys):
    main(["geometry", "show", str(GEOMETRY_DIR / "limited64-90deg.yaml"), "--no-draw"])
    assert "INCOMPLETE" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_validate_ok(capsys):
    assert main(["geometry", "validate", str(GEOMETRY_DIR / "fan64-24.yaml")]) == 0
    assert "valid fan-beam geometry" in capsys.readouterr().out


@pytest.mark.parametrize("text, msg", [
    ("kind: parallel\nimage_size: 64\n", "missing required key"),
    ("kind: parallel\nimage_size: 64\npixel_spacing: 4\nn_angles: 20\nn_detector: 93\n"
     "detector_spacing: 4\nbogus: 1\n", "bogus"),
    ("kind: fan\nimage_size: 64\npixel_spacing: 4\nn_angles: 20\nn_detector: 93\n"
     "detector_spacing: 4\n", "src_radius"),
    ("kind: [oops\n", "YAML"),
])
def test_invalid_yaml_exit_2_and_no_output(tmp_path, capsys, text, msg):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    out = tmp_path / "bad.png"
    assert main(["geometry", "show", str(bad), "--out", str(out)]) == 2
    assert msg in capsys.readouterr().err
    assert not out.exists()
    assert main(["geometry", "validate", str(bad)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_file_exit_2(tmp_path, capsys):
    assert main(["geometry", "validate", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
