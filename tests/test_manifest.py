import hashlib
from pathlib import Path

import pytest
import yaml

from deftmed.cli import main
from deftmed.data.manifest import load_manifest, sha256_file, verify_manifest
from deftmed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _manifest(tmp_path, files):
    data = {
        "name": "toy", "description": "toy data", "source": {"url": "https://example.org/toy"},
        "licence": "CC0", "citation": "nobody", "files": files,
        "splits": {"train": {"samples": 1}}, "units": "model range",
        "intensity": {"mu_max": 0.08, "units": "1/mm"}, "preprocessing": "none",
    }
    p = tmp_path / "toy.yaml"
    p.write_text(yaml.safe_dump(data))
    return p, data


def _dataset(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"hello world" * 1000)
    (root / "b.bin").write_bytes(b"second file")
    (root / "c.bin").write_bytes(b"no checksum")
    (root / "sub" / "x").write_bytes(b"x")
    files = [
        {"path": "a.bin", "sha256": hashlib.sha256(b"hello world" * 1000).hexdigest(),
         "size": 11000},
        {"path": "b.bin", "sha256": hashlib.sha256(b"second file").hexdigest()},
        {"path": "c.bin", "sha256": None},
        {"path": "sub/"},
    ]
    return root, files


def test_shipped_manifests_load():
    for name in ("lodopab-ct.yaml", "aapm-mayo-ldct.yaml"):
        m = load_manifest(REPO / "data_manifests" / name)
        assert m.files and m.source["url"].startswith("https://")
        assert set(m.splits) == {"train", "validation", "test"}
    lodopab = load_manifest(REPO / "data_manifests" / "lodopab-ct.yaml")
    assert lodopab.intensity.mu_max == pytest.approx(0.08135858)
    assert "3384092" in lodopab.source["url"]


def test_verify_ok_then_corrupt_and_missing(tmp_path):
    root, files = _dataset(tmp_path)
    path, _ = _manifest(tmp_path, files)
    report = verify_manifest(path, root)
    status = {f.path: f.status for f in report.files}
    assert status == {"a.bin": "ok", "b.bin": "ok", "c.bin": "unverified", "sub/": "ok"}
    assert report.ok and len(report.warnings) == 1
    (root / "b.bin").write_bytes(b"second fila")       # same size, different bytes
    (root / "a.bin").unlink()
    report = verify_manifest(path, root)
    status = {f.path: f.status for f in report.files}
    assert status["b.bin"] == "checksum mismatch" and status["a.bin"] == "missing"
    assert not report.ok and len(report.failures) == 2
    (root / "a.bin").write_bytes(b"short")
    assert verify_manifest(path, root).files[0].status == "size mismatch"


def test_sha256_streaming(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc" * 100_000)
    assert sha256_file(p, chunk_size=7) == hashlib.sha256(b"abc" * 100_000).hexdigest()


def test_invalid_manifests(tmp_path):
    root, files = _dataset(tmp_path)
    path, data = _manifest(tmp_path, files)
    for change, msg in ((lambda d: d.pop("licence"), "licence"),
                        (lambda d: d.update(extra=1), "unknown"),
                        (lambda d: d.update(files=[{"path": "../x"}]), "relative"),
                        (lambda d: d.update(files=[{"path": "x", "sha256": "abc"}]), "sha256"),
                        (lambda d: d.update(files=[{"path": "x"}, {"path": "x"}]), "twice"),
                        (lambda d: d.update(source={"url": "ftp://x"}), "url"),
                        (lambda d: d.update(intensity={"units": "1/mm"}), "mu_max")):
        bad = {k: (list(v) if isinstance(v, list) else v) for k, v in data.items()}
        change(bad)
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=msg):
            load_manifest(p)
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_manifest(tmp_path / "broken.yaml")


def test_cli_exit_codes(tmp_path, capsys):
    root, files = _dataset(tmp_path)
    path, _ = _manifest(tmp_path, files)
    assert main(["data", "verify", str(path), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "no checksum recorded" in out and "c.bin" in out
    (root / "b.bin").write_bytes(b"corrupted!!")
    assert main(["data", "verify", str(path), "--root", str(root)]) == 1
    assert "checksum mismatch" in capsys.readouterr().out
    assert main(["data", "verify", str(path), "--root", str(root), "--quick"]) == 0
    assert main(["data", "verify", str(tmp_path / "nope.yaml"), "--root", str(root)]) == 2
