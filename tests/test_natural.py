"""Natural-image tasks: colour crops, image-operator protocols, and every method on image
operators (DEFT with mask/HIO conditioning, DPS, RED-diff, DDRM, direct) at tiny sizes."""

import numpy as np
import pytest
import torch
import yaml

from _tiny_prior import tiny_prior
from deftmed.data.datasets import open_images
from deftmed.data.natural import NATURAL_SPLITS, natural_crop
from deftmed.deft.finetune import finetune
from deftmed.deft.hnet import HNetConfig
from deftmed.deft.model import DeftModel
from deftmed.errors import ConfigError, GeometryError
from deftmed.evaluation.metrics import psnr
from deftmed.evaluation.protocol import Protocol
from deftmed.methods.registry import build_method
from deftmed.physics.imaging import (HDR, GaussianBlur, Inpainting, NonlinearBlur, PhaseRetrieval,
                                     RandomMaskOperator, SuperResolution)
from deftmed.physics.noise import GaussianNoise
from deftmed.training import TrainConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def prior():
    return tiny_prior()


def ellipse_batch(n=4, split="test"):
    return open_images("ellipses", split, 32).tensor(list(range(n)))


# --- data -----------------------------------------------------------------------------------
def test_natural_crops_split_by_source_image():
    names = [set(v) for v in NATURAL_SPLITS.values()]
    assert all(not (a & b) for i, a in enumerate(names) for b in names[i + 1:])
    assert {n.split(":")[0] for n in NATURAL_SPLITS["train"]}.isdisjoint(
        NATURAL_SPLITS["test"] + NATURAL_SPLITS["validation"])
    a = natural_crop("test", 3, 32)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, natural_crop("test", 3, 32))
    assert not np.array_equal(a, natural_crop("test", 4, 32))
    src = open_images("natural", "train", 16)
    assert src.channels == 3 and src.tensor([0, 5]).shape == (2, 3, 16, 16)
    with pytest.raises(ConfigError, match="unknown split"):
        natural_crop("holdout", 0, 16)


# --- protocols with an operator -------------------------------------------------------------
def natural_protocol(tmp_path, operator, **changes):
    d = dict(name="nat16", description="tiny natural", operator=operator,
             dataset=dict(kind="natural", image_size=16), noise=dict(type="gaussian", sigma=0.01),
             splits=dict(validation=4, test=4), metrics=dict(data_range=1.0),
             seeds=dict(noise=3, sampling=0))
    d.update(changes)
    path = tmp_path / "nat16.yaml"
    path.write_text(yaml.safe_dump(d))
    return Protocol.load(path)


def test_operator_protocol_measures_reproducibly(tmp_path):
    proto = natural_protocol(tmp_path, {"type": "random_inpainting", "kind": "box", "frac": 0.25})
    assert not proto.is_ct and len(proto.hash()) == 16
    op, sim = proto.operators()
    assert isinstance(op, RandomMaskOperator) and sim is None and op.size == (16, 16)
    x, y, op_b = proto.measure("test", [0, 1, 2])
    assert x.shape == y.shape == (3, 3, 16, 16) and op_b.mask.shape == (3, 1, 16, 16)
    # image 2 gets the same mask and noise whatever batch it is measured in
    _, y2, op2 = proto.measure("test", [2])
    torch.testing.assert_close(y2[0], y[2])
    torch.testing.assert_close(op2.mask[0], op_b.mask[2])
    assert not torch.equal(op_b.mask[0], op_b.mask[1])
    with pytest.raises(ConfigError, match="exactly one of 'geometry'"):
        natural_protocol(tmp_path, {"type": "hdr"}, geometry="parallel64-20")
    with pytest.raises(ConfigError, match="unknown imaging operator"):
        natural_protocol(tmp_path, {"type": "deblur"})
    with pytest.raises(ConfigError, match="not a CT scanner geometry"):
        proto.geometry()


def test_every_shipped_protocol_loads():
    from deftmed.evaluation.protocol import REPO_ROOT
    names = sorted(p.stem for p in (REPO_ROOT / "protocols").glob("*.yaml"))
    assert {"ellipses64-sv20", "ellipses128-sv30", "fan64-sv24", "lodopab256-sv60",
            "aapm256-sv60", "anatomy64-sv20"} <= set(names)
    for name in names:
        p = Protocol.load(name)
        assert p.name == name and len(p.hash()) == 16 and p.weights.get("prior")


def test_shipped_natural_protocols_load():
    for name in ("natural64-inpaint", "natural64-sr4", "natural64-hdr", "natural64-phase",
                 "natural64-nlblur"):
        p = Protocol.load(name)
        assert not p.is_ct and p.image_size == 64 and p.dataset["kind"] == "natural"
        assert p.weights["prior"] == "prior-natural64"


# --- methods on image operators (1-channel tiny ellipse prior: cheap and trained) -----------
OPERATORS = {
    "inpainting": lambda: Inpainting(RandomMaskOperator("box", 32, frac=0.3).sample_mask(2, 0)),
    "sr_block": lambda: SuperResolution(4, "block"),
    "sr_bicubic": lambda: SuperResolution(4, "bicubic"),
    "blur": lambda: GaussianBlur(1.5, 9),
    "hdr": lambda: HDR(),
    "phase": lambda: PhaseRetrieval(2),
    "nlblur": lambda: NonlinearBlur(1.5, 9),
}
SVD_OPS = ("inpainting", "sr_block", "sr_bicubic")
LINEAR_OPS = ("inpainting", "sr_block", "sr_bicubic", "blur")


@pytest.mark.parametrize("op_name", sorted(OPERATORS))
def test_every_method_runs_on_every_operator(op_name, prior):
    op = OPERATORS[op_name]()
    noise = GaussianNoise(sigma=0.01)
    x = ellipse_batch(2)
    y = noise.sample(op(x), torch.Generator().manual_seed(0))
    settings = {"dps": {"steps": 4}, "reddiff": {"steps": 4}, "dds": {"steps": 4},
                "ddrm": {"steps": 4}, "tv": {"iterations": 5}, "direct": {}}
    for name, s in settings.items():
        method = build_method(name, s, prior=prior)
        if (name == "ddrm" and op_name not in SVD_OPS) or \
                (name in ("dds", "tv") and op_name not in LINEAR_OPS):
            with pytest.raises(ConfigError, match=name):
                method.reconstruct(y, op, noise, torch.Generator().manual_seed(0))
            continue
        rec = method.reconstruct(y, op, noise, torch.Generator().manual_seed(0))
        assert rec.image.shape == x.shape and torch.isfinite(rec.image).all(), name
    with pytest.raises(ConfigError, match="direct"):
        build_method("fbp").reconstruct(y, op, noise)


def test_ddrm_beats_its_initialisation_and_keeps_observed_pixels(prior):
    op = Inpainting(RandomMaskOperator("box", 32, frac=0.3).sample_mask(4, 1))
    x = ellipse_batch(4)
    noise = GaussianNoise(sigma=0.001)
    y = noise.sample(op(x), torch.Generator().manual_seed(0))
    rec = build_method("ddrm", {"steps": 20}, prior=prior).reconstruct(
        y, op, noise, torch.Generator().manual_seed(0)).image
    init = build_method("direct").reconstruct(y, op, noise).image
    assert psnr(rec, x).mean() > psnr(init, x).mean() + 1.0
    m = op.mask.bool().expand_as(x)
    assert (rec[m] - x[m]).abs().max() < 0.05  # observed pixels follow the data


def _finetune_inpainting(tmp_path, family, noise, prior, steps, lr):
    out = tmp_path / f"h{steps}.safetensors"
    finetune(prior, family, noise, open_images("ellipses", "train", 32),
             HNetConfig(channels=(8, 16), attention_levels=(False, False)),
             TrainConfig(steps=steps, batch_size=8, lr=lr, warmup_steps=0, ema_decay=0.0,
                         progress=False, checkpoint_every=steps, seed=0), out, torch.device("cpu"))
    return DeftModel.load(out)


def test_deft_on_amortised_inpainting(tmp_path, prior):
    family = RandomMaskOperator("box", 32, frac=0.3)
    noise = GaussianNoise(sigma=0.01)
    model = _finetune_inpainting(tmp_path, family, noise, prior, 200, 2e-3)
    untrained = _finetune_inpainting(tmp_path, family, noise, prior, 1, 1e-12)  # guidance only
    assert model.hnet.cfg.cond_channels == 1 and model.binding.operator["type"] == "random_inpainting"
    op = family.sample(8, 5)
    x = ellipse_batch(8)
    y = noise.sample(op(x), torch.Generator().manual_seed(1))
    deft = build_method("deft", {"steps": 20}, prior=prior, deft_model=model)
    rec = deft.reconstruct(y, op, noise, torch.Generator().manual_seed(0))
    base = build_method("deft", {"steps": 20}, prior=prior, deft_model=untrained).reconstruct(
        y, op, noise, torch.Generator().manual_seed(0))
    assert rec.image.shape == x.shape
    assert psnr(rec.image, x).mean() > psnr(base.image, x).mean() + 1.0  # fine-tuning helps
    # posterior samples repeat each image's own mask
    mean = build_method("deft-mean", {"steps": 5, "samples": 2}, prior=prior, deft_model=model)
    assert mean.reconstruct(y, op, noise, torch.Generator().manual_seed(0)).std.shape == x.shape
    # the h of inpainting refuses other operators and CT
    with pytest.raises(GeometryError, match="fine-tuned for the operator"):
        deft.reconstruct(SuperResolution(4, "block")(x), SuperResolution(4, "block"), noise)
    with pytest.raises(GeometryError, match="fine-tuned for the operator"):
        deft.reconstruct(y[:, :, :16, :16], Inpainting(torch.ones(16, 16)), noise)
    with pytest.raises(GeometryError, match="image operator"):
        model.check_compatible(geometry=Protocol.load("ellipses64-sv20").geometry())


def test_phase_retrieval_h_gets_the_hio_channel(tmp_path, prior):
    op, noise = PhaseRetrieval(2), GaussianNoise(sigma=0.01)
    out = tmp_path / "h.safetensors"
    finetune(prior, op, noise, open_images("ellipses", "train", 32),
             HNetConfig(channels=(8, 16), attention_levels=(False, False)),
             TrainConfig(steps=2, batch_size=2, warmup_steps=0, ema_decay=0.0, progress=False,
                         checkpoint_every=2), out, torch.device("cpu"))
    model = DeftModel.load(out)
    assert model.hnet.cfg.cond_channels == 1  # one image channel -> one HIO channel
    x = ellipse_batch(2)
    rec = build_method("deft", {"steps": 3}, prior=prior, deft_model=model).reconstruct(
        op(x), op, noise, torch.Generator().manual_seed(0))
    assert torch.isfinite(rec.image).all()
    with pytest.raises(GeometryError):
        build_method("deft", {"steps": 3}, prior=prior, deft_model=model).reconstruct(
            op(x), PhaseRetrieval(3), noise)


def test_cli_finetune_for_an_operator(tmp_path, prior, capsys):
    from deftmed.cli import main

    prior_path = tmp_path / "prior.safetensors"
    prior.save(prior_path)
    out = tmp_path / "h.safetensors"
    args = ["finetune", "--prior", str(prior_path), "--data", "ellipses", "--operator",
            "{type: super_resolution, factor: 4, kind: block}", "--noise",
            "{type: gaussian, sigma: 0.01}", "--steps", "2", "--batch-size", "2",
            "--checkpoint-every", "2", "--val-every", "0", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    model = DeftModel.load(out)
    assert model.binding.operator == SuperResolution(4, "block").to_dict()
    assert model.binding.geometry == {}
    bad = tmp_path / "bad.safetensors"
    assert main(args[:6] + ["{type: zoom}"] + args[7:-3] + ["--out", str(bad)]) == 2
    assert "unknown imaging operator" in capsys.readouterr().err and not bad.exists()
    assert main(args[:-3] + ["--geometry", "parallel64-20", "--out", str(bad)]) == 2
    assert "not both" in capsys.readouterr().err


def test_colour_benchmark_and_report(tmp_path):
    from deftmed.evaluation.report import write_report
    from deftmed.evaluation.runner import read_rows, run_benchmark

    proto = natural_protocol(tmp_path, {"type": "super_resolution", "factor": 4, "kind": "block"})
    out = tmp_path / "res"
    run_benchmark(proto, ["direct"], 2, out, torch.device("cpu"), keep=2)
    rows = read_rows(out)
    assert len(rows) == 2 and all(float(r["psnr"]) > 10 for r in rows)
    paths = write_report(out, tmp_path / "report.html")
    html = open(paths["html"]).read()
    assert html.count("<img") >= 2 and "direct" in html
