"""HDF5 data files: LoDoPaB-CT's layout (read) and deftmed's own dataset format (read/write).

LoDoPaB-CT ships ``ground_truth_{train,validation,test}_NNN.hdf5`` (dataset ``data``, shape
(N, 362, 362), attenuation in the model range, mu_max = 81.35858 / m) and ``observation_*``
(dataset ``data``, shape (N, 1000, 513), post-log line integrals). :func:`read_lodopab` reads a
whole file or a slice of it; :class:`LodopabFile` reads lazily.

deftmed's format holds optional ``images`` (N, ...) and ``sinograms`` (N, ...) float32
datasets, and a JSON metadata string in the root attribute ``deftmed_metadata`` (geometry dict,
intensity transform, noise model, provenance ...). Root attribute ``format`` is
``"deftmed-dataset"``, ``format_version`` is 1. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deftmed.errors import ConfigError, DataFormatError, ShapeError
from deftmed.fileio import atomic_path

FORMAT_NAME = "deftmed-dataset"
FORMAT_VERSION = 1
METADATA_ATTR = "deftmed_metadata"
LODOPAB_KEY = "data"
LODOPAB_SHAPES = {"ground_truth": (362, 362), "observation": (1000, 513)}


def _h5py():
    import h5py
    return h5py


def open_h5(path: str | os.PathLike):
    """Open an HDF5 file read-only; a missing, truncated or non-HDF5 file -> DataFormatError."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"HDF5 file {path} does not exist")
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DataFormatError(f"cannot open {path} as HDF5 (truncated or corrupt file?): "
                              f"{exc}") from None


def _keys(f) -> list[str]:
    return sorted(f.keys())


def _read(dset, path: Path, index=()) -> np.ndarray:
    try:
        return np.asarray(dset[index])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataFormatError(f"cannot read dataset {dset.name} from {path} "
                              f"(truncated or corrupt file?): {exc}") from None


def _lodopab_kind(path: Path) -> str | None:
    for kind in LODOPAB_SHAPES:
        if path.name.startswith(kind + "_"):
            return kind
    return None


class LodopabFile:
    """Lazy reader of one LoDoPaB-CT HDF5 file: ``len(f)``, ``f[i]``, ``f[a:b]`` (float32).

    Use as a context manager (or call :meth:`close`).
    """

    def __init__(self, path: str | os.PathLike, key: str = LODOPAB_KEY):
        self.path = Path(path)
        self._file = open_h5(self.path)
        try:
            if key not in self._file:
                raise DataFormatError(f"{self.path} has no dataset {key!r}; keys present: "
                                      f"{_keys(self._file)}")
            dset = self._file[key]
            if not hasattr(dset, "shape") or len(dset.shape) != 3:
                raise DataFormatError(f"{self.path}:{key} must be a 3-D dataset (N, H, W), "
                                      f"got shape {getattr(dset, 'shape', None)}")
            kind = _lodopab_kind(self.path)
            if kind and tuple(dset.shape[1:]) != LODOPAB_SHAPES[kind]:
                raise DataFormatError(f"{self.path}: a LoDoPaB {kind} file holds (N, "
                                      f"{LODOPAB_SHAPES[kind][0]}, {LODOPAB_SHAPES[kind][1]}) "
                                      f"arrays, got {tuple(dset.shape)}")
        except BaseException:
            self._file.close()
            raise
        self._dset = dset
        self.kind = kind
        self.shape = tuple(dset.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        return _read(self._dset, self.path, index).astype(np.float32, copy=False)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "LodopabFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_lodopab(path: str | os.PathLike, index: int | slice | None = None) -> np.ndarray:
    """Read a LoDoPaB-CT HDF5 file (dataset ``data``) as float32; ``index`` selects slices.

    Note that LoDoPaB's last file of each split is zero-padded to 128 samples; trailing
    all-zero slices are returned as they are.
    """
    with LodopabFile(path) as f:
        return f[slice(None) if index is None else index]


# ------------------------------------------------------------------------- deftmed format
def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _as_array(x, name: str) -> np.ndarray | None:
    if x is None:
        return None
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise DataFormatError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ShapeError(f"{name} must have shape (N, ...) with at least 2 dims, "
                         f"got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def write_dataset(path: str | os.PathLike, images=None, sinograms=None,
                  attrs: Mapping[str, Any] | None = None, *, compression: str | None = "gzip"
                  ) -> Path:
    """Write images and/or sinograms (first axis = sample) with JSON metadata, atomically.

    ``attrs`` must be JSON-serialisable (numpy scalars/arrays and objects with ``to_dict`` are
    converted). Returns the path written.
    """
    images = _as_array(images, "images")
    sinograms = _as_array(sinograms, "sinograms")
    if images is None and sinograms is None:
        raise ConfigError("write_dataset needs images, sinograms or both")
    if images is not None and sinograms is not None and len(images) != len(sinograms):
        raise ShapeError(f"images and sinograms must hold as many samples: "
                         f"{len(images)} vs {len(sinograms)}")
    try:
        meta_json = json.dumps(dict(attrs or {}), default=_json_default, sort_keys=True,
                               allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"dataset metadata is not JSON serialisable: {exc}") from None
    h5py = _h5py()
    path = Path(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs[METADATA_ATTR] = meta_json
            for name, arr in (("images", images), ("sinograms", sinograms)):
                if arr is None:
                    continue
                chunks = (1,) + arr.shape[1:] if arr.shape[0] and arr.size else None
                f.create_dataset(name, data=arr, chunks=chunks,
                                 compression=compression if chunks else None)
    return path


def is_deftmed_dataset(f) -> bool:
    """Whether an open h5py File is in deftmed's format."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    return fmt == FORMAT_NAME


def read_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Read a deftmed dataset file.

    Returns ``{"images": array or None, "sinograms": array or None, "attrs": dict}``
    (arrays float32).
    """
    path = Path(path)
    with open_h5(path) as f:
        if not is_deftmed_dataset(f):
            raise DataFormatError(f"{path} is not a deftmed dataset file (root attribute "
                                  f"format != {FORMAT_NAME!r}); keys present: {_keys(f)}")
        version = int(f.attrs.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise DataFormatError(f"{path} has dataset format version {version}; this deftmed "
                                  f"reads up to {FORMAT_VERSION}")
        if "images" not in f and "sinograms" not in f:
            raise DataFormatError(f"{path} holds neither 'images' nor 'sinograms'; keys "
                                  f"present: {_keys(f)}")
        raw = f.attrs.get(METADATA_ATTR, "{}")
        if isinstance(raw, bytes):
            raw = raw.decode()
        try:
            attrs = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: metadata attribute is not valid JSON: "
                                  f"{exc}") from None
        out: dict[str, Any] = {"attrs": attrs}
        for name in ("images", "sinograms"):
            out[name] = (_read(f[name], path).astype(np.float32, copy=False)
                         if name in f else None)
    return out


__all__ = ["read_lodopab", "LodopabFile", "write_dataset", "read_dataset", "open_h5",
           "is_deftmed_dataset", "LODOPAB_SHAPES", "FORMAT_NAME"]
