import h5py
import numpy as np
import pytest
import torch

from deftmed.data.hdf5 import LodopabFile, read_dataset, read_lodopab, write_dataset
from deftmed.data.intensity import LODOPAB
from deftmed.errors import ConfigError, DataFormatError, ShapeError


def _lodopab_files(tmp_path, n=2):
    rng = np.random.default_rng(0)
    gt = rng.random((n, 362, 362), dtype=np.float32)
    obs = rng.random((n, 1000, 513), dtype=np.float32)
    with h5py.File(tmp_path / "ground_truth_test_000.hdf5", "w") as f:
        f.create_dataset("data", data=gt)
    with h5py.File(tmp_path / "observation_test_000.hdf5", "w") as f:
        f.create_dataset("data", data=obs)
    return gt, obs


def test_lodopab_round_trip_and_lazy(tmp_path):
    gt, obs = _lodopab_files(tmp_path)
    np.testing.assert_array_equal(read_lodopab(tmp_path / "ground_truth_test_000.hdf5"), gt)
    np.testing.assert_array_equal(read_lodopab(tmp_path / "observation_test_000.hdf5", 1), obs[1])
    with LodopabFile(tmp_path / "observation_test_000.hdf5") as f:
        assert len(f) == 2 and f.kind == "observation"
        np.testing.assert_array_equal(f[0:1], obs[0:1])


def test_lodopab_errors(tmp_path):
    with h5py.File(tmp_path / "ground_truth_train_000.hdf5", "w") as f:
        f.create_dataset("data", data=np.zeros((1, 10, 10), np.float32))
    with pytest.raises(DataFormatError, match="362"):
        read_lodopab(tmp_path / "ground_truth_train_000.hdf5")
    with h5py.File(tmp_path / "x.hdf5", "w") as f:
        f.create_dataset("images", data=np.zeros((1, 10, 10), np.float32))
    with pytest.raises(DataFormatError, match=r"keys present: \['images'\]"):
        read_lodopab(tmp_path / "x.hdf5")


def test_truncated_file(tmp_path):
    _lodopab_files(tmp_path, n=1)
    src = tmp_path / "ground_truth_test_000.hdf5"
    data = src.read_bytes()
    bad = tmp_path / "ground_truth_test_001.hdf5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="ground_truth_test_001.hdf5"):
        read_lodopab(bad)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataFormatError, match="junk.h5"):
        read_dataset(tmp_path / "junk.h5")


def test_own_format_round_trip(tmp_path):
    images = torch.rand(3, 1, 16, 16)
    sinos = np.random.default_rng(1).random((3, 1, 20, 23))
    attrs = {"geometry": {"kind": "parallel", "angles": 20}, "intensity": LODOPAB,
             "noise": {"sigma": np.float32(0.025)}, "seeds": np.arange(3)}
    p = write_dataset(tmp_path / "d.h5", images=images, sinograms=sinos, attrs=attrs)
    out = read_dataset(p)
    np.testing.assert_array_equal(out["images"], images.numpy())
    np.testing.assert_allclose(out["sinograms"], sinos.astype(np.float32))
    assert out["attrs"]["geometry"] == {"kind": "parallel", "angles": 20}
    assert out["attrs"]["intensity"]["mu_max"] == pytest.approx(LODOPAB.mu_max)
    assert out["attrs"]["seeds"] == [0, 1, 2]
    only = read_dataset(write_dataset(tmp_path / "i.h5", images=np.zeros((2, 4, 4))))
    assert only["sinograms"] is None and only["attrs"] == {}


def test_own_format_errors(tmp_path):
    with pytest.raises(ConfigError):
        write_dataset(tmp_path / "a.h5")
    with pytest.raises(ShapeError):
        write_dataset(tmp_path / "a.h5", images=np.zeros((2, 4, 4)), sinograms=np.zeros((3, 4)))
    with pytest.raises(ConfigError, match="JSON"):
        write_dataset(tmp_path / "a.h5", images=np.zeros((2, 4, 4)), attrs={"x": object()})
    assert list(tmp_path.iterdir()) == []
    _lodopab_files(tmp_path, n=1)
    with pytest.raises(DataFormatError, match="not a deftmed dataset"):
        read_dataset(tmp_path / "ground_truth_test_000.hdf5")
