"""Load and save plain arrays (``.npy``, ``.npz``, ``.h5``/``.hdf5``) safely.

Loading never unpickles (``allow_pickle=False``); every array comes back as float32 numpy.
Saving is atomic. :func:`check_finite` guards against NaN/Inf before work starts.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from deftmed.errors import ConfigError, DataFormatError, InvalidValueError
from deftmed.fileio import atomic_path

LOAD_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")
SAVE_SUFFIXES = (".npy", ".h5", ".hdf5")


def _suffix(path: Path, allowed: tuple[str, ...], action: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise DataFormatError(f"cannot {action} {path}: unsupported file type "
                              f"{suffix or '(none)'}; use one of {', '.join(allowed)}")
    return suffix


def _to_float32(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == object:
        raise DataFormatError(f"{where} holds Python objects, not numbers")
    if arr.dtype.kind not in "fiub":
        raise DataFormatError(f"{where} has non-numeric dtype {arr.dtype} "
                              f"(expected real numbers)")
    return np.asarray(arr, dtype=np.float32)


def _pickle_error(path: Path) -> DataFormatError:
    return DataFormatError(f"{path} holds a pickled object array; deftmed does not unpickle "
                           f"files (save plain numeric arrays instead)")


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Load a numeric array as float32.

    * ``.npy``: the array (``key`` must be None).
    * ``.npz``: array ``key``; without a key, the only array in the file.
    * ``.h5``/``.hdf5``: dataset ``key``; without a key, ``images`` (else ``sinograms``) of a
      deftmed dataset, LoDoPaB's ``data``, or the file's only dataset.

    Raises DataFormatError for a missing/corrupt file, unsupported suffix, missing key (listing
    the keys present), pickled objects or non-numeric data.
    """
    path = Path(path)
    suffix = _suffix(path, LOAD_SUFFIXES, "load")
    if not path.is_file():
        raise DataFormatError(f"array file {path} does not exist")
    if suffix == ".npy":
        if key is not None:
            raise ConfigError(f"{path} is a .npy file holding one array; it has no key {key!r}")
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise _pickle_error(path) from None
            raise DataFormatError(f"cannot read {path} (corrupt .npy file?): {exc}") from None
        except (OSError, EOFError) as exc:
            raise DataFormatError(f"cannot read {path} (corrupt .npy file?): {exc}") from None
        return _to_float32(arr, str(path))
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                keys = sorted(npz.files)
                if key is None:
                    if len(keys) != 1:
                        raise DataFormatError(f"{path} holds {len(keys)} arrays; choose one with "
                                              f"a key: {keys}")
                    key = keys[0]
                if key not in keys:
                    raise DataFormatError(f"{path} has no array {key!r}; keys present: {keys}")
                arr = npz[key]
        except DataFormatError:
            raise
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise _pickle_error(path) from None
            raise DataFormatError(f"cannot read {path} (corrupt .npz file?): {exc}") from None
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise DataFormatError(f"cannot read {path} (corrupt .npz file?): {exc}") from None
        return _to_float32(arr, f"{path}:{key}")
    return _load_h5(path, key)


def _load_h5(path: Path, key: str | None) -> np.ndarray:
    from deftmed.data.hdf5 import _read, is_deftmed_dataset, open_h5
    import h5py

    with open_h5(path) as f:
        datasets: list[str] = []
        f.visititems(lambda name, obj: datasets.append(name)
                     if isinstance(obj, h5py.Dataset) else None)
        if key is None:
            if is_deftmed_dataset(f):
                key = "images" if "images" in f else "sinograms"
            elif "data" in f:
                key = "data"
            elif len(datasets) == 1:
                key = datasets[0]
            else:
                raise DataFormatError(f"{path} holds {len(datasets)} datasets; choose one with "
                                      f"a key: {sorted(datasets)}")
        if key not in datasets:
            raise DataFormatError(f"{path} has no dataset {key!r}; keys present: "
                                  f"{sorted(datasets)}")
        arr = _read(f[key], path)
    return _to_float32(arr, f"{path}:{key}")


def save_array(path: str | os.PathLike, array, meta: Mapping[str, Any] | None = None, *,
               kind: str = "images") -> Path:
    """Save an array atomically as ``.npy`` or ``.h5``/``.hdf5`` (float32).

    ``.h5`` files use deftmed's dataset format (:func:`deftmed.data.hdf5.write_dataset`): the
    array is stored as ``kind`` (``"images"`` or ``"sinograms"``, first axis = sample) with
    ``meta`` as JSON metadata. ``.npy`` files carry no metadata; passing ``meta`` with a
    ``.npy`` path is a ConfigError rather than silently dropping it.
    """
    path = Path(path)
    suffix = _suffix(path, SAVE_SUFFIXES, "save")
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = _to_float32(np.asarray(array), "array to save")
    if suffix == ".npy":
        if meta:
            raise ConfigError(f"{path}: .npy files cannot hold metadata; save as .h5 instead")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        return path
    if kind not in ("images", "sinograms"):
        raise ConfigError(f"kind must be 'images' or 'sinograms', got {kind!r}")
    from deftmed.data.hdf5 import write_dataset

    return write_dataset(path, attrs=meta, **{kind: arr})


def check_finite(array, what: str = "array"):
    """Raise InvalidValueError if ``array`` (numpy or torch) holds NaN or Inf; return it."""
    if hasattr(array, "detach"):
        import torch

        t = array.detach()
        if not t.is_floating_point() and not t.is_complex():
            return array
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        total = t.numel()
    else:
        a = np.asarray(array)
        if a.dtype.kind not in "fc":
            return array
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        total = a.size
    if n_nan or n_inf:
        raise InvalidValueError(f"{what} holds {n_nan} NaN and {n_inf} Inf values "
                                f"(of {total})")
    return array


__all__ = ["load_array", "save_array", "check_finite", "LOAD_SUFFIXES", "SAVE_SUFFIXES"]
