"""Image quality metrics: PSNR, SSIM and data misfit, batched, in float64.

See :data:`METRIC_CONVENTIONS` (printed in every report) for the exact definitions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deftmed.errors import ConfigError, ShapeError

METRIC_CONVENTIONS = """\
Metric conventions (deftmed)
- Images are compared in the model range [0, 1] (1 = the dataset's declared mu_max), in float64,
  one value per image; tables report mean +- standard deviation over images.
- PSNR = 10 log10(R^2 / MSE). Primary: fixed data range R = 1.0 on the model range.
  Also reported: the per-image-range variant (dival / LoDoPaB convention),
  R = max(ground truth) - min(ground truth) of each image. With a mask (e.g. the body), the MSE
  and the per-image range use only the pixels inside the mask.
- SSIM as scikit-image's structural_similarity defaults: 7x7 uniform window, K1 = 0.01,
  K2 = 0.03, sample covariance (N - 1 normalisation), no Gaussian weighting, mean over the
  valid region (the 3-pixel border is excluded); multi-channel images average the channels.
  Same two data-range conventions as PSNR.
- Data misfit = ||A x - y||_2 / ||y||_2 per measurement (relative residual of the sinogram).
- HU metrics (protocols with `metrics.hu`, e.g. anatomy64-sv20): both images are converted to
  Hounsfield units with the dataset's intensity transform. psnr_hu / ssim_hu: both clipped to
  the display window (default [-1000, 1000] HU), R = the window width. psnr_soft: the same in
  the soft-tissue window W400/L40 ([-160, 240] HU, R = 400). mae_body_hu: mean absolute error
  in HU over the body (ground truth above -500 HU).
"""

#: the windows and body threshold of the HU metrics (overridable per protocol)
HU_DEFAULTS = {"window": (-1000.0, 1000.0), "soft_tissue": (-160.0, 240.0),
               "body_threshold": -500.0}


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub":
        raise ShapeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _as_bchw(x, name: str) -> np.ndarray:
    """(H, W) -> (1, 1, H, W); (B, H, W) -> (B, 1, H, W); (B, C, H, W) unchanged."""
    arr = _to_numpy(x, name)
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        return arr
    raise ShapeError(f"{name} must have shape (H, W), (B, H, W) or (B, C, H, W), "
                     f"got {arr.shape}")


def _pair(x, gt) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_bchw(x, "reconstruction"), _as_bchw(gt, "ground truth")
    if a.shape != b.shape:
        raise ShapeError(f"reconstruction and ground truth shapes differ: "
                         f"{tuple(np.shape(x))} vs {tuple(np.shape(gt))}")
    return a, b


def _mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    m = _to_numpy(mask, "mask") != 0
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    try:
        m = np.broadcast_to(m, shape)
    except ValueError:
        raise ShapeError(f"mask shape {tuple(np.shape(mask))} does not fit images of shape "
                         f"{shape}") from None
    if not m.reshape(shape[0], -1).any(axis=1).all():
        raise ConfigError("mask is empty for at least one image")
    return m


def _data_range(gt: np.ndarray, data_range, mask=None) -> np.ndarray:
    """Per-image data range: a fixed number, or ``"image"`` for max(gt) - min(gt)."""
    b = gt.shape[0]
    if isinstance(data_range, str):
        if data_range != "image":
            raise ConfigError(f"data_range must be a number or 'image', got {data_range!r}")
        flat = gt.reshape(b, -1)
        if mask is not None:
            m = mask.reshape(b, -1)
            hi = np.where(m, flat, -np.inf).max(axis=1)
            lo = np.where(m, flat, np.inf).min(axis=1)
        else:
            hi, lo = flat.max(axis=1), flat.min(axis=1)
        return hi - lo
    r = float(data_range)
    if not r > 0:
        raise ConfigError(f"data_range must be > 0, got {data_range}")
    return np.full(b, r)


def psnr(x, gt, data_range: float | str = 1.0, mask=None) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) per image.

    Args:
        x, gt: reconstruction and ground truth, (B, C, H, W), (B, H, W) or (H, W), numpy or
            torch.
        data_range: fixed range (default 1.0, the model range) or ``"image"`` for the dival
            convention max(gt) - min(gt) per image (inside ``mask`` if given).
        mask: optional boolean mask broadcastable to the images (e.g. the body); the MSE uses
            only the pixels inside it.

    Returns:
        float64 array of shape (B,); +inf where the images are equal.
    """
    a, b = _pair(x, gt)
    m = _mask(mask, a.shape)
    sq = (a - b) ** 2
    n = a.shape[0]
    if m is None:
        mse = sq.reshape(n, -1).mean(axis=1)
    else:
        mf = m.reshape(n, -1)
        mse = (sq.reshape(n, -1) * mf).sum(axis=1) / mf.sum(axis=1)
    r = _data_range(b, data_range, m)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(r ** 2 / mse)


def ssim(x, gt, data_range: float | str = 1.0, *, win_size: int = 7, k1: float = 0.01,
         k2: float = 0.03, use_sample_covariance: bool = True) -> np.ndarray:
    """Mean structural similarity per image, matching ``skimage.metrics.structural_similarity``
    with its defaults (uniform ``win_size`` window, sample covariance); channels are averaged
    as skimage does with ``channel_axis``.

    ``data_range`` as in :func:`psnr` (fixed 1.0 by default, or ``"image"``).
    Returns a float64 array of shape (B,).
    """
    from scipy.ndimage import uniform_filter

    a, b = _pair(x, gt)
    if win_size < 3 or win_size % 2 == 0:
        raise ConfigError(f"SSIM win_size must be odd and >= 3, got {win_size}")
    if min(a.shape[-2:]) < win_size:
        raise ShapeError(f"SSIM needs images of at least {win_size}x{win_size} pixels, "
                         f"got {a.shape[-2]}x{a.shape[-1]}")
    r = _data_range(b, data_range)[:, None, None, None]
    size = (1, 1, win_size, win_size)

    def filt(z):
        return uniform_filter(z, size=size)

    ux, uy = filt(a), filt(b)
    uxx, uyy, uxy = filt(a * a), filt(b * b), filt(a * b)
    npix = win_size * win_size
    cov_norm = npix / (npix - 1) if use_sample_covariance else 1.0
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    s = s[..., pad:s.shape[-2] - pad, pad:s.shape[-1] - pad]
    return s.mean(axis=(2, 3)).mean(axis=1)


def data_misfit(ax, y) -> np.ndarray:
    """Relative data misfit ``||Ax - y|| / ||y||`` per measurement (first axis = batch).

    A single unbatched measurement (2-D) counts as a batch of one.
    """
    a, b = _to_numpy(ax, "A x"), _to_numpy(y, "measurement")
    if a.shape != b.shape:
        raise ShapeError(f"A x and y shapes differ: {a.shape} vs {b.shape}")
    if a.ndim <= 2:
        a, b = a[None], b[None]
    n = a.shape[0]
    num = np.linalg.norm((a - b).reshape(n, -1), axis=1)
    den = np.linalg.norm(b.reshape(n, -1), axis=1)
    if np.any(den == 0):
        raise ConfigError("data misfit is undefined for an all-zero measurement")
    return num / den


def compute_metrics(x, gt, *, mask=None, ax=None, y=None) -> dict[str, Any]:
    """All standard metrics per image: ``psnr``, ``ssim`` (fixed range 1.0), ``psnr_image``,
    ``ssim_image`` (per-image range), and ``data_misfit`` when ``ax`` and ``y`` are given;
    ``psnr_mask`` when a mask is given."""
    out = {
        "psnr": psnr(x, gt, 1.0),
        "ssim": ssim(x, gt, 1.0),
        "psnr_image": psnr(x, gt, "image"),
        "ssim_image": ssim(x, gt, "image"),
    }
    if mask is not None:
        out["psnr_mask"] = psnr(x, gt, 1.0, mask=mask)
    if ax is not None and y is not None:
        out["data_misfit"] = data_misfit(ax, y)
    return out


def hu_metrics(x, gt, intensity, window=HU_DEFAULTS["window"],
               soft_tissue=HU_DEFAULTS["soft_tissue"],
               body_threshold: float = HU_DEFAULTS["body_threshold"]) -> dict[str, np.ndarray]:
    """Per-image metrics in Hounsfield units (see :data:`METRIC_CONVENTIONS`).

    ``x`` and ``gt`` are in model units; ``intensity`` is the dataset's
    :class:`~deftmed.data.intensity.IntensityTransform`. Returns ``psnr_hu``, ``ssim_hu``,
    ``psnr_soft`` and ``mae_body_hu`` arrays of one value per image.
    """
    x, gt = _pair(x, gt)
    hx, hg = intensity.to_hu(x), intensity.to_hu(gt)
    out = {}
    for name, (lo, hi) in (("hu", window), ("soft", soft_tissue)):
        lo, hi = float(lo), float(hi)
        if not hi > lo:
            raise ConfigError(f"HU window [{lo}, {hi}] is empty")
        cx, cg = np.clip(hx, lo, hi) - lo, np.clip(hg, lo, hi) - lo
        out[f"psnr_{name}"] = psnr(cx, cg, hi - lo)
        if name == "hu":
            out["ssim_hu"] = ssim(cx, cg, hi - lo)
    body = hg > body_threshold
    err = np.abs(hx - hg) * body
    n = body.reshape(body.shape[0], -1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["mae_body_hu"] = np.where(n > 0, err.reshape(err.shape[0], -1).sum(axis=1) / n, np.nan)
    return out


__all__ = ["psnr", "ssim", "data_misfit", "compute_metrics", "hu_metrics", "METRIC_CONVENTIONS",
           "HU_DEFAULTS"]
