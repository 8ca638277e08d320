"""Random-ellipse phantoms in the style of dival's ``EllipsesDataset``.

Each phantom is a sum of ``min(Poisson(40), 70)`` ellipses with random value, axes, centre and
rotation on the square [-1, 1]^2, normalised to [0, 1]. The ellipses are described by their
parameters, so the same phantom can be rendered on any grid: simulate measurements on a finer
grid than the reconstruction grid to avoid the "inverse crime".

Reproducibility and splits: image ``i`` of split ``s`` is drawn from its own seed
``SPLIT_SEEDS[s] + i``, so a split is an infinite, indexable, deterministic sequence and
train / validation / test never share an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deftmed.errors import ConfigError

SPLIT_SEEDS = {"train": 0, "validation": 10_000_000, "test": 20_000_000}


def split_seed(split: str, index: int, seed_offset: int = 0) -> int:
    """The seed of image ``index`` of ``split``; splits are disjoint by construction."""
    if split not in SPLIT_SEEDS:
        raise ConfigError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
    if not 0 <= index < 10_000_000:
        raise ConfigError(f"image index {index} out of range [0, 1e7)")
    return SPLIT_SEEDS[split] + index + seed_offset


@dataclass(frozen=True)
class EllipseParams:
    """Parameters of one phantom: arrays of equal length, one entry per ellipse."""

    value: np.ndarray
    axis1: np.ndarray
    axis2: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    rotation: np.ndarray

    @classmethod
    def random(cls, seed: int, mean_count: float = 40.0, max_count: int = 70) -> "EllipseParams":
        rng = np.random.default_rng(seed)
        n = max(1, min(int(rng.poisson(mean_count)), max_count))
        return cls(
            value=rng.uniform(-0.4, 1.0, n),
            axis1=0.2 * rng.exponential(1.0, n),
            axis2=0.2 * rng.exponential(1.0, n),
            cx=rng.uniform(-0.9, 0.9, n),
            cy=rng.uniform(-0.9, 0.9, n),
            rotation=rng.uniform(0.0, 2 * np.pi, n),
        )


def render_ellipses(params: EllipseParams, size: int, supersample: int = 2) -> np.ndarray:
    """Render a phantom on a ``size x size`` pixel grid over [-1, 1]^2, normalised to [0, 1].

    Each pixel is the average of ``supersample^2`` point samples (partial-volume effect).
    Row 0 is the top of the image (y = +1), column 0 the left (x = -1).
    """
    m = size * supersample
    coords = (np.arange(m) + 0.5) / m * 2.0 - 1.0
    xx = coords[None, :]
    yy = -coords[:, None]
    image = np.zeros((m, m), dtype=np.float64)
    cos, sin = np.cos(params.rotation), np.sin(params.rotation)
    for k in range(len(params.value)):
        a1, a2 = max(params.axis1[k], 1e-6), max(params.axis2[k], 1e-6)
        dx, dy = xx - params.cx[k], yy - params.cy[k]
        u = (cos[k] * dx + sin[k] * dy) / a1
        v = (-sin[k] * dx + cos[k] * dy) / a2
        image += params.value[k] * ((u * u + v * v) <= 1.0)
    if supersample > 1:
        image = image.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    image -= image.min()
    peak = image.max()
    if peak > 0:
        image /= peak
    return image.astype(np.float32)


def ellipses(n: int, size: int, split: str = "train", start: int = 0,
             seed_offset: int = 0, supersample: int = 2) -> np.ndarray:
    """``n`` phantoms ``(n, size, size)`` float32 in [0, 1]: images ``start .. start+n-1``."""
    return np.stack([
        render_ellipses(EllipseParams.random(split_seed(split, start + i, seed_offset)), size,
                        supersample)
        for i in range(n)
    ]) if n > 0 else np.zeros((0, size, size), np.float32)
