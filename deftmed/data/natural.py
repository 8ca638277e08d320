"""Natural colour images for the small natural-image tasks: crops of scikit-image's photographs.

scikit-image ships a handful of colour photographs with the package (no download). The splits
are made **by source image**, so validation and test crops come from photographs the prior and
the h-transforms never saw:

=========== ===========================================================================
train       astronaut, rocket, hubble_deep_field, immunohistochemistry, retina,
            stereo_motorcycle (both frames of the stereo pair)
validation  coffee
test        chelsea (the cat)
=========== ===========================================================================

Crop ``i`` of a split is drawn from the seed ``(split, i)``: a source image (uniformly, so the
large retina image does not dominate), a square side between ``MIN_SIDE`` pixels and the image's short side (log-uniform),
a position, and (train only) a horizontal flip; it is resized to ``image_size`` with
antialiasing. Images are ``(3, H, W)`` float32 in the model range [0, 1] (RGB / 255).
This is a CPU-scale stand-in for ImageNet, not a substitute: seven training photographs give a
prior of textures and colours, not of objects.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from deftmed.errors import ConfigError

NATURAL_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
              "stereo_motorcycle:0", "stereo_motorcycle:1"),
    "validation": ("coffee",),
    "test": ("chelsea",),
}
MIN_SIDE = 64
_SPLIT_SEEDS = {"train": 31_000_000, "validation": 32_000_000, "test": 33_000_000}


@functools.lru_cache(maxsize=None)
def source_image(name: str) -> np.ndarray:
    """One scikit-image photograph as ``(3, H, W)`` float32 in [0, 1] (``name:k`` picks item
    ``k`` of a function returning several images)."""
    import skimage.data

    base, _, item = name.partition(":")
    try:
        img = getattr(skimage.data, base)()
    except (AttributeError, ModuleNotFoundError, OSError) as exc:
        raise ConfigError(f"scikit-image image {base!r} is not available offline: {exc}") from None
    if isinstance(img, tuple):
        img = img[int(item or 0)]
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] < 3:
        raise ConfigError(f"scikit-image image {name!r} is not a colour image")
    return np.ascontiguousarray(img[..., :3].transpose(2, 0, 1), dtype=np.float32) / 255.0


def natural_crop(split: str, index: int, size: int) -> np.ndarray:
    """Crop ``index`` of ``split`` as ``(3, size, size)`` float32 (see the module notes)."""
    if split not in NATURAL_SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {sorted(NATURAL_SPLITS)}")
    rng = np.random.default_rng(_SPLIT_SEEDS[split] + int(index))
    names = NATURAL_SPLITS[split]
    img = source_image(names[int(rng.integers(len(names)))])
    h, w = img.shape[1:]
    short = min(h, w)
    side = int(round(np.exp(rng.uniform(np.log(min(MIN_SIDE, short)), np.log(short)))))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = torch.from_numpy(img[:, top:top + side, left:left + side].copy())
    if split == "train" and rng.random() < 0.5:
        crop = crop.flip(-1)
    out = torch.nn.functional.interpolate(crop[None], size=(size, size), mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    return out.clamp(0, 1).numpy()
