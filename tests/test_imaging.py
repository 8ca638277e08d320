"""Conformance suite for the natural-image operators (deftmed.physics.imaging)."""

import math

import numpy as np
import pytest
import torch

from deftmed.errors import ConfigError, ShapeError
from deftmed.physics.imaging import (HDR, GaussianBlur, Inpainting, NonlinearBlur,
                                     PhaseRetrieval, RandomMaskOperator, SuperResolution,
                                     box_mask, build_operator, hio_er_estimate, likelihood_grad,
                                     random_pixel_mask, stroke_mask)
from deftmed.physics.noise import GaussianNoise

N = 16  # image side used throughout: keeps the suite fast

OPERATORS = {
    "inpainting-box": lambda: Inpainting(box_mask(N, 0.25, 0)),
    "inpainting-stroke": lambda: Inpainting({"kind": "stroke", "size": N, "seed": 1}),
    "sr-bicubic": lambda: SuperResolution(4, "bicubic"),
    "sr-block": lambda: SuperResolution(4, "block"),
    "blur-circular": lambda: GaussianBlur(1.5, 7),
    "blur-zero": lambda: GaussianBlur(1.5, 7, padding="zero"),
    "hdr": lambda: HDR(),
    "phase-retrieval": lambda: PhaseRetrieval(2),
    "nonlinear-blur": lambda: NonlinearBlur(1.5, 7, alpha=2.0),
}
LINEAR = [k for k, f in OPERATORS.items() if f().linear]


def _x(b, c, seed=0, dtype=torch.float64):
    return torch.rand(b, c, N, N, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(params=sorted(OPERATORS))
def op(request):
    return OPERATORS[request.param]()


@pytest.mark.parametrize("b,c", [(1, 1), (3, 3)])
def test_shapes_and_batch_consistency(op, b, c):
    x = _x(b, c)
    y = op(x)
    assert tuple(y.shape) == op.measurement_shape(tuple(x.shape))
    assert tuple(y.shape[-3:]) == op.measurement_shape((c, N, N))
    assert y.dtype == x.dtype and torch.isfinite(y).all()
    singles = torch.cat([op(x[i:i + 1]) for i in range(b)])
    torch.testing.assert_close(y, singles, rtol=1e-6, atol=1e-9)
    img = op.measurement_image(y)
    assert img.shape == x.shape and torch.isfinite(img).all()


def test_autograd_gives_finite_gradients(op):
    x = (0.1 + 0.8 * _x(2, 3)).requires_grad_(True)
    (op(x) ** 2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    v = torch.randn_like(op(x.detach()))
    g = op.guidance_backprojection(v, x.detach())
    assert g.shape == x.shape and torch.isfinite(g).all()


def test_gradients_match_finite_differences(op):
    x = (0.1 + 0.8 * _x(1, 1, seed=3)).requires_grad_(True)
    w = torch.randn_like(op(x.detach()))
    f = lambda z: (op(z) * w).sum()  # noqa: E731
    (grad,) = torch.autograd.grad(f(x), x)
    d = torch.randn_like(x)
    eps = 1e-6
    fd = (f(x.detach() + eps * d) - f(x.detach() - eps * d)) / (2 * eps)
    assert float(fd) == pytest.approx(float((grad * d).sum()), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("c", [1, 3])
def test_linear_adjoint_dot_test_and_vjp(name, c):
    op = OPERATORS[name]()
    x = _x(2, c, seed=1)
    y = torch.randn(op.measurement_shape(tuple(x.shape)), dtype=x.dtype,
                    generator=torch.Generator().manual_seed(2))
    lhs, rhs = float((op(x) * y).sum()), float((x * op.adjoint(y)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-4)
    torch.testing.assert_close(op.vjp(x, y), op.adjoint(y), rtol=1e-6, atol=1e-9)
    # the adjoint itself is linear and differentiable (autograd-consistent)
    yy = y.clone().requires_grad_(True)
    (op.adjoint(yy) * x).sum().backward()
    torch.testing.assert_close(yy.grad, op(x), rtol=1e-6, atol=1e-9)
    # norm: ||A x|| <= ||A|| ||x||
    assert float(op(x[:1]).norm()) <= op.norm((c, N, N)) * float(x[:1].norm()) * (1 + 1e-4)


@pytest.mark.parametrize("name", LINEAR)
def test_gaussian_noise_gradient_with_linear_operators(name):
    op = OPERATORS[name]()
    noise = GaussianNoise(sigma=0.05)
    x0, x = _x(2, 3, seed=4).float(), _x(2, 3, seed=5).float()
    y = noise.sample(op(x0), torch.Generator().manual_seed(0))
    g = noise.log_likelihood_grad(x, y, op)
    xx = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(noise.log_likelihood(xx, y, op).sum(), xx)
    torch.testing.assert_close(g, auto, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(likelihood_grad(noise, x, y, op), g)
    assert op.fbp(y).shape == x.shape  # the CT guidance code's name works too


@pytest.mark.parametrize("name", [k for k in OPERATORS if k not in LINEAR])
def test_nonlinear_likelihood_grad_by_autograd(name):
    op = OPERATORS[name]()
    noise = GaussianNoise(sigma=0.05)
    x0, x = _x(1, 3, seed=6).float(), _x(1, 3, seed=7).float()
    y = op(x0)
    g = likelihood_grad(noise, x, y, op)
    assert g.shape == x.shape and torch.isfinite(g).all()
    r = (y - op(x)) / 0.05 ** 2  # score in measurement space
    torch.testing.assert_close(op.guidance_backprojection(r, x), g, rtol=1e-4, atol=1e-3)
    with pytest.raises(ConfigError):
        op.adjoint(y)
    with pytest.raises(ConfigError):
        op.guidance_backprojection(r)


@pytest.mark.parametrize("name", ["inpainting-box", "sr-bicubic", "sr-block"])
def test_svd_reproduces_operator(name):
    op = OPERATORS[name]()
    x = _x(2, 3, seed=8).float()
    svd = op.svd((3, N, N))
    s = svd.singular_values()
    torch.testing.assert_close(svd.U(s * svd.Vt(x)), op(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(svd.V(svd.Vt(x)), x, rtol=1e-4, atol=1e-5)
    y = op(x)
    torch.testing.assert_close(svd.V(s * svd.Ut(y)), op.adjoint(y), rtol=1e-4, atol=1e-5)
    if name == "sr-block":
        assert sorted(set(s.flatten().tolist())) == pytest.approx([0.0, 0.25])


def test_operator_specific_values():
    x = _x(1, 3).float()
    sr = SuperResolution(4, "bicubic")
    ref = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bicubic",
                                          antialias=True, align_corners=False)
    torch.testing.assert_close(sr(x), ref, rtol=1e-5, atol=1e-6)
    block = SuperResolution(4, "block")
    torch.testing.assert_close(block(x), torch.nn.functional.avg_pool2d(x, 4))
    torch.testing.assert_close(block.pinv(block(x)).shape, x.shape)
    const = torch.full((1, 1, N, N), 0.3)
    torch.testing.assert_close(GaussianBlur(2.0, 9)(const), const)  # kernel sums to one
    hdr = HDR()
    z = 2 * x - 1
    torch.testing.assert_close(hdr(x), torch.clamp(2 * z, -1, 1))
    pr = PhaseRetrieval(2)
    assert pr(x).shape == (1, 3, 2 * N, 2 * N)
    torch.testing.assert_close(pr(x).norm(), x.norm(), rtol=1e-5, atol=0)  # unitary DFT
    nb = NonlinearBlur(1.5, 7, alpha=2.0)
    torch.testing.assert_close(nb.measurement_image(nb(x)), nb.blur(x), rtol=1e-4, atol=1e-4)
    m = box_mask(N, 0.25, 0)
    inp = Inpainting(m)
    torch.testing.assert_close(inp.measurement_image(inp(x)),
                               m * x + (1 - m) * 0.5)


def test_masks_and_mask_channel():
    for seed in range(5):
        assert 1 - float(box_mask(64, 0.25, seed).mean()) == pytest.approx(0.25, abs=0.01)
        assert 1 - float(random_pixel_mask(64, 0.3, seed).mean()) == pytest.approx(0.3, abs=1e-3)
        cov = 1 - float(stroke_mask(64, seed).mean())
        assert 0.2 <= cov <= 0.3
        cov = 1 - float(stroke_mask((32, 48), np.random.default_rng(seed), (0.1, 0.2)).mean())
        assert 0.1 <= cov <= 0.2
    torch.testing.assert_close(stroke_mask(32, 7), stroke_mask(32, 7))  # seeded
    gen = RandomMaskOperator("stroke", N)
    op = gen.sample(3, np.random.default_rng(0))
    assert op.mask_channel().shape == (3, 1, N, N)
    assert not torch.equal(op.mask[0], op.mask[1])  # one mask per item
    x = _x(3, 3).float()
    torch.testing.assert_close(op(x)[1:2], Inpainting(op.mask[1])(x[1:2]))
    assert Inpainting(box_mask(N, 0.25, 0)).mask_channel(4).shape == (4, 1, N, N)
    assert RandomMaskOperator.from_dict(gen.to_dict()).to_dict() == gen.to_dict()
    with pytest.raises(ShapeError):
        op(_x(2, 3).float())  # 3 masks, batch of 2


def test_hio_er_reduces_magnitude_misfit():
    op = PhaseRetrieval(2)
    x = torch.zeros(1, 1, N, N)
    x[..., 4:12, 5:10] = 0.8
    x[..., 6:9, 3:13] += 0.2
    y = op(x)
    start = torch.rand(1, 1, N, N, generator=torch.Generator().manual_seed(1))
    est = hio_er_estimate(y, op, iters=60, er_iters=20, init=start)
    assert est.shape == x.shape and 0 <= float(est.min()) and float(est.max()) <= 1
    before, after = float((op(start) - y).norm()), float((op(est) - y).norm())
    assert after < 0.5 * before
    with pytest.raises(ShapeError):
        hio_er_estimate(torch.rand(1, 1, 30, 30), op)


def test_serialisation_round_trip(op):
    again = build_operator(op.to_dict())
    assert type(again) is type(op) and again.to_dict() == op.to_dict()
    x = _x(1, 3).float()
    torch.testing.assert_close(again(x), op(x))
    raw = Inpainting(box_mask(N, 0.3, 2))  # a mask given as an array is stored as bits
    assert torch.equal(build_operator(raw.to_dict()).mask, raw.mask)


@pytest.mark.parametrize("spec", [
    {"type": "nope"},
    {"factor": 4},
    {"type": "super_resolution", "factor": 0},
    {"type": "super_resolution", "factor": 2.5},
    {"type": "super_resolution", "kind": "lanczos"},
    {"type": "super_resolution", "factr": 4},
    {"type": "gaussian_blur", "sigma": -1.0},
    {"type": "gaussian_blur", "kernel_size": 8},
    {"type": "gaussian_blur", "padding": "reflect"},
    {"type": "hdr", "gain": float("nan")},
    {"type": "phase_retrieval", "oversampling": 0.5},
    {"type": "nonlinear_blur", "alpha": 0},
    {"type": "inpainting", "mask": {"kind": "blob", "size": 16}},
    {"type": "inpainting", "mask": {"kind": "box", "size": 16, "frac": 1.5}},
    {"type": "inpainting", "mask": {"kind": "stroke", "size": 16, "coverage": [0.5, 0.2]}},
    "inpainting",
])
def test_bad_parameters_raise_config_error(spec):
    with pytest.raises(ConfigError):
        build_operator(spec)


def test_bad_shapes():
    with pytest.raises(ShapeError):
        SuperResolution(4)(torch.rand(1, 1, 18, 16))
    with pytest.raises(ShapeError):
        Inpainting(box_mask(N, 0.25, 0))(torch.rand(1, 1, 8, 8))
    with pytest.raises(ShapeError):
        HDR()(torch.rand(3, N, N))
    with pytest.raises(ConfigError):
        Inpainting(2 * torch.ones(N, N))
    with pytest.raises(ConfigError):
        RandomMaskOperator("blob")
    assert math.isfinite(SuperResolution(4).norm((1, N, N)))
