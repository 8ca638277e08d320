import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from deftmed.data.dicom import HU_MAX, HU_MIN, read_dicom, write_dicom_series
from deftmed.errors import DataFormatError, DeftmedError, InvalidValueError, ShapeError

CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))


def test_read_ct_small():
    vol, meta = read_dicom(CT_SMALL)
    assert vol.shape == (1, 128, 128) and vol.dtype == np.float32
    raw = pydicom.dcmread(CT_SMALL).pixel_array
    np.testing.assert_array_equal(vol[0], raw.astype(np.float32) - 1024)
    assert meta["pixel_spacing_mm"] == pytest.approx((0.661468, 0.661468))
    assert meta["modality"] == "CT"


def test_round_trip_series(tmp_path):
    vol, meta = read_dicom(CT_SMALL)
    rng = np.random.default_rng(0)
    images = np.stack([vol[0], vol[0] + rng.uniform(-0.5, 0.5, vol[0].shape) * 20,
                       vol[0] * 0.5 - 300.3])
    images[2, 0, :3] = [HU_MIN - 50, HU_MAX + 50, -1000]   # clipped / exact
    files = write_dicom_series(images, tmp_path / "series", meta["pixel_spacing_mm"],
                               "DEFT parallel-60 test", slice_thickness=2.5,
                               window_center=40, window_width=400)
    assert len(files) == 3 and all(f.is_file() for f in files)
    back, meta2 = read_dicom(tmp_path / "series")
    expected = np.clip(images, HU_MIN, HU_MAX)
    assert np.abs(back - expected).max() <= 0.5 + 1e-3
    assert meta2["slice_spacing_mm"] == pytest.approx(2.5)
    assert meta2["sorted_by"] == "ImagePositionPatient"
    assert meta2["series_description"] == "DEFT parallel-60 test"
    assert meta2["window_center"] == 40 and meta2["window_width"] == 400
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "CT" and list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    uids = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert len(uids) == 3


def test_series_sorted_by_position_not_file_name(tmp_path):
    images = np.stack([np.full((8, 8), v, np.float32) for v in (-100, 0, 100, 200)])
    files = write_dicom_series(images, tmp_path / "s", 1.0, "sorting")
    # shuffle the file names: position, not name, decides the order
    names = [f.name for f in files]
    for f, new in zip(files, reversed(names)):
        f.rename(f.with_name("tmp_" + new))
    back, meta = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(back[:, 0, 0], [-100, 0, 100, 200])
    # InstanceNumber fallback when positions are missing
    for f in (tmp_path / "s").iterdir():
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient
        ds.save_as(f)
    back, meta = read_dicom(tmp_path / "s")
    assert meta["sorted_by"] == "InstanceNumber"
    np.testing.assert_allclose(back[:, 0, 0], [-100, 0, 100, 200])


def test_bad_inputs(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(DataFormatError, match="no pixel data"):
        read_dicom(tmp_path / "nopixels.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(DataFormatError, match="not a DICOM"):
        read_dicom(tmp_path / "text.dcm")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty"):
        read_dicom(tmp_path / "empty")
    with pytest.raises(DataFormatError, match="does not exist"):
        read_dicom(tmp_path / "nothing")
    # mixed sizes in one folder
    mixed = tmp_path / "mixed"
    write_dicom_series(np.zeros((1, 8, 8)), mixed, 1.0, "a")
    other = write_dicom_series(np.zeros((1, 10, 10)), tmp_path / "o", 1.0, "a")
    shutil.copy(other[0], mixed / "other.dcm")
    with pytest.raises(DataFormatError, match="mixed image sizes"):
        read_dicom(mixed)


def test_write_errors_leave_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(InvalidValueError):
        write_dicom_series(np.full((2, 4, 4), np.nan), out, 1.0, "x")
    with pytest.raises(ShapeError):
        write_dicom_series(np.zeros(4), out, 1.0, "x")
    calls = []

    def failing_write(path, ds, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, ds, **kw)

    real = pydicom.dcmwrite
    monkeypatch.setattr(pydicom, "dcmwrite", failing_write)
    with pytest.raises(OSError):
        write_dicom_series(np.zeros((3, 4, 4)), out, 1.0, "x")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_other_folder(tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(DeftmedError):
        write_dicom_series(np.zeros((1, 4, 4)), keep, 1.0, "x", overwrite=True)
    assert (keep / "notes.txt").read_text() == "precious"
    s = tmp_path / "s"
    write_dicom_series(np.zeros((2, 4, 4)), s, 1.0, "x")
    with pytest.raises(DeftmedError, match="overwrite"):
        write_dicom_series(np.zeros((1, 4, 4)), s, 1.0, "x")
    write_dicom_series(np.ones((1, 4, 4)), s, 1.0, "x", overwrite=True)
    assert len(list(s.iterdir())) == 1


def test_dicom_file_as_image_source():
    from pydicom.data import get_testdata_file

    from deftmed.data.datasets import open_images
    from deftmed.data.intensity import LODOPAB

    path = get_testdata_file("CT_small.dcm")
    src = open_images(path, "test", 64)
    img = src.get([0])
    assert img.shape == (1, 64, 64) and 0 <= img.min() and img.max() <= 1
    assert src.description["source"] == "dicom"
    # soft tissue (~0 HU) lands near the water value of the LoDoPaB scale
    assert abs(float(np.median(LODOPAB.to_hu(img))) - 0) < 300
