"""The guided-diffusion ADM UNet: published key names/shapes, checkpoint loading, prior adapter."""

import os

import pytest
import torch

from deftmed.diffusion.adm import (ADM_IMAGENET256_UNCOND, ADMConfig, ADMPrior, ADMUNet,
                                   adm_prior, load_adm_checkpoint, timestep_embedding)
from deftmed.diffusion.prior import DiffusionPrior
from deftmed.errors import CheckpointError, ConfigError

SMALL = ADMConfig(image_size=32, num_channels=32, num_res_blocks=1, attention_resolutions=(16,),
                  channel_mult=(1, 2), num_head_channels=32)

# a handful of keys of the released 256x256_diffusion_uncond.pt with their shapes
PUBLISHED_256 = {
    "time_embed.0.weight": (1024, 256),
    "time_embed.2.weight": (1024, 1024),
    "input_blocks.0.0.weight": (256, 3, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (256,),
    "input_blocks.1.0.in_layers.2.weight": (256, 256, 3, 3),
    "input_blocks.1.0.emb_layers.1.weight": (512, 1024),
    "input_blocks.1.0.out_layers.3.weight": (256, 256, 3, 3),
    "input_blocks.3.0.in_layers.2.weight": (256, 256, 3, 3),  # down-sampling ResBlock
    "input_blocks.7.0.skip_connection.weight": (512, 256, 1, 1),
    "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # first attention, 32x32 features
    "input_blocks.10.1.proj_out.weight": (512, 512, 1),
    "input_blocks.16.1.norm.weight": (1024,),
    "middle_block.0.emb_layers.1.weight": (2048, 1024),
    "middle_block.1.qkv.weight": (3072, 1024, 1),
    "middle_block.1.qkv.bias": (3072,),
    "output_blocks.0.0.in_layers.0.weight": (2048,),
    "output_blocks.0.0.skip_connection.weight": (1024, 2048, 1, 1),
    "output_blocks.2.2.in_layers.2.weight": (1024, 1024, 3, 3),  # up-sampling ResBlock
    "output_blocks.8.1.qkv.weight": (1536, 512, 1),
    "output_blocks.17.0.skip_connection.weight": (256, 512, 1, 1),
    "out.0.weight": (256,),
    "out.2.weight": (6, 256, 3, 3),
    "out.2.bias": (6,),
}


def test_published_256_architecture_on_meta_device():
    with torch.device("meta"):
        model = ADMUNet(ADM_IMAGENET256_UNCOND)
    sd = model.state_dict()
    for key, shape in PUBLISHED_256.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert len(model.input_blocks) == 18 and len(model.output_blocks) == 18
    n = sum(p.numel() for p in model.parameters())
    assert n == 552_814_086  # the released model's 552.8M parameters
    assert not any("attention" in k or "h_upd" in k for k in sd)  # parameter-free modules
    assert ADM_IMAGENET256_UNCOND.attention_ds == (8, 16, 32)


def _small_model(seed=0):
    torch.manual_seed(seed)
    model = ADMUNet(SMALL)
    with torch.no_grad():  # the zero-initialised output convs would hide mistakes
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def test_small_round_trip_pt_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = _small_model()
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    with torch.no_grad():
        full = model.forward_full(x, t)
        eps = model(x, t)
    assert full.shape == (2, 6, 32, 32) and torch.equal(eps, full[:, :3])
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "m.safetensors"))
    for name in ("m.pt", "m.safetensors"):
        loaded = load_adm_checkpoint(tmp_path / name, SMALL)
        with torch.no_grad():
            assert torch.equal(loaded(x, t), eps)
        assert not any(p.requires_grad for p in loaded.parameters())


def test_missing_unexpected_and_wrong_shapes(tmp_path):
    sd = _small_model().state_dict()
    bad = dict(sd)
    bad.pop("out.2.weight")
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing.*out.2.weight.*unexpected.*extra"):
        load_adm_checkpoint(tmp_path / "bad.pt", SMALL)
    with pytest.raises(CheckpointError, match="other shapes"):
        torch.save(sd, tmp_path / "ok.pt")
        load_adm_checkpoint(tmp_path / "ok.pt", ADMConfig(**{**SMALL.to_dict(),
                                                              "num_channels": 64}))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adm_checkpoint(tmp_path / "nothing.pt", SMALL)


class _Payload:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (os.getcwd, ())


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": _Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_adm_checkpoint(path, SMALL)
    torch.save({"a": [1, 2]}, tmp_path / "notensors.pt")
    with pytest.raises(CheckpointError, match="state dict of tensors"):
        load_adm_checkpoint(tmp_path / "notensors.pt", SMALL)


def test_adm_prior_adapter(tmp_path):
    model = _small_model()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    prior = adm_prior(tmp_path / "m.pt", SMALL)
    assert isinstance(prior, DiffusionPrior) and isinstance(prior.unet, ADMUNet)
    assert prior.spec.unet.in_channels == 3 and prior.spec.image_size == 32
    assert (prior.spec.data_shift, prior.spec.data_scale) == (0.5, 0.5)
    assert prior.num_timesteps == 1000
    z = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(prior.eps(z, 500), model(z, torch.tensor([500, 500])))
        assert prior.tweedie(z, torch.tensor([10, 10])).shape == z.shape
    prior.save(tmp_path / "p.safetensors")
    again = ADMPrior.load(tmp_path / "p.safetensors")
    assert again.adm_config == SMALL and again.fingerprint == prior.fingerprint
    with pytest.raises(CheckpointError, match="adm-prior"):
        DiffusionPrior.load(tmp_path / "p.safetensors")


def test_config_validation_and_embedding():
    assert ADMConfig(attention_resolutions="32,16,8").attention_resolutions == (32, 16, 8)
    assert ADMConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ConfigError):
        ADMConfig(image_size=40, channel_mult=(1, 2, 2, 2, 2))
    with pytest.raises(ConfigError):
        ADMConfig(num_channels=40)
    with pytest.raises(ConfigError):
        ADMConfig.from_dict({"bogus": 1})
    e = timestep_embedding(torch.tensor([0, 3]), 8)
    assert torch.allclose(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(e[1, 0], torch.cos(torch.tensor(3.0)))
