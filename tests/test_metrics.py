import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from deftmed.evaluation.metrics import (METRIC_CONVENTIONS, compute_metrics, data_misfit, psnr,
                                        ssim)
from deftmed.errors import ConfigError, ShapeError


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    gt = rng.random((4, 1, 37, 41)) * np.linspace(0.2, 1.0, 4)[:, None, None, None]
    x = gt + 0.05 * rng.standard_normal(gt.shape)
    return x, gt


def test_psnr_matches_skimage_both_conventions(pair):
    x, gt = pair
    fixed = psnr(x, gt)
    image = psnr(torch.tensor(x, dtype=torch.float32), gt[:, 0], "image")
    for i in range(len(x)):
        assert fixed[i] == pytest.approx(
            peak_signal_noise_ratio(gt[i, 0], x[i, 0], data_range=1.0), abs=1e-9)
        r = gt[i, 0].max() - gt[i, 0].min()
        assert image[i] == pytest.approx(
            peak_signal_noise_ratio(gt[i, 0], x[i, 0].astype(np.float32).astype(np.float64),
                                    data_range=r), abs=1e-6)
    assert fixed.shape == (4,) and fixed.dtype == np.float64
    assert psnr(gt, gt)[0] == np.inf


def test_ssim_matches_skimage_both_conventions(pair):
    x, gt = pair
    fixed = ssim(x, gt)
    image = ssim(x[:, 0], torch.tensor(gt[:, 0]), "image")
    for i in range(len(x)):
        ref = structural_similarity(x[i, 0], gt[i, 0], data_range=1.0)
        assert abs(fixed[i] - ref) < 1e-6
        r = gt[i, 0].max() - gt[i, 0].min()
        assert abs(image[i] - structural_similarity(x[i, 0], gt[i, 0], data_range=r)) < 1e-6
    assert ssim(gt, gt) == pytest.approx(np.ones(4))
    rgb_gt = np.random.default_rng(1).random((2, 3, 16, 16))
    rgb_x = np.clip(rgb_gt + 0.1, 0, 1)
    ref = [structural_similarity(rgb_x[i], rgb_gt[i], data_range=1.0, channel_axis=0)
           for i in range(2)]
    np.testing.assert_allclose(ssim(rgb_x, rgb_gt), ref, atol=1e-6)


def test_masked_psnr(pair):
    x, gt = pair
    mask = np.zeros(gt.shape[-2:], bool)
    mask[5:20, 5:30] = True
    got = psnr(x, gt, mask=mask)
    for i in range(len(x)):
        mse = np.mean((x[i, 0][mask] - gt[i, 0][mask]) ** 2)
        assert got[i] == pytest.approx(10 * np.log10(1.0 / mse))
    with pytest.raises(ConfigError):
        psnr(x, gt, mask=np.zeros_like(mask))
    with pytest.raises(ShapeError):
        psnr(x, gt, mask=np.ones((3, 3), bool))


def test_data_misfit_and_compute_metrics(pair):
    x, gt = pair
    y = np.ones((4, 1, 5, 7))
    ax = y * 1.1
    np.testing.assert_allclose(data_misfit(ax, torch.tensor(y)), 0.1)
    m = compute_metrics(x, gt, mask=np.ones(gt.shape[-2:]), ax=ax, y=y)
    assert set(m) == {"psnr", "ssim", "psnr_image", "ssim_image", "psnr_mask", "data_misfit"}
    np.testing.assert_allclose(m["psnr_mask"], m["psnr"])
    assert "dival" in METRIC_CONVENTIONS and "1.0" in METRIC_CONVENTIONS


def test_bad_inputs(pair):
    x, gt = pair
    with pytest.raises(ShapeError):
        psnr(x, gt[:2])
    with pytest.raises(ShapeError):
        ssim(np.zeros((1, 5, 5)), np.zeros((1, 5, 5)))
    with pytest.raises(ConfigError):
        psnr(x, gt, data_range=0)
    with pytest.raises(ConfigError):
        psnr(x, gt, data_range="max")
    with pytest.raises(ConfigError):
        data_misfit(np.ones((1, 3)), np.zeros((1, 3)))


def test_hu_metrics_known_values():
    from deftmed.data.intensity import LODOPAB
    from deftmed.evaluation.metrics import hu_metrics

    gt = np.full((2, 16, 16), LODOPAB.from_hu(-1000.0))
    gt[:, 4:12, 4:12] = LODOPAB.from_hu(40.0)  # a soft-tissue body of 64 pixels
    x = LODOPAB.from_hu(LODOPAB.to_hu(gt) + 10.0)  # +10 HU everywhere
    m = hu_metrics(x, gt, LODOPAB)
    assert m["mae_body_hu"] == pytest.approx([10.0, 10.0])
    # air at -1000 + 10 stays inside the [-1000, 1000] window: MSE = 100 over all pixels
    assert m["psnr_hu"] == pytest.approx(20 * np.log10(2000 / 10.0))
    # the soft-tissue window clips the air (-990 -> -160): error only in the body
    assert m["psnr_soft"] == pytest.approx(10 * np.log10(400 ** 2 / (100 * 64 / 256)))
    assert np.all(m["ssim_hu"] <= 1)
    same = hu_metrics(gt, gt, LODOPAB)
    assert np.all(np.isinf(same["psnr_hu"])) and np.all(same["mae_body_hu"] == 0)
