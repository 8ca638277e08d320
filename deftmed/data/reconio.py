"""Reading measurements and writing reconstructions in the formats users work with.

Sinograms come as ``.npy``/``.npz`` (``(A, D)``, ``(B, A, D)`` or ``(B, 1, A, D)``) or ``.h5``
(our datasets' ``sinograms`` or LoDoPaB's ``observation`` files). Reconstructions go to
``.npy``, ``.h5``, ``.png`` or a DICOM series folder (in HU via the intensity transform). With a
posterior standard deviation, ``.npy`` also writes ``<stem>_std.npy``, ``.h5`` a ``std``
dataset, ``.png`` a second panel and DICOM a second series ``<folder>_std`` (in HU).
Every file is written atomically, and nothing is written unless all of it can be.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from deftmed.errors import DataFormatError, ShapeError
from deftmed.fileio import atomic_path, check_writable

OUTPUT_KINDS = (".npy", ".h5", ".hdf5", ".png", "dicom folder")


def load_sinograms(path: str | os.PathLike, geometry) -> torch.Tensor:
    """Measurements as a ``(B, 1, n_views, n_det)`` float32 tensor, checked against ``geometry``."""
    from deftmed.data.arrays import check_finite, load_array

    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5"):
        try:
            arr = load_array(path, "sinograms")
        except DataFormatError:
            arr = load_array(path)
    else:
        arr = load_array(path)
    check_finite(arr, f"sinogram file {path}")
    expected = tuple(geometry.sinogram_shape)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or tuple(arr.shape[1:]) != expected:
        name = f" '{geometry.name}'" if getattr(geometry, "name", None) else ""
        raise ShapeError(f"sinogram in {path} has shape {arr.shape}; geometry{name} expects "
                         f"{expected[0]} views x {expected[1]} detector pixels, i.e. "
                         f"(views, detectors) or (N, views, detectors) = (N, {expected[0]}, "
                         f"{expected[1]})")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).unsqueeze(1)


def output_kind(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".npy", ".h5", ".hdf5", ".png"):
        return suffix
    if suffix in ("", ".dcm", ".dicom"):
        return "dicom"
    raise DataFormatError(f"cannot write {path}: unsupported output type {suffix!r}; use one of "
                          f"{OUTPUT_KINDS}")


def check_output(path: str | os.PathLike) -> None:
    """Fail before any work if ``path`` has an unsupported type or cannot be written."""
    output_kind(path)
    check_writable(path)


def _std_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}_std{path.suffix}")


def write_reconstruction(path: str | os.PathLike, image: torch.Tensor, std: torch.Tensor | None,
                         intensity: dict | None, pixel_spacing_mm: float, description: str,
                         meta: dict | None = None) -> list[Path]:
    """Write images (B,1,H,W) in the model range (and an optional std map); returns paths."""
    from deftmed.data.intensity import IntensityTransform

    path = Path(path)
    kind = output_kind(path)
    check_writable(path)
    img = image.detach().cpu().numpy()[:, 0].astype(np.float32)
    sd = None if std is None else std.detach().cpu().numpy()[:, 0].astype(np.float32)
    meta = dict(meta or {}, description=description, intensity=intensity, units="model range [0,1]")
    if kind == ".npy":
        from deftmed.data.arrays import save_array
        save_array(path, img)
        if sd is None:
            return [path]
        save_array(_std_path(path), sd)
        return [path, _std_path(path)]
    if kind in (".h5", ".hdf5"):
        import h5py
        import json
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("images", data=img, compression="gzip")
                if sd is not None:
                    f.create_dataset("std", data=sd, compression="gzip")
                f.attrs["deftmed"] = json.dumps(meta, default=str)
        return [path]
    if kind == ".png":
        _write_png(path, img, sd, description)
        return [path]
    if intensity is None:
        raise DataFormatError("DICOM output needs an intensity transform (HU calibration); this "
                              "model has none: write .npy or .h5 instead")
    from deftmed.data.dicom import write_dicom_series
    it = IntensityTransform.from_dict(intensity)
    hu = it.to_hu(img)
    written = write_dicom_series(hu, path, pixel_spacing_mm, description, window_center=40,
                                 window_width=400, overwrite=True)
    if sd is not None:
        hu_per_unit = float(it.to_hu(1.0) - it.to_hu(0.0))
        written += write_dicom_series(sd * hu_per_unit - 1000.0, path.with_name(path.name + "_std"),
                                      pixel_spacing_mm, f"{description} std (HU, offset -1000)",
                                      overwrite=True)
    return written


def _write_png(path: Path, img: np.ndarray, sd: np.ndarray | None, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = img.shape[0]
    rows = 2 if sd is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(2.2 * n, 2.3 * rows), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(img[i], cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(f"#{i}", fontsize=8)
        if sd is not None:
            axes[1, i].imshow(sd[i], cmap="magma")
            axes[1, i].set_title("std", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
