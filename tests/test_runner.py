"""Benchmark runner: rows, resume after a kill, sharding, summary, clear errors."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from deftmed.errors import ConfigError
from deftmed.evaluation.protocol import Protocol
from deftmed.evaluation.runner import (CSV_COLUMNS, METRIC_COLUMNS, OPTIONAL_METRICS,
                                       MethodFactory, describe, load_recons, read_rows,
                                       run_benchmark)
from deftmed.methods.base import Reconstruction, Reconstructor
from deftmed.methods.fbp import FBPReconstructor

torch.set_num_threads(1)


# --- a tiny protocol and a cheap fake method (shared pattern with test_report/test_tuning) ---
def tiny_protocol(tmp_path, **changes) -> Protocol:
    (tmp_path / "protocols").mkdir(parents=True, exist_ok=True)
    (tmp_path / "geometries").mkdir(exist_ok=True)
    (tmp_path / "geometries" / "par32.yaml").write_text(yaml.safe_dump(dict(
        name="par32", description="tiny parallel", kind="parallel", image_size=32,
        pixel_spacing=8.0, n_angles=16, angle_range=[0.0, 180.0], n_detector=47,
        detector_spacing=8.0)))
    d = dict(name="tiny32", description="tiny test protocol: 32x32 ellipses, 16 views",
             dataset=dict(kind="ellipses", image_size=32, simulation_size=64), geometry="par32",
             noise=dict(type="gaussian", relative=0.025), splits=dict(validation=6, test=8),
             metrics=dict(data_range=1.0), seeds=dict(noise=7, sampling=0))
    d.update(changes)
    path = tmp_path / "protocols" / "tiny32.yaml"
    path.write_text(yaml.safe_dump(d))
    return Protocol.load(path)


class FakeReconstructor(Reconstructor):
    """FBP scaled by a factor plus seeded noise: cheap, stochastic, reports nfe and std."""

    name = "fake"

    def __init__(self, scale=1.0, jitter=0.01):
        self.scale, self.jitter = float(scale), float(jitter)

    def settings(self):
        return {"scale": self.scale, "jitter": self.jitter}

    def _reconstruct(self, y, operator, noise, generator):
        x = operator.fbp(y, "Hann", 1.0) * self.scale
        x = x + self.jitter * torch.randn(x.shape, generator=generator)
        return Reconstruction(x, std=torch.full_like(x, self.jitter), nfe=3)


class FakeFactory(MethodFactory):
    DEFAULTS = {"fbp": {"filter_type": "Hann", "frequency_scaling": 1.0},
                "fake": {"scale": 1.0, "jitter": 0.01}}
    SPACES = {"fbp": {"filter_type": ["Ram-Lak", "Hann"], "frequency_scaling": [0.5, 1.0]},
              "fake": {"scale": [0.5, 0.9, 1.0, 1.3]}}

    def names(self):
        return list(self.DEFAULTS)

    def default_settings(self, name):
        return dict(self.DEFAULTS[name])

    def search_space(self, name):
        return dict(self.SPACES[name])

    def build(self, name, settings, protocol, device):
        return FBPReconstructor(**settings) if name == "fbp" else FakeReconstructor(**settings)


def bench(proto, out, methods=("fbp", "fake"), n=6, **kw):
    kw.setdefault("batch_size", 2)
    return run_benchmark(proto, list(methods), n, out, torch.device("cpu"),
                         factory=kw.pop("factory", FakeFactory()), **kw)


def csv_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --- tests ------------------------------------------------------------------------------------
def test_rows_summary_and_recons(tmp_path):
    proto = tiny_protocol(tmp_path)
    out = tmp_path / "res"
    res = bench(proto, out, keep=3)
    assert res.rows_written == 12 and res.rows_skipped == 0
    rows = csv_rows(out / "per_image.csv")
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["method"], int(r["index"])) for r in rows] == \
        [("fbp", i) for i in range(6)] + [("fake", i) for i in range(6)]
    r = rows[0]
    assert r["protocol_hash"] == proto.hash() and r["protocol"] == "tiny32"
    assert r["deftmed_version"] and r["device"].startswith("cpu")
    assert float(r["psnr"]) > 15 and 0 < float(r["ssim"]) <= 1
    assert np.isfinite(float(r["psnr_image"])) and 0 < float(r["ssim_image"]) <= 1
    assert 0 < float(r["data_misfit"]) < 1 and float(r["peak_memory_mb"]) > 0
    assert r["memory_kind"] == "process_peak_rss"
    assert {int(x["nfe"]) for x in rows if x["method"] == "fake"} == {3}

    s = json.loads((out / "summary.json").read_text())
    for key in ("protocol", "provenance", "device", "seeds", "date", "ci_method",
                "metric_conventions", "n_requested", "n_common", "complete", "methods"):
        assert key in s
    assert s["protocol"]["hash"] == proto.hash() and s["complete"] and s["n_common"] == 6
    assert "deftmed_version" in s["provenance"] and "git_commit" in s["provenance"]
    fbp = s["methods"]["fbp"]
    assert fbp["n"] == 6 and fbp["settings_source"] == "default"
    assert fbp["settings"] == FakeFactory.DEFAULTS["fbp"]
    assert set(fbp["metrics"]) == set(METRIC_COLUMNS) - set(OPTIONAL_METRICS)  # no metrics.hu
    p = fbp["metrics"]["psnr"]
    assert p["ci95"][0] < p["mean"] < p["ci95"][1]
    vals = [float(x["psnr"]) for x in rows if x["method"] == "fbp"]
    assert p["mean"] == pytest.approx(np.mean(vals)) and p["std"] == pytest.approx(np.std(vals, ddof=1))

    truth, recons = load_recons(out)
    assert list(truth["index"]) == [0, 1, 2] and truth["image"].shape == (3, 1, 32, 32)
    assert set(recons) == {"fbp", "fake"} and "std" in recons["fake"]
    assert recons["fbp"]["meta"]["protocol_hash"] == proto.hash()
    # the saved reconstruction matches its CSV row
    from deftmed.evaluation.metrics import psnr
    assert psnr(recons["fbp"]["image"][1], truth["image"][1])[0] == pytest.approx(vals[1], abs=1e-4)


def test_resume_after_kill_no_duplicates_no_losses(tmp_path):
    proto = tiny_protocol(tmp_path)
    ref = tmp_path / "ref"
    bench(proto, ref)

    out = tmp_path / "killed"
    calls = []

    def kill(method, idx):
        calls.append((method, idx))
        if method == "fake" and len([c for c in calls if c[0] == "fake"]) == 2:
            raise KeyboardInterrupt  # killed after the second fake batch was written

    with pytest.raises(KeyboardInterrupt):
        bench(proto, out, on_batch=kill)
    partial = csv_rows(out / "per_image.csv")
    assert len(partial) == 6 + 4
    # a torn half-written line, as a kill during the write would leave
    with open(out / "per_image.csv", "a") as fh:
        fh.write("fake,4,12.3")
    res = bench(proto, out)
    assert res.rows_skipped == 10 and res.rows_written == 2
    rows = csv_rows(out / "per_image.csv")
    keys = [(r["method"], int(r["index"])) for r in rows]
    assert len(keys) == len(set(keys)) == 12
    # identical numbers to the uninterrupted run (per-image simulation, per-batch seeds)
    want = {(r["method"], int(r["index"])): float(r["psnr"]) for r in csv_rows(ref / "per_image.csv")}
    got = {(r["method"], int(r["index"])): float(r["psnr"]) for r in rows}
    assert got == pytest.approx(want)
    # a third run does nothing and still has 12 rows
    assert bench(proto, out).rows_written == 0
    assert len(csv_rows(out / "per_image.csv")) == 12
    # extending n only adds the new images
    assert bench(proto, out, n=8).rows_written == 4
    assert len(read_rows(out)) == 16 and json.loads((out / "summary.json").read_text())["n_requested"] == 8


def test_sharded_ranks_merge(tmp_path, monkeypatch):
    """Two ranks (run one after the other, barrier stubbed) shard i % 2 and rank 0 merges."""
    import deftmed.distributed as D

    monkeypatch.setattr(D, "barrier", lambda info: None)
    proto = tiny_protocol(tmp_path)
    out = tmp_path / "shard"
    r1 = bench(proto, out, dist=D.DistInfo(rank=1, world_size=2))
    assert r1.rows_written == 6
    rank1 = csv_rows(out / "per_image.rank1.csv")
    assert sorted({int(r["index"]) for r in rank1}) == [1, 3, 5]
    assert not (out / "per_image.csv").exists() or not csv_rows(out / "per_image.csv")
    bench(proto, out, dist=D.DistInfo(rank=0, world_size=2))
    assert not list(out.glob("per_image.rank*.csv"))
    rows = csv_rows(out / "per_image.csv")
    assert [(r["method"], int(r["index"])) for r in rows] == \
        [("fbp", i) for i in range(6)] + [("fake", i) for i in range(6)]
    assert {r["rank"] for r in rows} == {"0", "1"}
    # the same images as a single-process run
    ref = tmp_path / "ref"
    bench(proto, ref)
    want = {(r["method"], r["index"]): float(r["psnr"]) for r in csv_rows(ref / "per_image.csv")
            if r["method"] == "fbp"}
    got = {(r["method"], r["index"]): float(r["psnr"]) for r in rows if r["method"] == "fbp"}
    assert got == pytest.approx(want)


def test_unknown_method_and_bad_arguments(tmp_path):
    proto = tiny_protocol(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown method\(s\) \['nope'\].*fbp, fake"):
        bench(proto, tmp_path / "a", methods=["fbp", "nope"])
    with pytest.raises(ConfigError, match="more than once"):
        bench(proto, tmp_path / "a", methods=["fbp", "fbp"])
    with pytest.raises(ConfigError, match="between 1 and the protocol's 8 test images"):
        bench(proto, tmp_path / "a", n=9)
    with pytest.raises(ConfigError, match="unknown key"):
        bench(proto, tmp_path / "a", settings_override={"fbp": {"bogus": 1}})


def test_protocol_missing_field_is_clear(tmp_path):
    tiny_protocol(tmp_path)
    d = yaml.safe_load((tmp_path / "protocols" / "tiny32.yaml").read_text())
    del d["noise"]
    bad = tmp_path / "protocols" / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"missing field\(s\) \['noise'\]"):
        run_benchmark(str(bad), ["fbp"], 2, tmp_path / "x", "cpu", factory=FakeFactory())


def test_resume_refuses_other_settings_or_protocol(tmp_path):
    proto = tiny_protocol(tmp_path)
    out = tmp_path / "res"
    bench(proto, out, methods=["fbp"], n=2)
    with pytest.raises(ConfigError, match="other settings"):
        bench(proto, out, methods=["fbp"], n=2,
              settings_override={"fbp": {"frequency_scaling": 0.5}})
    other = tiny_protocol(tmp_path / "o", seeds=dict(noise=8, sampling=0))
    with pytest.raises(ConfigError, match="protocol hash"):
        bench(other, out, methods=["fbp"], n=2)
    # an override is recorded as such
    res2 = tmp_path / "res2"
    bench(proto, res2, methods=["fbp"], n=2, settings_override={"fbp": {"frequency_scaling": 0.5}})
    m = json.loads((res2 / "summary.json").read_text())["methods"]["fbp"]
    assert m["settings_source"] == "default+override" and m["settings"]["frequency_scaling"] == 0.5


def test_replace_recomputes_only_that_method(tmp_path):
    proto = tiny_protocol(tmp_path)
    out = tmp_path / "res"
    bench(proto, out, n=3, keep=2)
    before = {(r["method"], r["index"]): r for r in read_rows(out)}
    res = bench(proto, out, n=3, keep=2, replace=["fbp"],
                settings_override={"fbp": {"frequency_scaling": 0.5}})
    assert res.rows_written == 3 and res.rows_skipped == 3
    after = {(r["method"], r["index"]): r for r in read_rows(out)}
    assert len(after) == 6
    assert all(after[("fake", i)] == before[("fake", i)] for i in range(3))
    assert all(after[("fbp", i)]["settings_id"] != before[("fbp", i)]["settings_id"]
               for i in range(3))
    _, recons = load_recons(out)
    assert recons["fbp"]["image"].shape[0] == 2
    with pytest.raises(ConfigError, match="unknown method"):
        bench(proto, out, n=3, replace=["nope"])


def test_hu_metrics_rows_and_summary(tmp_path):
    proto = tiny_protocol(tmp_path, dataset=dict(kind="anatomy", image_size=32, simulation_size=64),
                          metrics=dict(data_range=1.0, hu={"window": [-1000, 1000]}))
    out = tmp_path / "res"
    bench(proto, out, methods=["fbp"], n=2)
    rows = read_rows(out)
    assert all(np.isfinite(float(r[c])) for r in rows for c in OPTIONAL_METRICS)
    assert all(float(r["mae_body_hu"]) > 0 for r in rows)
    s = json.loads((out / "summary.json").read_text())
    assert set(OPTIONAL_METRICS) <= set(s["methods"]["fbp"]["metrics"])
    with pytest.raises(ConfigError, match="metrics.hu.window"):
        tiny_protocol(tmp_path / "b", metrics=dict(data_range=1.0, hu={"window": [10, -10]}))
    with pytest.raises(ConfigError, match="unknown key"):
        tiny_protocol(tmp_path / "c", metrics=dict(data_range=1.0, hu={"windw": [0, 1]}))


def test_describe_t_interval():
    d = describe([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert d["n"] == 4 and d["n_nonfinite"] == 1 and d["mean"] == 2.5
    from scipy import stats
    half = stats.t.ppf(0.975, 3) * np.std([1, 2, 3, 4], ddof=1) / 2
    assert d["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
    assert describe([])["mean"] is None


def test_registry_methods_when_available(tmp_path):
    """The real registry (FBP and TV) through the default factory."""
    registry = pytest.importorskip("deftmed.methods.registry")
    proto = tiny_protocol(tmp_path)
    methods = [m for m in ("fbp", "tv") if m in registry.METHODS]
    out = tmp_path / "reg"
    run_benchmark(proto, methods, 2, out, torch.device("cpu"), batch_size=2,
                  settings_override={"tv": {"iterations": 20}} if "tv" in methods and
                  "iterations" in registry.default_settings("tv") else None)
    s = json.loads((out / "summary.json").read_text())
    assert set(s["methods"]) == set(methods)
    with pytest.raises(ConfigError, match="unknown method"):
        run_benchmark(proto, ["nope"], 2, out, torch.device("cpu"))
