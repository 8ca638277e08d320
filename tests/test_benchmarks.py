"""The benchmark runner and its sections, on tiny configurations (no timing claims here)."""

from __future__ import annotations

import pytest
import torch

from deftmed.errors import CheckpointError, ConfigError
from deftmed.evaluation import bench_physics, bench_prior, benchmarks


@pytest.fixture
def fake_registry(monkeypatch):
    calls = []

    def alpha(quick):
        calls.append(("alpha", quick))
        return f"alpha body quick={quick}"

    def beta(quick, out_dir):
        calls.append(("beta", out_dir))
        (out_dir / "beta.png").write_bytes(b"png")
        return "beta body"

    def broken(quick):
        raise RuntimeError("boom")

    monkeypatch.setattr(benchmarks, "SECTIONS", {
        "alpha": alpha, "beta": beta,
        "ghost": "deftmed.evaluation.bench_does_not_exist:section",
        "broken": broken})
    return calls


def _order(text, names):
    return [text.index(f"deftmed-bench-fragment: {n} -->") for n in names]


def test_runner_writes_fragments_and_assembles_in_order(tmp_path, fake_registry):
    out, frag = tmp_path / "BENCHMARKS.md", tmp_path / "benchmarks"
    rc = benchmarks.main(["--sections", "beta,alpha,ghost", "--out", str(out), "--quick"])
    assert rc == 0
    assert (frag / "alpha.md").is_file() and (frag / "beta.md").is_file()
    assert not (frag / "ghost.md").exists()
    assert ("beta", frag) in fake_registry and ("alpha", True) in fake_registry
    text = out.read_text()
    pos = _order(text, ["alpha", "beta", "ghost", "broken"])
    assert pos == sorted(pos)  # registry order, not command-line order
    assert "alpha body quick=True" in text and "beta body" in text
    assert "make bench SECTIONS=physics" in text  # how to regenerate
    assert "does not exist yet" in text  # the skipped section says why
    for fact in ("- command: `", "- date: ", "- git commit: ", "- CPU: ", "torch threads",
                 "odl ", "astra ", "monai "):
        assert fact in text

    # re-running one section keeps the others; a failing section keeps its old fragment
    (frag / "alpha.md").write_text("<!-- deftmed-bench-fragment: alpha -->\n## old alpha\n")
    rc = benchmarks.main(["--sections", "beta,broken", "--out", str(out)])
    assert rc == 1
    text = out.read_text()
    assert "old alpha" in text and "beta body" in text
    assert "last run failed" in text and "boom" in text


def test_unknown_section_is_a_clear_error(tmp_path, fake_registry, capsys):
    with pytest.raises(SystemExit):
        benchmarks.main(["--sections", "alpha,nope", "--out", str(tmp_path / "B.md")])
    err = capsys.readouterr().err
    assert "unknown benchmark section" in err and "'nope'" in err and "alpha" in err
    with pytest.raises(ConfigError, match="unknown benchmark section 'nope'"):
        benchmarks.run_sections(["nope"], tmp_path)
    assert not (tmp_path / "B.md").exists()


def test_default_registry_is_lazy_and_extensible(monkeypatch):
    assert set(benchmarks.SECTIONS) >= {"physics", "prior", "deft", "methods"}
    assert all(isinstance(v, str) for v in benchmarks.SECTIONS.values())
    assert benchmarks.resolve_section("physics") is bench_physics.section
    monkeypatch.setattr(benchmarks, "SECTIONS", dict(benchmarks.SECTIONS))
    benchmarks.register_section("extra", "deftmed.evaluation.bench_physics:section", "Extra")
    assert benchmarks.resolve_section("extra") is bench_physics.section


def test_physics_section_tiny(monkeypatch):
    monkeypatch.setattr(bench_physics, "PARALLEL_SIZES", (16,))
    monkeypatch.setattr(bench_physics, "PARALLEL_VIEWS", (4,))
    monkeypatch.setattr(bench_physics, "BATCHES", (1, 2))
    monkeypatch.setattr(bench_physics, "FAN", ((16, 6),))
    monkeypatch.setattr(bench_physics, "REPEATS", (1, 1))
    monkeypatch.setattr(bench_physics, "MIN_REPEATS", 1)
    monkeypatch.setattr(bench_physics, "N_PHANTOMS", 1)
    text = bench_physics.section(quick=True)
    assert "parallel16-4" in text and "fan16-6" in text
    assert text.count("\n| parallel16-4") == 2 and text.count("\n| fan16-6") == 2
    assert "the adjoint is exact" in text


def test_geometry_conventions_match_shipped_files():
    from pathlib import Path

    from deftmed.physics.geometry import ScanGeometry

    root = Path(__file__).resolve().parents[1] / "geometries"
    for mine, name in ((bench_physics.parallel_geometry(64, 20), "parallel64-20.yaml"),
                       (bench_physics.fan_geometry(64, 24), "fan64-24.yaml")):
        shipped = ScanGeometry.from_yaml(root / name)
        assert mine.fingerprint() == shipped.fingerprint()


def _tiny_prior_file(path):
    from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
    from deftmed.diffusion.unet import UNetConfig

    torch.manual_seed(0)
    spec = PriorSpec(unet=UNetConfig(channels=(8, 16), attention_levels=(False, True),
                                     norm_num_groups=8, num_head_channels=8), image_size=16,
                     data={"source": "phantom", "kind": "ellipses", "split": "train"})
    DiffusionPrior(spec).save(path, {"training": {"step": 3, "command": "deftmed train-prior ...",
                                                  "config": {"steps": 10, "batch_size": 4}}})


def test_prior_section_tiny(tmp_path, monkeypatch):
    ckpt = tmp_path / "run" / "prior.safetensors"
    ckpt.parent.mkdir()
    _tiny_prior_file(ckpt)
    # a log with a resumed segment: wall time = 20 + 15 s
    (ckpt.parent / "log.csv").write_text(
        "step,loss,lr,images_per_s,seconds,extra\n1,0.9,1e-4,10.0,10.0,\n2,0.8,1e-4,12.0,20.0,\n"
        "3,0.7,1e-4,14.0,15.0,\n")
    monkeypatch.delenv("DEFTMED_BENCH_PRIOR", raising=False)
    import deftmed.shipped
    monkeypatch.setattr(deftmed.shipped, "resolve_checkpoint", lambda name: ckpt)
    for attr, value in (("N_DENOISE", (4, 4)), ("N_SAMPLES", (4, 4)), ("SAMPLE_STEPS", (3, 3)),
                        ("TRAIN_STEPS", (1, 1)), ("TRAIN_BATCH", 2), ("SAMPLE_BATCH", 2),
                        ("GRID_IMAGES", 4)):
        monkeypatch.setattr(bench_prior, attr, value)
    text = bench_prior.section(quick=True, out_dir=tmp_path / "benchmarks")
    assert (tmp_path / "benchmarks" / "prior_samples.png").stat().st_size > 0
    assert "benchmarks/prior_samples.png" in text
    for t in bench_prior.TIMESTEPS:
        assert f"\n| {t} |" in text
    assert "Where the samples differ from the data" in text
    assert "images/s" in text and "s/image at batch 1" in text
    assert "step **3** of 10" in text and "3 steps logged" in text and "2 run segment" in text
    assert "Torch threads" in text


def test_prior_section_missing_weights(monkeypatch):
    import deftmed.shipped

    def missing(name):
        raise CheckpointError("shipped weights 'prior-ellipses64' are not installed")

    monkeypatch.delenv("DEFTMED_BENCH_PRIOR", raising=False)
    monkeypatch.setattr(deftmed.shipped, "resolve_checkpoint", missing)
    text = bench_prior.section(quick=True)
    assert "Not measured" in text and "make weights" in text


def test_stat_helpers():
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((8, 16, 16))
    assert bench_prior.raps_distance(bench_prior.raps(a), bench_prior.raps(a)) == 0.0
    assert bench_prior.wasserstein1(a, a + 0.1) == pytest.approx(0.1)
    assert bench_prior.z_score(np.zeros(4), np.zeros(4)) == 0.0
    assert set(bench_prior.band_ratios(bench_prior.raps(a), bench_prior.raps(a))) == \
        {"low", "mid", "high"}
