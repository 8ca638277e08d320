"""Benchmark reports: self-contained HTML with tables and inlined figures; caveats flagged."""

import argparse
import json

import pytest
import torch

from deftmed.errors import ConfigError
from deftmed.evaluation.metrics import METRIC_CONVENTIONS
from deftmed.evaluation.report import pareto_front, write_report
from test_runner import bench, tiny_protocol

torch.set_num_threads(1)


def test_html_report_is_self_contained(tmp_path):
    proto = tiny_protocol(tmp_path)
    out = tmp_path / "res"
    bench(proto, out, n=4, keep=2)
    paths = write_report(out)
    text = paths["html"].read_text()
    assert paths["html"] == out / "report.html"
    assert "<table" in text and text.count("data:image/png;base64,") == 4
    assert 'src="http' not in text and "<link" not in text and "<script" not in text
    assert "tiny32" in text and proto.hash() in text and "fbp" in text and "fake" in text
    assert METRIC_CONVENTIONS.splitlines()[1][:40] in text
    assert "Student t" in text and "Pareto" in text
    md = paths["markdown"].read_text()
    assert "| method | n |" in md and "![qualitative](figures/qualitative.png)" in md
    for f in paths["figures"]:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Comparison caveats" not in md


def test_fewer_images_are_flagged_and_cli(tmp_path):
    from deftmed.cli import bench_cmd

    proto = tiny_protocol(tmp_path)
    out = tmp_path / "res"
    bench(proto, out, methods=["fake"], n=4)
    bench(proto, out, methods=["fbp"], n=2)
    s = json.loads((out / "summary.json").read_text())
    assert s["n_requested"] == 4 and s["n_common"] == 2 and not s["complete"]
    assert s["methods"]["fbp"]["n"] == 2 and s["methods"]["fake"]["n"] == 4

    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    html_out = tmp_path / "page.html"
    args = parser.parse_args(["report", str(out), "--out", str(html_out)])
    assert args.func(args) == 0
    text = html_out.read_text()
    assert "fbp has 2 of the 4 requested images" in text
    assert "different numbers of images" in text and "<table" in text
    assert "data:image/png;base64," in text


def test_report_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a deftmed results folder"):
        write_report(tmp_path / "empty")


def test_pareto_front():
    pts = [("a", 1.0, 20.0), ("b", 10.0, 25.0), ("c", 5.0, 19.0), ("d", 100.0, 24.0),
           ("e", 50.0, 30.0)]
    assert pareto_front(pts) == ["a", "b", "e"]


def test_cli_bench_with_registry(tmp_path, capsys):
    pytest.importorskip("deftmed.methods.registry")
    from deftmed.cli import bench_cmd

    proto = tiny_protocol(tmp_path)
    parser = argparse.ArgumentParser()
    bench_cmd.register(parser.add_subparsers())
    out = tmp_path / "cli"
    argv = ["bench", "--protocol", str(proto.source), "--methods", "fbp,tv", "--n", "2",
            "--out", str(out), "--device", "cpu", "--no-progress", "--set", "tv.iterations=10",
            "--set", "fbp.frequency_scaling=0.8"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "report:" in capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["methods"]["tv"]["settings"]["iterations"] == 10
    assert s["methods"]["fbp"]["settings"]["frequency_scaling"] == 0.8
    assert (out / "report.html").is_file()
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "0 new rows, 4 already done" in capsys.readouterr().out
