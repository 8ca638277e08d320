"""The guidance input: direction of the likelihood gradient, scale-free across scans."""

import torch

from deftmed.deft.guidance import Guidance, sinogram_score
from deftmed.physics.geometry import ScanGeometry
from deftmed.physics.noise import GaussianNoise, PoissonNoise
from deftmed.physics.raytransform import RayTransform


def _op():
    return RayTransform(ScanGeometry(kind="parallel", image_size=16, pixel_spacing=4.0,
                                     n_angles=10, angle_range=(0.0, 180.0), n_detector=25,
                                     detector_spacing=4.0))


def test_adjoint_guidance_is_parallel_to_the_true_gradient():
    op = _op()
    x = torch.rand(2, 1, 16, 16)
    for noise in (GaussianNoise(relative=0.05), PoissonNoise(i0=1e4, attenuation_scale=0.02)):
        y = noise.sample(op(torch.rand(2, 1, 16, 16)), torch.Generator().manual_seed(0))
        g = Guidance(op, noise, "adjoint")(x, y)
        true = noise.log_likelihood_grad(x, y, op)
        cos = (g * true).flatten(1).sum(1) / (g.flatten(1).norm(dim=1) * true.flatten(1).norm(dim=1))
        assert torch.all(cos > 0.9999), cos


def test_normalised_score_does_not_depend_on_scan_brightness():
    op = _op()
    x = torch.rand(1, 1, 16, 16)
    noise = GaussianNoise(relative=0.025)
    y = op(x) * 1.01
    # the raw Gaussian gradient scales with 1/sigma^2, i.e. with the brightness; r does not
    r1 = sinogram_score(noise, op(x), y)
    r2 = sinogram_score(noise, op(x) * 0.1, y * 0.1)
    assert torch.allclose(r2, 0.1 * r1, rtol=1e-5)


def test_poisson_score_is_the_weighted_residual_to_first_order():
    op = _op()
    noise = PoissonNoise(i0=1e5, attenuation_scale=0.02)
    x = torch.rand(1, 1, 16, 16)
    ax = op(x)
    y = ax + 1e-3 * torch.randn_like(ax)
    lam = noise.expected_counts(ax)
    weighted = lam / lam.mean() * (y - ax)
    assert torch.allclose(sinogram_score(noise, ax, y), weighted, atol=1e-6, rtol=1e-2)
