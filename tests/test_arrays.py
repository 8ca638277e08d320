import h5py
import numpy as np
import pytest
import torch

from deftmed.data.arrays import check_finite, load_array, save_array
from deftmed.errors import ConfigError, DataFormatError, InvalidValueError


def test_npy_npz_round_trip(tmp_path):
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    p = save_array(tmp_path / "a.npy", a)
    out = load_array(p)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, a)
    np.savez(tmp_path / "b.npz", x=a, y=a * 2)
    np.testing.assert_array_equal(load_array(tmp_path / "b.npz", "y"), a * 2)
    with pytest.raises(DataFormatError, match=r"\['x', 'y'\]"):
        load_array(tmp_path / "b.npz")
    with pytest.raises(DataFormatError, match="keys present"):
        load_array(tmp_path / "b.npz", "z")
    np.savez(tmp_path / "c.npz", only=a)
    np.testing.assert_array_equal(load_array(tmp_path / "c.npz"), a)


def test_h5_round_trip_with_meta(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    p = save_array(tmp_path / "x.h5", x, meta={"what": "test"}, kind="sinograms")
    np.testing.assert_array_equal(load_array(p), x.numpy())
    np.testing.assert_array_equal(load_array(p, "sinograms"), x.numpy())
    with h5py.File(tmp_path / "ground_truth_test_000.hdf5", "w") as f:
        f.create_dataset("data", data=np.ones((1, 362, 362)))
    assert load_array(tmp_path / "ground_truth_test_000.hdf5").shape == (1, 362, 362)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"] = np.ones(3)
        f["b"] = np.ones(3)
    with pytest.raises(DataFormatError, match=r"\['a', 'b'\]"):
        load_array(tmp_path / "two.h5")


def test_load_errors(tmp_path):
    with pytest.raises(DataFormatError, match="unsupported"):
        load_array(tmp_path / "x.txt")
    with pytest.raises(DataFormatError, match="does not exist"):
        load_array(tmp_path / "x.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="pickle"):
        load_array(tmp_path / "obj.npy")
    np.save(tmp_path / "ok.npy", np.zeros((100, 100)))
    data = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[:1000])
    with pytest.raises(DataFormatError, match="cut.npy"):
        load_array(tmp_path / "cut.npy")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataFormatError, match="bad.npz"):
        load_array(tmp_path / "bad.npz")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(DataFormatError, match="non-numeric"):
        load_array(tmp_path / "s.npy")


def test_save_errors_leave_nothing(tmp_path):
    with pytest.raises(DataFormatError):
        save_array(tmp_path / "a.txt", np.zeros(3))
    with pytest.raises(ConfigError):
        save_array(tmp_path / "a.npy", np.zeros(3), meta={"x": 1})
    with pytest.raises(DataFormatError):
        save_array(tmp_path / "a.npy", np.array([object()]))
    assert list(tmp_path.iterdir()) == []


def test_check_finite():
    a = np.array([1.0, np.nan, np.inf, -np.inf])
    with pytest.raises(InvalidValueError, match="1 NaN and 2 Inf"):
        check_finite(a, "sinogram")
    with pytest.raises(InvalidValueError, match="image holds 1 NaN"):
        check_finite(torch.tensor([0.0, float("nan")]), "image")
    ok = np.arange(3)
    assert check_finite(ok) is ok
    check_finite(torch.ones(2))
