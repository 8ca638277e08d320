"""Importing a MONAI DiffusionModelUNet trained elsewhere."""

import pytest
import torch
import yaml

from deftmed.cli import main
from deftmed.diffusion.prior import DiffusionPrior
from deftmed.diffusion.unet import UNetConfig
from deftmed.errors import CheckpointError, ConfigError
from deftmed.diffusion.convert import import_monai_prior

CFG = {"channels": [8, 16], "attention_levels": [False, True], "norm_num_groups": 8,
       "num_head_channels": 8}


def _write(tmp_path, state, fmt="pt", meta=None):
    w = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(state, w)
    else:
        from safetensors.torch import save_file
        save_file(state, str(w))
    m = tmp_path / "meta.yaml"
    m.write_text(yaml.safe_dump(meta or {"unet": CFG, "image_size": 16,
                                         "description": "test prior"}))
    return w, m


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_import_round_trip(tmp_path, fmt):
    torch.manual_seed(0)
    unet = UNetConfig(**CFG).build()
    w, m = _write(tmp_path, {f"module.{k}": v for k, v in unet.state_dict().items()}, fmt)
    out = tmp_path / "prior.safetensors"
    assert main(["import-prior", str(w), "--meta", str(m), "--out", str(out)]) == 0
    prior = DiffusionPrior.load(out)
    z, t = torch.randn(1, 1, 16, 16), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(prior.eps(z, t), unet(z, t))
    assert prior.spec.data["description"] == "test prior"


def test_import_errors(tmp_path):
    unet = UNetConfig(**CFG).build()
    state = unet.state_dict()
    w, m = _write(tmp_path, {k: v for k, v in list(state.items())[:-3]})
    with pytest.raises(CheckpointError, match="missing"):
        import_monai_prior(w, m, tmp_path / "o.safetensors")
    w, m = _write(tmp_path, state, meta={"unet": dict(CFG, channels=[8, 24]), "image_size": 16})
    with pytest.raises(CheckpointError, match="shapes|missing|unexpected"):
        import_monai_prior(w, m, tmp_path / "o.safetensors")
    w, m = _write(tmp_path, state, meta={"image_size": 16})
    with pytest.raises(ConfigError, match="unet"):
        import_monai_prior(w, m, tmp_path / "o.safetensors")
    # a pickle with code is refused by weights_only loading
    _, m = _write(tmp_path, state)
    evil = tmp_path / "evil.pt"
    torch.save({"x": object()}, evil)
    with pytest.raises(CheckpointError, match="weights_only|tensor"):
        import_monai_prior(evil, m, tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
