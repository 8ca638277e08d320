import time

import numpy as np
import pytest

from deftmed.data.anatomy import (LABELS, SPLIT_SEEDS, anatomical_batch, anatomical_dataset,
                                  anatomical_phantom)
from deftmed.data.intensity import LODOPAB
from deftmed.errors import ConfigError


def test_shape_dtype_reproducible_and_varied():
    a = anatomical_phantom(64, 3)
    assert a.shape == (64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, anatomical_phantom(64, 3))
    assert not np.array_equal(a, anatomical_phantom(64, 4))
    rng = np.random.default_rng(3)
    assert anatomical_phantom(32, rng).shape == (32, 32)


def test_tissue_hu_ranges():
    img, lab = anatomical_phantom(128, 7, lesions=2, return_labels=True, oversample=4)
    assert set(LABELS) <= set(lab)
    assert img[0, 0] == pytest.approx(-1000.0)       # air outside
    assert not lab["body"][0, 0] and lab["body"][64, 64]
    assert -1000 <= img.min() and img.max() <= 1100
    # pure (eroded) regions hold the documented values
    from scipy.ndimage import binary_erosion
    def core(name):
        return img[binary_erosion(lab[name], iterations=2)]
    lung = core("lung")
    assert lung.size and -900 < np.median(lung) < -800
    fat = core("fat")
    assert fat.size and -130 < np.median(fat) < -70
    muscle = core("muscle")
    assert muscle.size and 30 < np.median(muscle) < 60
    assert 40 < np.median(core("liver")) < 80
    assert 25 < np.median(core("heart")) < 60
    assert img[lab["bone"]].max() > 500
    assert lab["lung"].sum() > 0.05 * lab["body"].sum()
    for name in ("lung", "bone", "liver", "heart"):
        assert not (lab[name] & ~lab["body"]).any(), name


def test_lesions_are_low_contrast_inside_liver():
    found = 0
    for seed in range(5):
        img, lab = anatomical_phantom(128, seed, lesions=2, return_labels=True)
        if lab["lesion"].any():
            found += 1
            liver = np.median(img[lab["liver"] & ~lab["lesion"]])
            diff = abs(np.median(img[lab["lesion"]]) - liver)
            assert 10 < diff < 45
    assert found >= 3
    _, lab = anatomical_phantom(64, 0, lesions=False, return_labels=True)
    assert not lab["lesion"].any()


def test_speed_64():
    anatomical_phantom(64, 0)
    t = time.perf_counter()
    for s in range(20):
        anatomical_phantom(64, s)
    assert (time.perf_counter() - t) / 20 < 0.02


def test_splits_disjoint_and_model_range():
    tr = anatomical_dataset(3, 32, "train")
    va = anatomical_dataset(3, 32, "validation")
    te = anatomical_dataset(3, 32, "test")
    assert tr.dtype == np.float32 and tr.shape == (3, 32, 32)
    assert 0.0 <= tr.min() and tr.max() <= 1.0
    for a in (tr, va, te):
        for b in (tr, va, te):
            if a is not b:
                assert not any(np.array_equal(x, y) for x in a for y in b)
    np.testing.assert_array_equal(tr, anatomical_dataset(3, 32, "train"))
    np.testing.assert_array_equal(tr[1:], anatomical_dataset(2, 32, "train", start=1))
    hu = anatomical_batch(1, 32, SPLIT_SEEDS["test"])
    np.testing.assert_allclose(LODOPAB.from_hu(hu)[0], te[0], atol=1e-6)


def test_bad_arguments():
    for kwargs in ({"size": 4}, {"size": 32.0}, {"size": 32, "rng_or_seed": -1},
                   {"size": 32, "rng_or_seed": "a"}, {"size": 32, "oversample": 0}):
        with pytest.raises(ConfigError):
            anatomical_phantom(**kwargs)
    with pytest.raises(ConfigError):
        anatomical_dataset(1, 32, "holdout")
    with pytest.raises(ConfigError):
        anatomical_dataset(2, 32, "train", start=SPLIT_SEEDS["validation"] - 1)
