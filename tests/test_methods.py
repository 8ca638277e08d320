"""Reconstruction methods on a tiny problem: 32x32 ellipses, 16 parallel views, 47 detector
pixels, 2.5 % Gaussian noise.

"Better than its initialisation", method by method:
- FBP has no iterate; it must beat the unfiltered back-projection (best scalar multiple).
- TV and RED-diff start at the FBP and must improve on it. For RED-diff this is checked with
  ``lam = 0`` (Adam on the noise-normalised likelihood, early-stopped): the tiny prior's
  denoiser is too poor to add anything (with ``lam = 0.003`` PSNR drops by ~1-2 dB below
  ``lam = 0``, and below the FBP), so this tests the data term and optimiser, not the prior.
- DPS and DDS start from Gaussian noise. Their honest baseline is the prior alone: the
  unconditional DDIM sample from the same noise and timesteps (guidance switched off, which is
  exactly ``zeta = 0`` / no CG). DDS, whose CG steps enforce the data strongly, must moreover
  beat the FBP. DPS needs ~1000 steps and a good prior to do so (paper); with 20 steps and a
  prior trained for seconds it only has to beat the unguided sample by a wide margin and fit
  the data better.
The diffusion prior is trained here (``tests/_tiny_prior.py``, cached between runs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deftmed.data.phantoms import ellipses
from deftmed.errors import ConfigError
from deftmed.evaluation.metrics import psnr
from deftmed.methods.registry import METHODS, build_method, default_settings, search_space
from deftmed.physics.geometry import ScanGeometry
from deftmed.physics.noise import GaussianNoise, PoissonNoise
from deftmed.physics.raytransform import RayTransform

from _tiny_prior import tiny_prior

# Few-step settings for the tests (the defaults are the papers' step counts).
FAST = {"fbp": {}, "tv": {"lam": 3.0, "iterations": 300},
        "dps": {"steps": 20, "zeta": 3.0}, "reddiff": {"steps": 30, "lr": 0.03, "lam": 0.0},
        "dds": {"steps": 20, "cg_iters": 5, "gamma": 0.01}}


def _geometry(views: int, det: int) -> ScanGeometry:
    return ScanGeometry.from_dict({"kind": "parallel", "image_size": 32, "pixel_spacing": 2.0,
                                   "n_angles": views, "angle_range": [0.0, 180.0],
                                   "n_detector": det, "detector_spacing": 2.0})


@pytest.fixture(scope="module")
def problem():
    op = RayTransform(_geometry(16, 47))
    x = torch.from_numpy(ellipses(2, 32, "test"))[:, None]
    noise = GaussianNoise(relative=0.025)
    y = noise.sample(op(x), torch.Generator().manual_seed(0))
    return op, noise, x, y


@pytest.fixture(scope="session")
def prior():
    return tiny_prior()


def _psnr(img, gt) -> np.ndarray:
    return psnr(img, gt)


def _run(name, settings, problem, prior, seed=1):
    op, noise, x, y = problem
    method = build_method(name, settings, prior=prior)
    return method.reconstruct(y, op, noise, torch.Generator().manual_seed(seed))


def _fbp(problem):
    op, noise, x, y = problem
    return build_method("fbp", {}).reconstruct(y, op, noise).image


def _unconditional(prior, steps, seed, batch):
    """The unguided DDIM sample from the same starting noise as a guided run."""
    from deftmed.diffusion.ddim import ddim_loop, ddim_timesteps, initial_noise

    gen = torch.Generator().manual_seed(seed)
    z = initial_noise((batch, 1, 32, 32), gen, "cpu")
    with torch.no_grad():
        for step in ddim_loop(prior, z, ddim_timesteps(prior.num_timesteps, steps), eta=0.0):
            pass
    return prior.to_image(step.x0)


def test_fbp_beats_backprojection(problem):
    op, noise, x, y = problem
    bp = op.adjoint(y)
    scale = (bp * x).sum(dim=(1, 2, 3), keepdim=True) / (bp * bp).sum(dim=(1, 2, 3), keepdim=True)
    assert (_psnr(_fbp(problem), x) > _psnr(scale * bp, x) + 3).all()


def test_tv_improves_on_fbp(problem):
    rec = _run("tv", FAST["tv"], problem, None)
    fbp = _psnr(_fbp(problem), problem[2])
    assert (_psnr(rec.image, problem[2]) > fbp + 1.5).all()
    assert rec.info["iterations"] <= 300 and float(rec.image.min()) >= 0


def test_reddiff_improves_on_fbp(problem, prior):
    """lam = 0: see the module notes (the test prior is too weak to help)."""
    rec = _run("reddiff", FAST["reddiff"], problem, prior)
    assert rec.nfe == 30
    assert (_psnr(rec.image, problem[2]) > _psnr(_fbp(problem), problem[2]) + 0.5).all()


def test_dds_beats_prior_alone_and_fbp(problem, prior):
    rec = _run("dds", FAST["dds"], problem, prior)
    x = problem[2]
    assert rec.nfe == 20
    got = _psnr(rec.image, x)
    assert (got > _psnr(_unconditional(prior, 20, 1, 2), x) + 10).all()
    assert (got > _psnr(_fbp(problem), x) + 0.5).all()


def test_dps_guidance_beats_prior_alone(problem, prior):
    op, noise, x, y = problem
    rec = _run("dps", FAST["dps"], problem, prior)
    unguided = _run("dps", {**FAST["dps"], "zeta": 0.0}, problem, prior)
    assert rec.nfe == 20 and rec.info["prior_backward_passes"] == 20
    assert (_psnr(rec.image, x) > _psnr(unguided.image, x) + 3).all()
    misfit = lambda img: ((op(img) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1))
    assert (misfit(rec.image) < 0.5 * misfit(unguided.image)).all()


@pytest.mark.parametrize("noise", [GaussianNoise(sigma=0.5),
                                   PoissonNoise(i0=1e4, attenuation_scale=0.02),
                                   PoissonNoise(i0=1e4, attenuation_scale=0.02, output="prelog")],
                         ids=["gauss", "poisson-postlog", "poisson-prelog"])
@pytest.mark.parametrize("name", ["fbp", "tv", "dps", "reddiff", "dds"])
def test_batch_and_nonsquare_sinogram(name, noise, prior):
    """11 views x 37 detector pixels for a 32x32 image, batch 3, every noise model."""
    op = RayTransform(_geometry(11, 37))
    x = torch.from_numpy(ellipses(3, 32, "test", start=5))[:, None]
    y = noise.sample(op(x), torch.Generator().manual_seed(2))
    few = {"tv": {"iterations": 20}, "dps": {"steps": 4}, "reddiff": {"steps": 4},
           "dds": {"steps": 4}}.get(name, {})
    rec = build_method(name, few, prior=prior).reconstruct(y, op, noise,
                                                           torch.Generator().manual_seed(0))
    assert rec.image.shape == (3, 1, 32, 32)
    assert bool(torch.isfinite(rec.image).all())


def test_tv_batch_equals_single_items(problem):
    op, noise, x, y = problem
    method = build_method("tv", {"iterations": 30, "tol": 0.0})
    both = method.reconstruct(y, op, noise).image
    # relative noise: sigma is estimated per item, so single items see the same weights
    first = method.reconstruct(y[:1], op, noise).image
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)


def test_registry_defaults_and_grids():
    assert set(METHODS) == {"fbp", "direct", "tv", "dps", "reddiff", "dds", "ddrm", "deft",
                            "deft-mean"}
    for name in set(METHODS) - {"direct"}:  # direct has no hyper-parameters
        defaults, grid = default_settings(name), search_space(name)
        assert grid and set(grid) <= set(defaults), name
        assert all(len(v) >= 2 for v in grid.values()), name
    assert default_settings("dds")["eta"] == 0.85 and default_settings("dps")["steps"] == 1000


@pytest.mark.parametrize("name, settings, match", [
    ("sart", {}, "unknown method"),
    ("tv", {"lambda": 1.0}, "unknown setting"),
    ("tv", {"lam": -1.0}, "lam"),
    ("tv", {"iterations": 0}, "iterations"),
    ("fbp", {"filter_type": "Gauss"}, "filter_type"),
    ("fbp", {"frequency_scaling": 1.5}, "frequency_scaling"),
    ("dps", {"zeta": -1}, "zeta"),
    ("dps", {"steps": 0}, "steps"),
    ("reddiff", {"lr": 0.0}, "lr"),
    ("dds", {"gamma": float("nan")}, "gamma"),
    ("dds", {"spacing": "random"}, "spacing"),
    ("dds", ["gamma"], "mapping"),
])
def test_bad_settings_raise_config_error(name, settings, match, prior):
    with pytest.raises(ConfigError, match=match):
        build_method(name, settings, prior=prior)


def test_missing_models_raise_config_error():
    with pytest.raises(ConfigError, match="prior"):
        build_method("dds", {})
    with pytest.raises(ConfigError, match="DEFT|prior"):
        build_method("deft", {}, prior=object())
