"""The prior: schedule, Tweedie, DDIM, checkpoints."""

import json

import pytest
import torch

from deftmed.checkpoint import load_checkpoint, save_checkpoint
from deftmed.diffusion.ddim import ddim_loop, ddim_timesteps, sample_unconditional
from deftmed.diffusion.prior import DiffusionPrior, PriorSpec
from deftmed.diffusion.schedule import NoiseSchedule
from deftmed.diffusion.unet import UNetConfig
from deftmed.errors import CheckpointError, ConfigError

TINY = UNetConfig(channels=(8, 16), attention_levels=(False, True), norm_num_groups=8,
                  num_head_channels=8)


def tiny_prior(seed=0, size=16):
    torch.manual_seed(seed)
    return DiffusionPrior(PriorSpec(unet=TINY, image_size=size)).eval()


def test_schedule_matches_paper():
    s = NoiseSchedule()
    b = s.betas
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    abar = s.alphas_cumprod
    assert abar[0].item() == pytest.approx(1 - 1e-4)
    assert torch.all(abar[1:] < abar[:-1])
    assert abar[-1].item() < 1e-4


def test_tweedie_with_oracle_eps_recovers_x0():
    prior = tiny_prior()
    x0 = torch.rand(3, 1, 16, 16) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([5, 400, 999])
    z_t = prior.schedule.q_sample(x0, t, eps)
    assert torch.allclose(prior.tweedie(z_t, t, eps), x0, atol=1e-3)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_ddim_timesteps(spacing):
    ts = ddim_timesteps(1000, 10, spacing)
    assert len(ts) == 10 and ts == sorted(ts, reverse=True)
    assert all(0 <= t < 1000 for t in ts)
    if spacing == "trailing":
        assert ts[0] == 999
    with pytest.raises(ConfigError):
        ddim_timesteps(1000, 0, spacing)
    with pytest.raises(ConfigError):
        ddim_timesteps(1000, 10, "nonsense")


def test_ddim_eta0_deterministic_and_oracle_exact():
    prior = tiny_prior()
    a = sample_unconditional(prior, 2, steps=5, generator=torch.Generator().manual_seed(3))
    b = sample_unconditional(prior, 2, steps=5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # With an oracle epsilon (the noise that produced z_T from a fixed x0), DDIM eta=0 returns x0.
    x0 = torch.rand(1, 1, 16, 16) * 2 - 1
    eps = torch.randn_like(x0)
    ts = ddim_timesteps(1000, 7)
    z = prior.schedule.q_sample(x0, torch.tensor([ts[0]]), eps)
    last = None
    for last in ddim_loop(prior, z, ts, eps_fn=lambda z_t, t: eps):
        pass
    assert torch.allclose(last.x0, x0, atol=1e-3)


def test_ddim_eta_positive_differs_with_seed():
    prior = tiny_prior()
    a = sample_unconditional(prior, 1, steps=4, eta=1.0, generator=torch.Generator().manual_seed(0))
    b = sample_unconditional(prior, 1, steps=4, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)


def test_no_clamping_of_x0():
    prior = tiny_prior()
    z = torch.full((1, 1, 16, 16), 50.0)
    x0 = prior.tweedie(z, torch.tensor([10]), torch.zeros_like(z))
    assert x0.max() > 1.0  # an out-of-range prediction is returned as is


def test_checkpoint_round_trip_identical_outputs(tmp_path):
    prior = tiny_prior()
    path = tmp_path / "p.safetensors"
    prior.save(path, {"note": "test"})
    loaded = DiffusionPrior.load(path)
    z = torch.randn(2, 1, 16, 16)
    t = torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(prior.eps(z, t), loaded.eps(z, t))
    assert loaded.fingerprint == prior.metadata["weights_sha256"]
    assert loaded.metadata["note"] == "test"


def test_checkpoint_errors(tmp_path):
    prior = tiny_prior()
    path = tmp_path / "p.safetensors"
    prior.save(path)
    # truncated
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated|corrupt|readable"):
        DiffusionPrior.load(trunc)
    # wrong kind
    other = tmp_path / "other.safetensors"
    save_checkpoint(other, {"a": torch.zeros(2)}, "something-else", {})
    with pytest.raises(CheckpointError, match="expected 'diffusion-prior'"):
        DiffusionPrior.load(other)
    # different architecture under the same metadata
    tensors, meta = load_checkpoint(path, "diffusion-prior")
    meta["spec"]["unet"]["channels"] = [8, 24]
    meta["spec"]["unet"]["norm_num_groups"] = 8
    bad = tmp_path / "arch.safetensors"
    save_checkpoint(bad, tensors, "diffusion-prior", {k: v for k, v in meta.items()
                                                       if k not in ("kind", "weights_sha256")})
    with pytest.raises(CheckpointError, match="do not fit the architecture"):
        DiffusionPrior.load(bad)
    # wrong metadata (missing spec)
    nospec = tmp_path / "nospec.safetensors"
    save_checkpoint(nospec, tensors, "diffusion-prior", {"parameters": 1})
    with pytest.raises(CheckpointError, match="spec"):
        DiffusionPrior.load(nospec)
    # corrupted weights: checksum mismatch
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    flipped = tmp_path / "flip.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum|corrupt"):
        DiffusionPrior.load(flipped)
    # not a checkpoint at all
    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    with pytest.raises(CheckpointError):
        DiffusionPrior.load(junk)


def test_metadata_is_json(tmp_path):
    prior = tiny_prior()
    meta = prior.save(tmp_path / "p.safetensors")
    json.dumps(meta)
    assert meta["spec"]["schedule"]["beta_end"] == 0.02
    assert "git_commit" in meta["provenance"]


def test_v_parametrisation_is_an_epsilon_model():
    torch.manual_seed(0)
    prior = DiffusionPrior(PriorSpec(unet=TINY, image_size=16, prediction="v")).eval()
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1
    eps = torch.randn_like(x0)
    t = torch.tensor([3, 990])
    z_t = prior.schedule.q_sample(x0, t, eps)
    v = prior.training_target(x0, t, eps)
    # a network that outputs the true v yields the true eps, hence x0 exactly via Tweedie

    class Oracle(torch.nn.Module):
        def forward(self, z, tt):
            return v

    prior.unet = Oracle()
    assert torch.allclose(prior.eps(z_t, t), eps, atol=1e-4)
    assert torch.allclose(prior.tweedie(z_t, t), x0, atol=1e-3)
    with pytest.raises(ConfigError):
        PriorSpec(prediction="x0")
