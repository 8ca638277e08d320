"""Noise models: sampling statistics, validation, likelihood gradients, config loading."""

from __future__ import annotations

import math

import pytest
import torch

from deftmed.errors import ConfigError, InvalidValueError
from deftmed.physics.geometry import ScanGeometry
from deftmed.physics.noise import GaussianNoise, NoiseModel, PoissonNoise, load_noise
from deftmed.physics.raytransform import RayTransform


class MatrixOp:
    """A dense linear operator (B,1,n) -> (B,1,m) with the same call/adjoint interface."""

    def __init__(self, m: int, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.M = torch.rand(m, n, generator=g, dtype=torch.float64)

    def __call__(self, x):
        return x @ self.M.T

    def adjoint(self, y):
        return y @ self.M


def _tiny_ray():
    g = ScanGeometry(kind="parallel", image_size=8, pixel_spacing=1.0, n_angles=6,
                     n_detector=13, detector_spacing=1.0)
    return RayTransform(g, backend="astra_cpu")


def _clean(shape=(2, 1, 40, 50), seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1.0 + 4.0 * torch.rand(shape, generator=g, dtype=torch.float64)


def _draws(model, clean, n=400, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([model.sample(clean, generator=gen) for _ in range(n)])


def test_gaussian_absolute_statistics():
    clean = _clean()
    s = _draws(GaussianNoise(sigma=0.3), clean)
    assert float((s.mean(0) - clean).abs().mean()) < 0.03
    assert float(s.var(0).mean()) == pytest.approx(0.09, rel=0.03)


def test_gaussian_relative_statistics():
    clean = _clean()
    clean[1] *= 3.0
    model = GaussianNoise(relative=0.025)
    sig = model.effective_sigma(clean)
    assert sig.shape == (2, 1, 1, 1)
    expected = 0.025 * clean.abs().reshape(2, -1).mean(1)
    torch.testing.assert_close(sig.flatten(), expected)
    s = _draws(model, clean)
    var = s.var(0).reshape(2, -1).mean(1)
    torch.testing.assert_close(var, expected ** 2, rtol=0.03, atol=0)
    assert float((s.mean(0) - clean).abs().mean()) < 0.01


def test_seeded_sampling_is_reproducible():
    clean = _clean()
    for model in (GaussianNoise(relative=0.05), PoissonNoise(i0=1000, attenuation_scale=0.1)):
        a = model.sample(clean, generator=torch.Generator().manual_seed(7))
        b = model.sample(clean, generator=torch.Generator().manual_seed(7))
        c = model.sample(clean, generator=torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)
        assert a.dtype == clean.dtype and a.shape == clean.shape


def test_poisson_prelog_statistics():
    clean = _clean((2, 1, 20, 50))
    model = PoissonNoise(i0=500, attenuation_scale=0.2, output="prelog")
    lam = 500 * torch.exp(-0.2 * clean)
    s = _draws(model, clean, n=200)
    assert bool((s >= 0).all()) and torch.equal(s, s.round())
    rel_mean = ((s.mean(0) - lam) / lam).abs().mean()
    assert float(rel_mean) < 0.02
    assert float(s.var(0).mean() / lam.mean()) == pytest.approx(1.0, rel=0.03)
    torch.testing.assert_close(model.variance(clean), lam)


def test_poisson_postlog_statistics():
    clean = _clean((2, 1, 20, 50))
    model = PoissonNoise(i0=10000, attenuation_scale=0.2, output="postlog")
    s = _draws(model, clean, n=200)
    assert float((s.mean(0) - clean).abs().mean()) < 0.01  # nearly unbiased at high counts
    predicted = model.variance(clean)  # delta method: 1 / (lam s^2)
    ratio = s.var(0) / predicted
    assert float(ratio.mean()) == pytest.approx(1.0, rel=0.05)


def test_poisson_postlog_clamps_zero_counts():
    model = PoissonNoise(i0=1.0, attenuation_scale=1.0, min_count=0.1)
    y = model.sample(torch.full((1, 1, 4, 4), 50.0, dtype=torch.float64),
                     generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(y).all())
    assert float(y.max()) == pytest.approx(-math.log(0.1))


def test_measurement_validation():
    pre = PoissonNoise(i0=100, attenuation_scale=0.1, output="prelog")
    with pytest.raises(InvalidValueError, match="negative counts"):
        pre.validate_measurement(torch.tensor([[[[1.0, -2.0]]]]))
    op = MatrixOp(2, 3)
    with pytest.raises(InvalidValueError, match="negative counts"):
        pre.log_likelihood_grad(torch.zeros(1, 1, 3, dtype=torch.float64),
                                torch.tensor([[[1.0, -2.0]]], dtype=torch.float64), op)
    post = PoissonNoise(i0=100, attenuation_scale=0.1)
    post.validate_measurement(torch.tensor([-0.5, 1.0]))  # post-log values may be negative
    for model in (pre, post, GaussianNoise(sigma=1.0)):
        with pytest.raises(InvalidValueError, match="NaN"):
            model.validate_measurement(torch.tensor([1.0, float("nan")]))
        with pytest.raises(InvalidValueError):
            model.sample(torch.tensor([[[[float("inf")]]]]))


MODELS = [
    GaussianNoise(sigma=0.5),
    GaussianNoise(relative=0.05),
    PoissonNoise(i0=300, attenuation_scale=0.3, output="prelog"),
    PoissonNoise(i0=300, attenuation_scale=0.3, output="postlog"),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: repr(m))
@pytest.mark.parametrize("op_kind", ["matrix", "ray"])
def test_log_likelihood_grad_matches_autograd(model, op_kind):
    gen = torch.Generator().manual_seed(5)
    if op_kind == "matrix":
        op = MatrixOp(7, 5)
        x_true = torch.rand(2, 1, 5, generator=gen, dtype=torch.float64)
    else:
        op = _tiny_ray()
        x_true = torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = model.sample(op(x_true), generator=gen)
    x = (x_true + 0.1 * torch.rand(x_true.shape, generator=gen, dtype=torch.float64))
    x.requires_grad_(True)
    model.log_likelihood(x, y, op).sum().backward()
    grad = model.log_likelihood_grad(x, y, op)
    assert grad.shape == x.shape
    torch.testing.assert_close(grad, x.grad, rtol=1e-4, atol=1e-6 * float(x.grad.abs().max()))


def test_load_noise_and_round_trip(tmp_path):
    g = load_noise({"type": "gaussian", "relative": 0.025})
    assert isinstance(g, GaussianNoise) and g.relative == 0.025
    p = load_noise({"type": "poisson", "i0": 10000, "attenuation_scale": 0.02,
                    "output": "postlog"})
    assert isinstance(p, PoissonNoise) and p.i0 == 10000 and p.output == "postlog"
    for m in (g, p, GaussianNoise(sigma=1.0), PoissonNoise(output="prelog")):
        assert load_noise(m.to_dict()) == m
        assert NoiseModel.from_dict(m.to_dict()) == m
        assert isinstance(m.describe(), str) and m.describe()
    f = tmp_path / "noise.yaml"
    f.write_text("type: poisson\ni0: 4096\nattenuation_scale: 0.08\nmin_count: 0.5\n")
    m = NoiseModel.from_yaml(f)
    assert m == PoissonNoise(i0=4096, attenuation_scale=0.08, min_count=0.5)
    assert load_noise(str(f)) == m


@pytest.mark.parametrize("spec, msg", [
    ({"type": "laplace", "sigma": 1}, "unknown noise type"),
    ({"sigma": 1}, "missing key 'type'"),
    ({"type": "gaussian", "sigma": 1, "mean": 0}, "unknown key"),
    ({"type": "gaussian"}, "exactly one"),
    ({"type": "gaussian", "sigma": 1, "relative": 0.1}, "exactly one"),
    ({"type": "gaussian", "sigma": -1}, "sigma"),
    ({"type": "gaussian", "sigma": "big"}, "sigma"),
    ({"type": "poisson", "i0": 0}, "i0"),
    ({"type": "poisson", "output": "log"}, "output"),
    ({"type": "poisson", "photons": 10}, "unknown key"),
    ([1, 2], "mapping"),
])
def test_load_noise_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        load_noise(spec)


def test_load_noise_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_noise(tmp_path / "nope.yaml")
