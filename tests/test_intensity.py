import numpy as np
import pytest
import torch

from deftmed.data.intensity import ELLIPSES, LODOPAB, IntensityTransform
from deftmed.errors import ConfigError


def test_lodopab_constants_and_hu_anchors():
    t = LODOPAB
    assert t.mu_max == pytest.approx(0.08135858)
    assert t.attenuation_to_hu(t.mu_water) == pytest.approx(0.0)
    assert t.attenuation_to_hu(t.mu_air) == pytest.approx(-1000.0)
    lo, hi = t.hu_range
    assert hi == pytest.approx(3071.0, abs=1e-6)
    assert lo == pytest.approx(-1001.001, abs=1e-3)
    assert ELLIPSES.mu_max == LODOPAB.mu_max


def test_round_trips_numpy_and_torch():
    t = LODOPAB
    x = np.linspace(-0.1, 1.1, 13)
    np.testing.assert_allclose(t.from_hu(t.to_hu(x)), x, atol=1e-12)
    np.testing.assert_allclose(t.from_attenuation(t.to_attenuation(x)), x, atol=1e-12)
    np.testing.assert_allclose(t.to_hu(x), t.attenuation_to_hu(t.to_attenuation(x)))
    xt = torch.linspace(0, 1, 5)
    out = t.to_hu(xt)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(t.from_hu(out), xt, atol=1e-6, rtol=0)
    # integer input promotes to float
    assert t.from_hu(np.array([0, 1000])).dtype == np.float32
    assert isinstance(t.to_hu(0.5), float)


def test_for_hu_window_matches_lodopab():
    t = IntensityTransform.for_hu_window(-1024, 3071)
    assert t.mu_max == pytest.approx(LODOPAB.mu_max, rel=1e-12)
    assert t.to_hu(1.0) == pytest.approx(3071.0)
    with pytest.raises(ConfigError):
        IntensityTransform.for_hu_window(100, 0)
    with pytest.raises(ConfigError):
        IntensityTransform.for_hu_window(-2000, 1000)


def test_dict_round_trip_and_units():
    t = IntensityTransform(mu_max=0.05, name="x")
    assert IntensityTransform.from_dict(t.to_dict()) == t
    m = IntensityTransform.from_dict({"mu_max": 81.35858, "mu_water": 20, "mu_air": 0.02,
                                      "units": "1/m"})
    assert m.mu_max == pytest.approx(LODOPAB.mu_max)
    for bad in ({}, {"mu_max": "a"}, {"mu_max": 1, "units": "HU"}, {"mu_max": 1, "extra": 2},
                {"mu_max": -1}, {"mu_max": 1, "mu_water": 0.0, "mu_air": 0.1}, [1]):
        with pytest.raises(ConfigError):
            IntensityTransform.from_dict(bad)
