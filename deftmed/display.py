"""Showing model-range images with matplotlib: grey-scale (CT) and RGB (natural images) alike."""

from __future__ import annotations

import numpy as np


def as_display(img) -> np.ndarray:
    """``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` (C = 3) to what ``imshow`` takes: ``(H, W)``
    for one channel, ``(H, W, 3)`` clipped to [0, 1] for colour."""
    a = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] == 1:
        return a[0]
    if a.ndim == 3 and a.shape[0] == 3:
        return np.clip(a.transpose(1, 2, 0), 0.0, 1.0)
    if a.ndim == 2:
        return a
    raise ValueError(f"cannot display an image of shape {a.shape}")


def show(ax, img, vmin: float = 0.0, vmax: float = 1.0, cmap: str = "gray"):
    """``ax.imshow`` of a model-range image (colour images ignore ``cmap``/``vmin``/``vmax``,
    they are shown clipped to [0, 1])."""
    a = as_display(img)
    if a.ndim == 3:
        return ax.imshow(a)
    return ax.imshow(a, cmap=cmap, vmin=vmin, vmax=vmax)
