"""A real CT slice through the pipeline: pydicom's bundled ``CT_small.dcm`` (128x128, HU) ->
model range -> 64x64 ground truth -> sparse-view sinogram for ``parallel64-20`` -> FBP, and DEFT
with a few steps when the shipped weights are installed (or ``DEFTMED_TEST_PRIOR`` /
``DEFTMED_TEST_H`` point to stand-ins)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deftmed.data.dicom import read_dicom
from deftmed.data.intensity import LODOPAB
from deftmed.evaluation.metrics import psnr, ssim
from deftmed.methods.fbp import FBPReconstructor
from deftmed.physics.geometry import ScanGeometry
from deftmed.physics.noise import load_noise
from deftmed.physics.raytransform import RayTransform

ROOT = Path(__file__).resolve().parents[1]
PRIOR = os.environ.get("DEFTMED_TEST_PRIOR", "prior-ellipses64")
H = os.environ.get("DEFTMED_TEST_H", "deft-ellipses64-sv20")


@pytest.fixture(scope="module")
def real_case():
    data = pytest.importorskip("pydicom.data")
    path = data.get_testdata_file("CT_small.dcm")   # never get_testdata_files (network)
    if path is None:
        pytest.skip("pydicom's CT_small.dcm test file is not installed")
    volume, meta = read_dicom(path)
    assert volume.shape == (1, 128, 128) and meta["modality"] == "CT"
    hu = np.clip(volume[0], *LODOPAB.hu_range)
    fine = torch.from_numpy(np.asarray(LODOPAB.from_hu(hu), np.float32))[None, None]
    geometry = ScanGeometry.from_yaml(ROOT / "geometries" / "parallel64-20.yaml")
    x = torch.nn.functional.interpolate(fine, size=geometry.shape, mode="bilinear",
                                        antialias=True, align_corners=False)
    noise = load_noise({"type": "gaussian", "relative": 0.025})
    clean = RayTransform(geometry.scaled(128))(fine)
    y = noise.sample(clean, torch.Generator().manual_seed(0))
    return geometry, RayTransform(geometry), noise, x, y


def test_real_slice_to_model_range(real_case):
    geometry, op, noise, x, y = real_case
    assert x.shape == (1, 1, 64, 64) and y.shape == (1, 1, *geometry.sinogram_shape)
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    hu = LODOPAB.to_hu(x.numpy())
    assert -1100 < hu.min() < -500 and 200 < hu.max() < 3100   # air and dense tissue both present


def test_real_slice_fbp(real_case):
    geometry, op, noise, x, y = real_case
    rec = FBPReconstructor("Hann", 1.0).reconstruct(y, op, noise)
    assert rec.image.shape == x.shape and torch.isfinite(rec.image).all()
    assert float(psnr(rec.image, x)[0]) > 22.0
    assert float(ssim(rec.image, x)[0]) > 0.3


def test_real_slice_deft(real_case):
    from deftmed.errors import CheckpointError
    from deftmed.methods.loading import load_deft

    try:
        method, h_noise, _ = load_deft(H, PRIOR, "cpu", steps=4, eta=0.5, samples=2)
    except CheckpointError as exc:
        pytest.skip(f"DEFT weights not available: {exc}")
    geometry, op, noise, x, y = real_case
    rec = method.reconstruct(y, op, h_noise, torch.Generator().manual_seed(0))
    assert rec.image.shape == x.shape and rec.std.shape == x.shape
    assert torch.isfinite(rec.image).all() and torch.isfinite(rec.std).all()
    assert float(rec.std.min()) >= 0.0
