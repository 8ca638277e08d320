"""Read CT DICOM slices and series in Hounsfield units; write reconstructions as a CT series.

Reading (:func:`read_dicom`) accepts one file or a folder holding one series. Stored values are
mapped to HU with RescaleSlope / RescaleIntercept; pixels equal to PixelPaddingValue (the area
outside the scanner's field of view) are set to air, -1000 HU. A folder's slices are sorted by
their position along the slice normal (ImagePositionPatient . normal), falling back to
InstanceNumber, then file name; all slices must share size, PixelSpacing, orientation and series.

Writing (:func:`write_dicom_series`) produces valid CT Image Storage files (Explicit VR Little
Endian, ImageType DERIVED\\SECONDARY, fresh UIDs) with signed 16-bit pixels, RescaleSlope 1 and
RescaleIntercept -1024. HU are rounded to the nearest integer and **clipped** to the
representable range [-33792, 31743] HU (``HU_MIN``, ``HU_MAX``), so reading a series back
reproduces the input within 0.5 HU inside that range. The folder appears complete or not at all.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from deftmed.errors import ConfigError, DataFormatError, DeftmedError, InvalidValueError, \
    ShapeError
from deftmed.fileio import atomic_path, check_writable

RESCALE_INTERCEPT = -1024.0
HU_MIN = -32768 + RESCALE_INTERCEPT  # -33792
HU_MAX = 32767 + RESCALE_INTERCEPT   # 31743
PADDING_HU = -1000.0
_TOL = 1e-3  # tolerance (mm / direction cosine) when comparing slices' geometry


def _pydicom():
    import pydicom  # imported lazily: keeps `import deftmed.data` light
    return pydicom


# ------------------------------------------------------------------------------------ read
def _read_one(path: Path):
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError:
        raise DataFormatError(f"{path} is not a DICOM file (no 'DICM' header)") from None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"cannot read DICOM file {path}: {exc}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataFormatError(f"DICOM file {path} has no pixel data "
                              f"(SOP class {ds.get('SOPClassUID', 'unknown')})")
    return ds


def _pixels_hu(ds, path: Path) -> np.ndarray:
    try:
        raw = ds.pixel_array
    except Exception as exc:  # pixel handlers raise many types (missing codec, bad length)
        raise DataFormatError(f"cannot decode pixel data of {path}: {exc}") from None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DataFormatError(f"{path} is not a grayscale image "
                              f"(SamplesPerPixel={ds.SamplesPerPixel})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    raw = raw.reshape((frames,) + raw.shape[-2:])
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    hu = raw.astype(np.float64) * slope + intercept
    padding = ds.get("PixelPaddingValue")
    if padding is not None:
        hu[raw == int(padding)] = PADDING_HU
    return hu.astype(np.float32)


def _floats(ds, keyword: str, n: int, path: Path) -> tuple[float, ...] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        values = tuple(float(v) for v in (value if n > 1 else [value]))
    except (TypeError, ValueError):
        raise DataFormatError(f"{path}: {keyword} is not numeric: {value!r}") from None
    if len(values) != n:
        raise DataFormatError(f"{path}: {keyword} must hold {n} numbers, got {value!r}")
    return values


def _candidates(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR")
    if not files:
        raise DataFormatError(f"DICOM folder {folder} is empty")
    dicom = []
    for p in files:
        with open(p, "rb") as fh:
            head = fh.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            dicom.append(p)
    if not dicom:
        raise DataFormatError(f"folder {folder} holds no DICOM files ({len(files)} other files)")
    return dicom


def read_dicom(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one DICOM file or a folder holding one series.

    In a folder, files without the DICOM header (``DICM`` at byte 128), hidden files and
    ``DICOMDIR`` are ignored; every other file must be an image of the same series.

    Returns:
        ``(volume, meta)``: ``volume`` is float32 HU of shape (N, H, W), slices ordered along
        the slice normal; ``meta`` holds ``pixel_spacing_mm`` (row, col), ``slice_thickness_mm``,
        ``slice_spacing_mm`` (from positions, None for one slice), ``positions_mm``,
        ``orientation``, ``files``, ``modality``, ``series_description``,
        ``series_instance_uid``, ``study_instance_uid``, ``patient_id``, ``window_center``,
        ``window_width``, ``sorted_by``.

    Raises:
        DataFormatError: not DICOM, no pixel data, empty folder, or slices that do not fit
            together (size, spacing, orientation, series, duplicated positions).
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"DICOM path {path} does not exist")
    files = _candidates(path) if path.is_dir() else [path]
    slices = []
    for f in files:
        ds = _read_one(f)
        slices.append((f, ds, _pixels_hu(ds, f)))

    f0, ds0, px0 = slices[0]
    shape0 = px0.shape[1:]
    spacing0 = _floats(ds0, "PixelSpacing", 2, f0)
    orient0 = _floats(ds0, "ImageOrientationPatient", 6, f0)
    series0 = ds0.get("SeriesInstanceUID")
    for f, ds, px in slices[1:]:
        if px.shape[1:] != shape0:
            raise DataFormatError(f"mixed image sizes in {path}: {f0.name} is "
                                  f"{shape0[0]}x{shape0[1]}, {f.name} is "
                                  f"{px.shape[1]}x{px.shape[2]}")
        if series0 is not None and ds.get("SeriesInstanceUID") not in (None, series0):
            raise DataFormatError(f"folder {path} mixes series: {f.name} belongs to series "
                                  f"{ds.get('SeriesInstanceUID')}, {f0.name} to {series0}")
        for key, ref, n in (("PixelSpacing", spacing0, 2),
                            ("ImageOrientationPatient", orient0, 6)):
            value = _floats(ds, key, n, f)
            if (value is None) != (ref is None) or (
                    value is not None and max(abs(a - b) for a, b in zip(value, ref)) > _TOL):
                raise DataFormatError(f"inconsistent {key} in {path}: {f0.name} has {ref}, "
                                      f"{f.name} has {value}")
        if px.shape[0] != 1:
            raise DataFormatError(f"{f} is a multi-frame image; a series folder must hold "
                                  f"single-frame slices")

    sorted_by = "single file"
    positions = None
    if len(slices) > 1:
        pos = [_floats(ds, "ImagePositionPatient", 3, f) for f, ds, _ in slices]
        inst = [ds.get("InstanceNumber") for _, ds, _ in slices]
        if orient0 is not None and all(p is not None for p in pos):
            normal = np.cross(orient0[:3], orient0[3:])
            depth = [float(np.dot(normal, p)) for p in pos]
            order = np.argsort(depth, kind="stable")
            sd = np.sort(depth)
            if np.any(np.diff(sd) < _TOL):
                raise DataFormatError(f"two slices in {path} share the same position "
                                      f"(duplicates or several acquisitions)")
            positions = [pos[i] for i in order]
            sorted_by = "ImagePositionPatient"
        elif all(i is not None and str(i) != "" for i in inst):
            order = np.argsort([int(i) for i in inst], kind="stable")
            sorted_by = "InstanceNumber"
        else:
            order = np.arange(len(slices))
            sorted_by = "file name"
        slices = [slices[i] for i in order]
    else:
        p = _floats(ds0, "ImagePositionPatient", 3, f0)
        positions = [p] if p is not None else None

    volume = np.concatenate([px for _, _, px in slices], axis=0)
    thickness = _floats(ds0, "SliceThickness", 1, f0)
    slice_spacing = None
    if positions is not None and len(positions) > 1:
        steps = np.linalg.norm(np.diff(np.asarray(positions), axis=0), axis=1)
        slice_spacing = float(np.median(steps))
    wc, ww = ds0.get("WindowCenter"), ds0.get("WindowWidth")
    meta = {
        "files": [str(f) for f, _, _ in slices],
        "pixel_spacing_mm": spacing0,
        "slice_thickness_mm": thickness[0] if thickness else None,
        "slice_spacing_mm": slice_spacing,
        "positions_mm": positions,
        "orientation": orient0,
        "sorted_by": sorted_by,
        "modality": str(ds0.get("Modality", "")),
        "series_description": str(ds0.get("SeriesDescription", "")),
        "series_instance_uid": str(series0) if series0 else None,
        "study_instance_uid": str(ds0.get("StudyInstanceUID", "")) or None,
        "patient_id": str(ds0.get("PatientID", "")),
        "window_center": _first(wc),
        "window_width": _first(ww),
    }
    return volume, meta


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


# ------------------------------------------------------------------------------------ write
def _spacing_pair(pixel_spacing_mm) -> tuple[float, float]:
    if np.ndim(pixel_spacing_mm) == 0:
        pair = (pixel_spacing_mm, pixel_spacing_mm)
    else:
        pair = tuple(pixel_spacing_mm)
    if len(pair) != 2:
        raise ConfigError(f"pixel_spacing_mm must be a number or (row, col) pair, "
                          f"got {pixel_spacing_mm!r}")
    try:
        pair = (float(pair[0]), float(pair[1]))
    except (TypeError, ValueError):
        raise ConfigError(f"pixel_spacing_mm must be numeric, got {pixel_spacing_mm!r}") from None
    if not all(math.isfinite(v) and v > 0 for v in pair):
        raise ConfigError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm!r}")
    return pair


def _ds_str(x: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    s = f"{x:.6g}"
    return s if len(s) <= 16 else f"{x:.8e}"[:16]


def write_dicom_series(images_hu, folder: str | os.PathLike, pixel_spacing_mm,
                       series_description: str, slice_thickness: float = 1.0, *,
                       slice_spacing: float | None = None,
                       patient_name: str = "Deftmed^Phantom", patient_id: str = "DEFTMED",
                       study_description: str = "deftmed reconstruction",
                       study_instance_uid: str | None = None, series_number: int = 1,
                       window_center: float | None = None, window_width: float | None = None,
                       overwrite: bool = False) -> list[Path]:
    """Write images in HU as a CT DICOM series, one file per slice, into ``folder``.

    Args:
        images_hu: (N, H, W) or (H, W) array/tensor in HU; must be finite.
        folder: output folder; created atomically. An existing folder is replaced only with
            ``overwrite=True`` and only if it holds nothing but ``.dcm`` files.
        pixel_spacing_mm: a number or (row, col) spacing in mm.
        series_description: e.g. ``"DEFT parallel-60 seed 0"``; longer than 64 characters it is
            shortened in SeriesDescription and kept whole in ImageComments.
        slice_thickness: SliceThickness in mm; ``slice_spacing`` (default: the thickness) sets
            the distance between consecutive ImagePositionPatient.
        window_center, window_width: display window in HU (both or neither).

    Returns:
        The written file paths, in slice order.
    """
    if hasattr(images_hu, "detach"):
        images_hu = images_hu.detach().cpu().numpy()
    images = np.asarray(images_hu, dtype=np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[0] == 0 or min(images.shape[1:]) == 0:
        raise ShapeError(f"DICOM series needs images of shape (N, H, W) or (H, W), "
                         f"got {tuple(np.shape(images_hu))}")
    if max(images.shape[1:]) > 65535:
        raise ShapeError(f"DICOM images are at most 65535 pixels wide, got {images.shape[1:]}")
    bad = ~np.isfinite(images)
    if bad.any():
        raise InvalidValueError(f"cannot write DICOM: images hold {int(bad.sum())} "
                                f"non-finite values (NaN/Inf)")
    row_mm, col_mm = _spacing_pair(pixel_spacing_mm)
    for name, v in (("slice_thickness", slice_thickness), ("slice_spacing", slice_spacing)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ConfigError(f"{name} must be a positive number of mm, got {v!r}")
    if (window_center is None) != (window_width is None):
        raise ConfigError("give both window_center and window_width, or neither")
    if window_width is not None and not window_width > 0:
        raise ConfigError(f"window_width must be > 0, got {window_width}")
    if not isinstance(series_description, str) or not series_description.strip():
        raise ConfigError("series_description must be a non-empty string")
    step = float(slice_spacing if slice_spacing is not None else slice_thickness)

    folder = check_writable(folder)
    if folder.exists():
        if not folder.is_dir():
            raise DeftmedError(f"cannot write DICOM series: {folder} exists and is a file")
        entries = list(folder.iterdir())
        if entries and not overwrite:
            raise DeftmedError(f"DICOM output folder {folder} exists and is not empty; "
                               f"pass overwrite=True to replace it")
        if any(not (e.is_file() and e.suffix.lower() == ".dcm") for e in entries):
            raise DeftmedError(f"refusing to replace {folder}: it holds files other than a "
                               f"DICOM series (.dcm)")

    pydicom = _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, \
        generate_uid

    stored = np.rint(np.clip(images, HU_MIN, HU_MAX) - RESCALE_INTERCEPT).astype(np.int16)
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study_uid = study_instance_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    n, h, w = stored.shape
    x0, y0 = -(w - 1) / 2.0 * col_mm, -(h - 1) / 2.0 * row_mm
    names = []
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for i in range(n):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
            ds.AccessionNumber = ""
            ds.Modality = "CT"
            ds.Manufacturer = "deftmed"
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = study_description[:64]
            ds.SeriesDescription = series_description[:64]
            ds.ImageComments = series_description
            ds.DerivationDescription = ("Reconstructed by deftmed; HU rounded to integers and "
                                        f"clipped to [{HU_MIN:.0f}, {HU_MAX:.0f}]")
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = ""
            ds.KVP = ""
            ds.SliceThickness = _ds_str(float(slice_thickness))
            ds.SpacingBetweenSlices = _ds_str(step)
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.StudyID = "1"
            ds.SeriesNumber = int(series_number)
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = i + 1
            ds.ImagePositionPatient = [_ds_str(x0), _ds_str(y0), _ds_str(i * step)]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.SliceLocation = _ds_str(i * step)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = h, w
            ds.PixelSpacing = [_ds_str(row_mm), _ds_str(col_mm)]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = _ds_str(RESCALE_INTERCEPT)
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            if window_center is not None:
                ds.WindowCenter = _ds_str(float(window_center))
                ds.WindowWidth = _ds_str(float(window_width))
            ds.BurnedInAnnotation = "NO"
            ds.PixelData = np.ascontiguousarray(stored[i]).astype("<i2").tobytes()
            name = f"CT{i + 1:05d}.dcm"
            pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
            names.append(name)
    return [folder / name for name in names]


__all__ = ["read_dicom", "write_dicom_series", "HU_MIN", "HU_MAX", "RESCALE_INTERCEPT"]
