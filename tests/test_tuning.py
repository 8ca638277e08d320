"""Hyper-parameter tuning: validation split only, tuned files written, loaded and used."""

import argparse
import json

import pytest
import torch
import yaml

from deftmed.errors import ConfigError
from deftmed.evaluation.tuning import candidates, load_tuned, tune, tuned_path
from test_runner import FakeFactory, bench, tiny_protocol

torch.set_num_threads(1)


def test_tune_writes_file_that_the_runner_uses(tmp_path, monkeypatch):
    proto = tiny_protocol(tmp_path)
    splits = []
    real = type(proto).measure

    def spy(self, split, *a, **k):
        splits.append(split)
        return real(self, split, *a, **k)

    monkeypatch.setattr(type(proto), "measure", spy)
    rec = tune(proto, "fake", budget=10, n_val=4, device="cpu", factory=FakeFactory())
    assert set(splits) == {"validation"}  # never the test split
    path = tuned_path(proto, "fake")
    assert path == tmp_path / "protocols" / "tuned" / "tiny32" / "fake.yaml"
    assert rec["path"] == str(path) and path.is_file()

    d = yaml.safe_load(path.read_text())
    assert d["protocol"] == "tiny32" and d["protocol_hash"] == proto.hash() and d["method"] == "fake"
    assert d["search"]["kind"] == "grid" and len(d["log"]) == 4  # defaults + 3 new grid points
    scores = [t["psnr"] for t in d["log"]]
    assert d["objective"]["value"] == pytest.approx(max(scores))
    assert d["objective"]["default_value"] == pytest.approx(scores[0])
    assert d["objective"]["split"] == "validation" and d["objective"]["n_val"] == 4
    assert all("seconds" in t and "settings" in t for t in d["log"])
    assert d["settings"]["scale"] in (0.5, 0.9, 1.0, 1.3) and "jitter" in d["settings"]
    assert d["provenance"]["deftmed_version"] and d["date"]

    loaded = load_tuned(proto, "fake", defaults=FakeFactory.DEFAULTS["fake"])
    assert loaded["settings"] == d["settings"]

    splits.clear()
    out = tmp_path / "res"
    bench(proto, out, methods=["fbp", "fake"], n=2)
    s = json.loads((out / "summary.json").read_text())["methods"]
    assert s["fake"]["settings_source"] == f"tuned:{path}"
    assert s["fake"]["settings"] == d["settings"]
    assert s["fbp"]["settings_source"] == "default"
    assert set(splits) == {"test"}


def test_random_search_budget_and_grid_errors(tmp_path):
    space = {"a": [1, 2, 3, 4], "b": [0.1, 0.2, 0.3]}
    c, kind = candidates(space, {"a": 1, "b": 0.5, "c": "x"}, budget=5, kind="auto", seed=3)
    assert kind == "random" and len(c) == 6 and c[0] == {"a": 1, "b": 0.5, "c": "x"}
    assert len({json.dumps(x, sort_keys=True) for x in c}) == 6
    assert all(x["c"] == "x" for x in c)
    again, _ = candidates(space, {"a": 1, "b": 0.5, "c": "x"}, budget=5, kind="auto", seed=3)
    assert again == c  # seeded
    g, kind = candidates(space, {"a": 1, "b": 0.1}, budget=None)
    assert kind == "grid" and len(g) == 12  # defaults are a grid point: no repeat
    with pytest.raises(ConfigError, match="grid has 12 points but the budget is 5"):
        candidates(space, {}, budget=5, kind="grid")
    with pytest.raises(ConfigError, match="search must be one of"):
        candidates(space, {}, budget=5, kind="bayes")


def test_tune_clear_errors(tmp_path):
    proto = tiny_protocol(tmp_path)
    with pytest.raises(ConfigError, match="unknown method"):
        tune(proto, "nope", device="cpu", factory=FakeFactory())
    with pytest.raises(ConfigError, match="between 1 and the protocol's 6 validation"):
        tune(proto, "fbp", n_val=7, device="cpu", factory=FakeFactory())


def test_bad_tuned_files_are_rejected(tmp_path):
    proto = tiny_protocol(tmp_path)
    path = tuned_path(proto, "fbp")
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump({"protocol": "tiny32", "protocol_hash": "0" * 16,
                                    "method": "fbp", "settings": {"frequency_scaling": 0.5}}))
    with pytest.raises(ConfigError, match="re-run `deftmed tune"):
        load_tuned(proto, "fbp")
    with pytest.raises(ConfigError, match="hash"):
        bench(proto, tmp_path / "r", methods=["fbp"], n=2)
    path.write_text(yaml.safe_dump({"protocol_hash": proto.hash(), "settings": {"bogus": 1}}))
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['bogus'\]"):
        bench(proto, tmp_path / "r", methods=["fbp"], n=2)
    path.write_text("settings: [1, 2]\n")
    with pytest.raises(ConfigError, match="needs a 'settings' mapping"):
        load_tuned(proto, "fbp")
    path.write_text("settings: {a: [1, 2}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_tuned(proto, "fbp")
    assert load_tuned(proto, "fake") is None


def test_cli_tune_with_registry(tmp_path, capsys):
    registry = pytest.importorskip("deftmed.methods.registry")
    from deftmed.cli import bench_cmd

    proto = tiny_protocol(tmp_path)
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["tune", "--protocol", str(proto.source), "--method", "fbp",
                              "--budget", "3", "--n-val", "2", "--device", "cpu",
                              "--no-progress"])
    assert args.func(args) == 0
    assert "wrote" in capsys.readouterr().out
    d = load_tuned(proto, "fbp", defaults=registry.default_settings("fbp"))
    assert d["search"]["kind"] == "random" and len(d["log"]) == 4


def test_tune_with_an_explicit_space(tmp_path):
    proto = tiny_protocol(tmp_path)
    rec = tune(proto, "fake", budget=None, n_val=2, device="cpu", factory=FakeFactory(),
               space={"scale": [0.8, 1.1]}, write=False)
    assert rec["search"]["space"] == {"scale": [0.8, 1.1]}
    assert [t["settings"]["scale"] for t in rec["log"]] == [1.0, 0.8, 1.1]  # defaults first
    with pytest.raises(ConfigError, match="non-empty list"):
        tune(proto, "fake", n_val=2, device="cpu", factory=FakeFactory(), space={"scale": 2.0},
             write=False)
