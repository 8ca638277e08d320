"""Prior training: loss decreases, exact resume after an interrupt, CLI, torchrun DDP."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from deftmed.cli import main
from deftmed.data.datasets import open_images
from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
from deftmed.diffusion.train import prior_loss, train_prior
from deftmed.diffusion.unet import UNetConfig
from deftmed.training import TrainConfig, Trainer

TINY = UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_num_groups=8,
                  num_head_channels=8)


def _losses(path):
    with open(path) as f:
        return [float(r["loss"]) for r in csv.DictReader(f) if r["loss"]]


def test_loss_decreases_on_tiny_prior(tmp_path):
    source = open_images("ellipses", "train", 32, length=512)
    cfg = TrainConfig(steps=240, batch_size=8, lr=2e-3, warmup_steps=20, checkpoint_every=240,
                      log_every=40, progress=False)
    path = train_prior(source, PriorSpec(unet=TINY, image_size=32), cfg, tmp_path,
                       torch.device("cpu"))
    losses = _losses(tmp_path / "log.csv")
    assert losses[-1] < 0.6 * losses[0], losses
    prior = DiffusionPrior.load(path)
    assert prior.metadata["training"]["step"] == 240


def _run(out, steps, interrupt_at=None):
    torch.manual_seed(0)
    source = open_images("ellipses", "train", 16, length=64)
    prior = DiffusionPrior(PriorSpec(unet=TINY, image_size=16))
    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=3, checkpoint_every=5,
                      log_every=2, progress=False, seed=7)
    trainer = Trainer(prior.unet, cfg, out, run_info={"identity": {"test": 1}})

    def loss_fn(unet, step, gen, batch):
        if interrupt_at is not None and step == interrupt_at:
            raise KeyboardInterrupt
        return prior_loss(unet, source, prior, gen, batch, torch.device("cpu"))

    trainer.run(loss_fn, lambda ema, step: None, resume=True)
    return trainer


def test_interrupt_and_resume_matches_uninterrupted(tmp_path):
    ref = _run(tmp_path / "ref", 16)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", 16, interrupt_at=12)
    resumed = _run(tmp_path / "cut", 16)
    assert resumed.step == ref.step == 16
    for (k, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(ref.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    # the log has each step once
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "cut" / "log.csv")) if r["loss"]]
    assert steps == sorted(set(steps))


def test_resume_refuses_other_run(tmp_path):
    from deftmed.errors import CheckpointError
    _run(tmp_path / "a", 5)
    prior = DiffusionPrior(PriorSpec(unet=TINY, image_size=16))
    trainer = Trainer(prior.unet, TrainConfig(steps=6, batch_size=4, progress=False),
                      tmp_path / "a", run_info={"identity": {"test": 2}})
    with pytest.raises(CheckpointError, match="cannot resume"):
        trainer.run(lambda *a: torch.zeros((), requires_grad=True), lambda e, s: None, resume=True)


def test_cli_train_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train-prior", "--image-size", "16", "--channels", "8,16", "--attention-levels",
               "0,1", "--norm-groups", "8", "--head-channels", "8", "--steps", "6", "--batch-size", "4",
               "--checkpoint-every", "3", "--sample-every", "6", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    assert (out / "prior.safetensors").is_file() and (out / "samples_0000006.png").is_file()
    png = tmp_path / "grid.png"
    assert main(["sample-prior", "--prior", str(out / "prior.safetensors"), "--n", "4",
                 "--steps", "3", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    # a bad checkpoint is a one-line error, no output
    bad = tmp_path / "bad.png"
    assert main(["sample-prior", "--prior", str(tmp_path / "nope.safetensors"), "--out",
                 str(bad)]) == 2
    assert not bad.exists()
    assert "error" in capsys.readouterr().err

    # warm start on other data: architecture from --init, weights start from it, recorded
    from deftmed.checkpoint import read_metadata
    from deftmed.diffusion.prior import DiffusionPrior
    warm = tmp_path / "warm"
    assert main(["train-prior", "--data", "anatomy", "--image-size", "16", "--init",
                 str(out / "prior.safetensors"), "--steps", "2", "--batch-size", "2",
                 "--lr", "1e-12", "--warmup", "0", "--ema", "0", "--checkpoint-every", "2",
                 "--sample-every", "0", "--out", str(warm), "--no-progress"]) == 0
    a = DiffusionPrior.load(out / "prior.safetensors")
    b = DiffusionPrior.load(warm / "prior.safetensors")
    assert b.spec.unet == a.spec.unet and b.spec.data["kind"] == "anatomy"
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in
               zip(a.unet.parameters(), b.unet.parameters()))
    assert read_metadata(warm / "prior.safetensors")["training"]["init"] == a.fingerprint
    assert main(["train-prior", "--image-size", "32", "--init", str(out / "prior.safetensors"),
                 "--steps", "1", "--out", str(tmp_path / "w2"), "--no-progress"]) == 2
    assert "--init prior is for 16x16" in capsys.readouterr().err


def test_torchrun_two_process_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29533", "-m", "deftmed", "train-prior", "--image-size", "16",
           "--channels", "8,16", "--attention-levels", "0,1", "--norm-groups", "8",
           "--head-channels", "8", "--steps", "4", "--batch-size", "4", "--checkpoint-every", "2", "--sample-every",
           "0", "--out", str(out), "--no-progress"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    prior = DiffusionPrior.load(out / "prior.safetensors")
    assert prior.metadata["training"]["world_size"] == 2
    assert prior.metadata["training"]["step"] == 4
