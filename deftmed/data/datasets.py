"""Image sources: where training and test images come from.

An image source is an indexable, deterministic collection of 2D images in the model range
[0, 1]: generated phantoms (``ellipses``, ``anatomy``) for a split, or images from a ``.npy``,
``.npz`` or ``.h5`` file or a folder of such files / PNGs. Phantoms can be rendered at a finer
``size`` than the reconstruction grid for simulating measurements.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from deftmed.errors import ConfigError, DataFormatError, InvalidValueError

log = logging.getLogger(__name__)
PHANTOM_KINDS = ("ellipses", "anatomy", "natural")  # generated on demand, any split


class ImageSource:
    """Base class: ``get(indices, size=None) -> (n, H, W)`` (or ``(n, C, H, W)`` for
    ``channels > 1``) float32 in the model range."""

    image_size: int
    description: dict
    channels: int = 1

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def get(self, indices, size: int | None = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def tensor(self, indices, size: int | None = None, device="cpu") -> torch.Tensor:
        """Images as a ``(n, C, H, W)`` float32 tensor."""
        arr = torch.from_numpy(self.get(indices, size))
        return (arr.unsqueeze(1) if arr.ndim == 3 else arr).to(device)


class PhantomSource(ImageSource):
    """Generated phantoms of one split; image ``i`` is always the same image."""

    def __init__(self, kind: str, image_size: int, split: str = "train", length: int = 32000,
                 cache: bool = True):
        if kind not in PHANTOM_KINDS:
            raise ConfigError(f"unknown phantom kind {kind!r}; use one of {PHANTOM_KINDS}")
        self.kind, self.image_size, self.split, self.length = kind, int(image_size), split, int(length)
        self.channels = 3 if kind == "natural" else 1
        self._cache: dict[tuple[int, int], np.ndarray] = {} if cache else None
        self.description = {"source": "phantom", "kind": kind, "split": split,
                            "image_size": self.image_size, "length": self.length}

    def __len__(self) -> int:
        return self.length

    def _render(self, index: int, size: int) -> np.ndarray:
        if self.kind == "natural":
            from deftmed.data.natural import natural_crop
            return natural_crop(self.split, index, size)
        if self.kind == "ellipses":
            from deftmed.data.phantoms import EllipseParams, render_ellipses, split_seed
            return render_ellipses(EllipseParams.random(split_seed(self.split, index)), size)
        from deftmed.data.anatomy import anatomical_dataset
        return anatomical_dataset(1, size, self.split, start=index)[0]

    def get(self, indices, size: int | None = None) -> np.ndarray:
        size = int(size or self.image_size)
        out = []
        for i in np.asarray(indices, dtype=np.int64).reshape(-1):
            if not 0 <= i < self.length:
                raise ConfigError(f"image index {i} outside the {self.length} images of "
                                  f"split {self.split!r}")
            key = (int(i), size)
            img = self._cache.get(key) if self._cache is not None else None
            if img is None:
                img = self._render(int(i), size)
                if self._cache is not None:
                    self._cache[key] = img
            out.append(img)
        if not out:
            return np.zeros((0,) + ((self.channels,) if self.channels > 1 else ()) + (size, size),
                            np.float32)
        return np.stack(out)


class ArraySource(ImageSource):
    """Images held in memory (loaded from files); resized by area averaging when asked."""

    def __init__(self, images: np.ndarray, description: dict):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 2:
            images = images[None]
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[1] == 3)):
            raise DataFormatError(f"expected images of shape (N, H, W) or (N, 3, H, W), got "
                                  f"{images.shape}")
        if images.shape[-2] != images.shape[-1]:
            raise DataFormatError(f"deftmed needs square images, got {images.shape[-2:]} ")
        self.channels = 3 if images.ndim == 4 else 1
        bad = ~np.isfinite(images)
        if bad.any():
            raise InvalidValueError(f"images contain {int(bad.sum())} NaN/Inf values")
        self.images = images
        self.image_size = images.shape[-1]
        self.description = dict(description, n_images=len(images), image_size=self.image_size)

    def __len__(self) -> int:
        return len(self.images)

    def get(self, indices, size: int | None = None) -> np.ndarray:
        imgs = self.images[np.asarray(indices, dtype=np.int64).reshape(-1)]
        if size and size != self.image_size:
            imgs = resize_images(imgs, size)
        return imgs


def dataset_intensity(kind: str) -> dict | None:
    """The intensity transform (as a dict) that a dataset kind's model range means (None for
    kinds without one, e.g. natural images or arbitrary files)."""
    if kind == "ellipses":
        from deftmed.data.intensity import ELLIPSES
        return ELLIPSES.to_dict()
    if kind in ("anatomy", "lodopab", "aapm"):
        # anatomical_dataset's default mapping; the LoDoPaB scale; DICOM HU read with it
        from deftmed.data.intensity import LODOPAB
        return LODOPAB.to_dict()
    return None


def _colour_source(path: Path, image_size: int | None) -> ArraySource:
    """A folder of colour photographs (PNG/JPEG, e.g. ImageNet validation images): each is
    centre-cropped to a square and resized to ``image_size`` (antialiased), RGB in [0, 1]."""
    from PIL import Image

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise DataFormatError(f"folder {path} holds no .png/.jpg/.jpeg images")
    out = []
    for f in files:
        try:
            img = Image.open(f).convert("RGB")
        except OSError as exc:
            raise DataFormatError(f"{f}: not a readable image ({exc})") from None
        w, h = img.size
        side = min(w, h)
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                        (h - side) // 2 + side))
        if image_size:
            img = img.resize((image_size, image_size), Image.BICUBIC, reducing_gap=None)
        out.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return ArraySource(np.clip(np.stack(out), 0, 1), {"source": "files", "path": str(path),
                                                       "files": len(files), "colour": True})


def _dicom_source(path: Path, image_size: int | None) -> ArraySource:
    """A DICOM file or series folder (e.g. AAPM/Mayo): HU -> model range with the LoDoPaB
    intensity transform (the one the CT priors use), clipped to [0, 1], resized if asked."""
    from deftmed.data.dicom import read_dicom
    from deftmed.data.intensity import LODOPAB

    volume, meta = read_dicom(path)
    images = np.clip(LODOPAB.from_hu(volume), 0.0, 1.0).astype(np.float32)
    if images.shape[1] != images.shape[2]:
        raise DataFormatError(f"DICOM images in {path} are not square: {images.shape[1:]}")
    desc = {"source": "dicom", "path": str(path), "files": len(meta.get("files", [])),
            "intensity": "lodopab"}
    if image_size and images.shape[-1] != image_size:
        images = resize_images(images, image_size)
    return ArraySource(images, desc)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (N, H, W) or (N, C, H, W) images with antialiasing (area-like)."""
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    grey = t.ndim == 3
    out = torch.nn.functional.interpolate(t.unsqueeze(1) if grey else t, size=(size, size),
                                          mode="bilinear", antialias=True, align_corners=False)
    return (out[:, 0] if grey else out).numpy()


def _load_file_images(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".png":
        import matplotlib.image as mpimg
        img = mpimg.imread(path)
        return (img[..., :3].mean(-1) if img.ndim == 3 else img).astype(np.float32)
    from deftmed.data.arrays import load_array
    return load_array(path)


def open_images(spec: str, split: str = "train", image_size: int | None = None,
                length: int | None = None, channels: int = 1) -> ImageSource:
    """An image source from a phantom name or a file / folder path.

    ``ellipses`` / ``anatomy``: generated phantoms of ``split`` (``length`` images, default
    32000 for train and 1000 otherwise). A path: a ``.npy``/``.npz``/``.h5`` file, or a folder of
    them or of PNGs, whose values must already be in the model range [0, 1]; with
    ``channels=3`` a folder of colour PNG/JPEG photographs (centre-cropped, resized). A DICOM
    file or series folder is read in HU and mapped with the LoDoPaB intensity transform.
    """
    if spec in PHANTOM_KINDS:
        if image_size is None:
            raise ConfigError(f"phantom source {spec!r} needs an image size")
        return PhantomSource(spec, image_size, split,
                             length or (32000 if split == "train" else 1000))
    path = Path(spec)
    if not path.exists():
        raise DataFormatError(f"image source {spec!r} is neither a phantom kind {PHANTOM_KINDS} "
                              "nor an existing file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in
                   (".npy", ".npz", ".h5", ".hdf5", ".png")) if path.is_dir() else [path]
    if channels == 3 and path.is_dir():
        return _colour_source(path, image_size)
    if (path.is_dir() and not files) or path.suffix.lower() in (".dcm", ".ima"):
        return _dicom_source(path, image_size)
    if not files:
        raise DataFormatError(f"folder {path} holds no .npy/.npz/.h5/.png images")
    arrays = []
    for f in files:
        a = _load_file_images(f)
        arrays.append(a[None] if a.ndim == 2 else a.reshape(-1, *a.shape[-2:]))
    try:
        images = np.concatenate(arrays)
    except ValueError:
        raise DataFormatError(f"images in {path} have different sizes") from None
    lo, hi = float(images.min()), float(images.max())
    if lo < -0.05 or hi > 1.5:
        raise InvalidValueError(f"images in {path} range over [{lo:.3g}, {hi:.3g}]; deftmed "
                                "expects the model range [0, 1] (convert HU with IntensityTransform)")
    source = ArraySource(images, {"source": "files", "path": str(path), "files": len(files)})
    if image_size and source.image_size != image_size:
        log.warning("resizing images from %d to %d pixels", source.image_size, image_size)
        source = ArraySource(resize_images(images, image_size), source.description)
    return source
