"""A randomised 2D anatomical CT phantom (axial slice through the lower thorax), in HU.

Each seed gives a different patient: body outline (an ellipse with a perturbed radius), skin,
subcutaneous fat, a muscle wall, two lungs with small vessels, the heart, a contrast-filled
descending aorta, a vertebra (cancellous body, cortical ring, spinal canal and arch), ribs and
sternum, a liver-like organ, and optionally a few small low-contrast liver lesions. Air outside
the body is -1000 HU.

The slice is drawn at ``oversample`` times the output resolution and area-averaged down, so
edges and sub-pixel structures (lung vessels, rib cortex) carry partial-volume values as in a
real scan. The field of view is the square [-1, 1]^2 (rows run anterior -> posterior, columns
patient right -> patient left, as CT images are displayed).

Tissue values (HU, each drawn per patient within the range given):

============================  =====================
air                           -1000
lung parenchyma               -880 .. -820 (smooth texture)
subcutaneous / visceral fat   -120 .. -80
skin                          +20 .. +60
muscle                        +40 .. +55
heart (blood + myocardium)    +35 .. +50
liver                         +55 .. +70
aorta (contrast)              +200 .. +320
lung vessels                  +30 .. +60
cancellous bone               +200 .. +350
cortical bone / ribs          +600 .. +1000
lesions                       liver +- 20 .. 40
============================  =====================

Splits: :func:`anatomical_dataset` draws image ``i`` of a split from seed
``SPLIT_SEEDS[split] + start + i``; the bases are 10 million apart, so train, validation and
test never share a phantom (a split can hold at most 10 million images).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from deftmed.data.intensity import LODOPAB, IntensityTransform
from deftmed.errors import ConfigError, InvalidValueError

AIR_HU = -1000.0

#: First seed of each split; image i of a split uses seed base + i.
SPLIT_SEEDS = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
SPLIT_SIZE_LIMIT = 10_000_000

#: Names of the masks returned with ``return_labels=True``.
LABELS = ("body", "lung", "bone", "lesion", "fat", "muscle", "heart", "liver", "vessel")


# ---------------------------------------------------------------------------------- helpers
class _Canvas:
    """An oversampled HU image plus label masks, with bounding-box painting of shapes."""

    def __init__(self, m: int):
        self.m = m
        self.coord = (np.arange(m, dtype=np.float32) + 0.5) * (2.0 / m) - 1.0
        self.hu = np.full((m, m), AIR_HU, dtype=np.float32)
        self.labels = {name: np.zeros((m, m), bool) for name in LABELS}
        self.labels["cavity"] = np.zeros((m, m), bool)

    def _box(self, cu: float, cv: float, radius: float):
        """Slices of the rows/cols within ``radius`` of (cu, cv) and their coordinates."""
        m, c = self.m, self.coord
        lo_u = max(0, int(math.floor((cu - radius + 1.0) * m / 2.0)))
        hi_u = min(m, int(math.ceil((cu + radius + 1.0) * m / 2.0)) + 1)
        lo_v = max(0, int(math.floor((cv - radius + 1.0) * m / 2.0)))
        hi_v = min(m, int(math.ceil((cv + radius + 1.0) * m / 2.0)) + 1)
        rows, cols = slice(lo_v, hi_v), slice(lo_u, hi_u)
        return rows, cols, c[cols][None, :] - cu, c[rows][:, None] - cv

    def blob(self, cu, cv, a, b, angle=0.0, harmonics=None):
        """Mask (on its bounding box) of a rotated ellipse whose radius is scaled by
        ``1 + sum_k amp_k cos(k theta + phase_k)``; returns (rows, cols, mask, rho)."""
        extra = 1.0 + (sum(abs(h[1]) for h in harmonics) if harmonics else 0.0)
        rows, cols, du, dv = self._box(cu, cv, max(a, b) * extra)
        if du.size == 0 or dv.size == 0:
            return rows, cols, np.zeros((dv.shape[0], du.shape[1]), bool), None
        ca, sa = math.cos(angle), math.sin(angle)
        x = (du * ca + dv * sa) / a
        y = (-du * sa + dv * ca) / b
        rho = np.sqrt(x * x + y * y)
        if harmonics:
            theta = np.arctan2(y, x)
            scale = np.ones_like(rho)
            for k, amp, phase in harmonics:
                scale += amp * np.cos(k * theta + phase)
            rho = rho / scale
        return rows, cols, rho <= 1.0, rho

    def paint(self, rows, cols, mask, value, label=None, clear=()):
        """Set ``value`` (scalar or array on the box) where ``mask``; update labels."""
        sub = self.hu[rows, cols]
        if np.ndim(value):
            sub[mask] = value[mask]
        else:
            sub[mask] = value
        if label is not None:
            self.labels[label][rows, cols] |= mask
        for name in clear:
            self.labels[name][rows, cols] &= ~mask


def _harmonics(rng: np.random.Generator, kmax: int, amp: float):
    return [(k, rng.uniform(0.0, amp) / k, rng.uniform(0.0, 2 * math.pi))
            for k in range(2, kmax + 1)]


def _downsample(x: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return x.astype(np.float32, copy=False)
    n = x.shape[0] // factor
    return x.reshape(n, factor, n, factor).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def _rng(rng_or_seed) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    if isinstance(rng_or_seed, (bool, float)) or rng_or_seed is None:
        raise ConfigError(f"phantom seed must be an integer or numpy Generator, "
                          f"got {rng_or_seed!r}")
    try:
        seed = int(rng_or_seed)
    except (TypeError, ValueError):
        raise ConfigError(f"phantom seed must be an integer or numpy Generator, "
                          f"got {rng_or_seed!r}") from None
    if seed < 0:
        raise ConfigError(f"phantom seed must be >= 0, got {seed}")
    return np.random.default_rng(seed)


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise ConfigError(f"phantom size must be an integer >= 8, got {size!r}")
    return int(size)


# ---------------------------------------------------------------------------------- phantom
def anatomical_phantom(size: int, rng_or_seed: int | np.random.Generator = 0, *,
                       lesions: bool | int = True, oversample: int | None = None,
                       return_labels: bool = False):
    """Draw one random anatomical slice.

    Args:
        size: output image is ``size`` x ``size`` pixels covering the square field of view.
        rng_or_seed: a non-negative integer seed or a ``numpy.random.Generator``.
        lesions: ``True`` for 0-3 random liver lesions, ``False``/0 for none, or an exact count.
        oversample: render at ``oversample * size`` and area-average down; default
            ``min(4, max(1, 1024 // size))``.
        return_labels: also return a dict of boolean masks (``LABELS``); a pixel belongs to a
            label when at least half of its area does.

    Returns:
        HU image, float32 of shape (size, size); with ``return_labels``, ``(image, labels)``.
    """
    size = _check_size(size)
    rng = _rng(rng_or_seed)
    if oversample is None:
        oversample = min(4, max(1, 1024 // size))
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) \
            or oversample < 1:
        raise ConfigError(f"oversample must be a positive integer, got {oversample!r}")
    if lesions is True:
        n_lesions = int(rng.integers(0, 4))
    elif lesions is False or lesions is None:
        n_lesions = 0
    else:
        n_lesions = int(lesions)
        if n_lesions < 0:
            raise ConfigError(f"lesions must be a bool or a count >= 0, got {lesions!r}")

    cv_ = _Canvas(size * int(oversample))
    lab = cv_.labels
    u = rng.uniform

    # --- body outline, skin, fat, muscle wall, cavity (nested perturbed ellipses)
    bu, bv = u(-0.03, 0.03), u(-0.02, 0.04)
    ba, bb = u(0.78, 0.92), u(0.55, 0.68)
    body_h = _harmonics(rng, 5, 0.05)
    rows, cols, body, rho = cv_.blob(bu, bv, ba, bb, 0.0, body_h)
    skin = u(0.010, 0.018) / bb          # thickness as a fraction of the (minor) radius
    fat = u(0.05, 0.16)
    muscle = u(0.07, 0.11)
    cavity_rho = 1.0 - skin - fat - muscle
    cv_.paint(rows, cols, body, u(20, 60), "body")
    cv_.paint(rows, cols, rho <= 1.0 - skin, u(-120, -80), "fat")
    cv_.paint(rows, cols, rho <= 1.0 - skin - fat, u(40, 55), "muscle", clear=("fat",))
    fat_hu = u(-120, -80)
    cv_.paint(rows, cols, rho <= cavity_rho, fat_hu, "fat", clear=("muscle",))  # mediastinum
    lab["cavity"][rows, cols] = rho <= cavity_rho
    cavity = lab["cavity"]
    ca_, cb_ = ba * cavity_rho, bb * cavity_rho                       # cavity semi-axes

    # --- lungs: perturbed ellipses clipped to the cavity, minus the mediastinum
    lung_hu = u(-880, -820)
    med_half = ca_ * u(0.22, 0.32)
    spine_v = bv + cb_ * u(0.55, 0.70)
    for side in (-1.0, 1.0):
        lu = bu + side * ca_ * u(0.45, 0.55)
        lrows, lcols, lung, _ = cv_.blob(lu, bv - cb_ * u(0.0, 0.12), ca_ * u(0.42, 0.52),
                                         cb_ * u(0.78, 0.92), side * u(-0.15, 0.25),
                                         _harmonics(rng, 4, 0.06))
        du = cv_.coord[lcols][None, :] - bu
        dv = cv_.coord[lrows][:, None] - bv
        mediastinum = (du / med_half) ** 2 + (dv / (cb_ * 1.15)) ** 2 <= 1.0
        lung &= cavity[lrows, lcols] & ~mediastinum
        # smooth parenchymal texture: a few low-frequency cosines (+-15 HU)
        tex = np.zeros(lung.shape, np.float32)
        for _ in range(3):
            f1, f2, ph = u(2, 6), u(2, 6), u(0, 2 * math.pi)
            tex += np.cos(f1 * du + f2 * dv + ph).astype(np.float32)
        cv_.paint(lrows, lcols, lung, lung_hu + 5.0 * tex, "lung", clear=("fat",))
        # lung vessels: small discs inside the lung, partial-volumed at the output grid
        n_ves = int(rng.integers(10, 25))
        ys, xs = np.nonzero(lung)
        if len(ys):
            pick = rng.integers(0, len(ys), n_ves)
            for i in pick:
                vu = float(cv_.coord[lcols][xs[i]])
                vv = float(cv_.coord[lrows][ys[i]])
                r = u(0.005, 0.018)
                vr, vc, disc, _ = cv_.blob(vu, vv, r, r * u(0.7, 1.0), u(0, math.pi))
                disc &= lab["lung"][vr, vc]
                cv_.paint(vr, vc, disc, u(30, 60), "vessel", clear=("lung",))

    # --- liver-like organ at the right lung base (image left, anterior-lateral)
    liver_hu = u(55, 70)
    lv_u, lv_v = bu - ca_ * u(0.4, 0.55), bv + cb_ * u(0.0, 0.3)
    lv_a, lv_b = ca_ * u(0.25, 0.42), cb_ * u(0.3, 0.55)
    lr, lc, liver, _ = cv_.blob(lv_u, lv_v, lv_a, lv_b, u(-0.4, 0.2), _harmonics(rng, 4, 0.05))
    liver &= cavity[lr, lc]
    cv_.paint(lr, lc, liver, liver_hu, "liver", clear=("lung", "fat", "vessel"))

    # --- heart, anterior and left of midline
    hr, hc, heart, _ = cv_.blob(bu + ca_ * u(0.05, 0.2), bv - cb_ * u(0.05, 0.3),
                                ca_ * u(0.26, 0.36), cb_ * u(0.32, 0.45), u(0.3, 0.8),
                                _harmonics(rng, 3, 0.05))
    heart &= cavity[hr, hc]
    cv_.paint(hr, hc, heart, u(35, 50), "heart", clear=("lung", "fat", "vessel", "liver"))

    # --- vertebra: cancellous body with a cortical ring, canal, arch and spinous process
    vb_r = cb_ * u(0.16, 0.22)
    vb_v = spine_v - vb_r * 0.3
    cortex = u(600, 1000)
    r_, c_, vbody, vrho = cv_.blob(bu, vb_v, vb_r * u(1.0, 1.15), vb_r)
    cv_.paint(r_, c_, vbody, cortex, "bone", clear=("lung", "fat", "vessel", "muscle"))
    cv_.paint(r_, c_, vrho <= u(0.78, 0.86), u(200, 350), "bone")
    canal_r = vb_r * u(0.5, 0.65)
    canal_v = vb_v + vb_r + canal_r * 1.1
    arch_r = canal_r * u(1.45, 1.7)
    r_, c_, arch, arho = cv_.blob(bu, canal_v, arch_r, arch_r)
    cv_.paint(r_, c_, arch, cortex, "bone", clear=("lung", "fat", "vessel", "muscle"))
    r_, c_, sp, _ = cv_.blob(bu, canal_v + arch_r * 1.3, arch_r * 0.28, arch_r * 1.0)
    cv_.paint(r_, c_, sp, cortex, "bone", clear=("fat", "muscle"))
    r_, c_, canal, _ = cv_.blob(bu, canal_v, canal_r, canal_r * 0.9)
    cv_.paint(r_, c_, canal, u(5, 20), None, clear=("bone",))

    # --- contrast-filled descending aorta, left-anterior of the vertebra
    ao_r = cb_ * u(0.08, 0.12)
    r_, c_, aorta, _ = cv_.blob(bu + vb_r * u(0.9, 1.4), vb_v - vb_r - ao_r * u(0.6, 1.2),
                                ao_r, ao_r * u(0.9, 1.0))
    cv_.paint(r_, c_, aorta, u(200, 320), "vessel", clear=("lung", "fat", "heart", "liver"))

    # --- ribs (cross-sections in the muscle wall) and sternum
    rib_rho = cavity_rho + muscle * u(0.35, 0.65)
    n_ribs = int(rng.integers(4, 7))
    start = u(0.15, 0.3) * math.pi
    rib_angles = np.linspace(start, math.pi - 0.18 * math.pi, n_ribs)
    rib_angles = rib_angles + rng.uniform(-0.06, 0.06, n_ribs)
    for side in (-1.0, 1.0):
        for t in rib_angles:
            # parametrise the rib circle by polar angle from posterior midline (t = 0)
            theta = math.pi / 2 - side * (math.pi - t)   # body-frame polar angle
            scale = 1.0 + sum(a * math.cos(k * theta + p) for k, a, p in body_h)
            ru = bu + rib_rho * ba * scale * math.cos(theta)
            rv = bv + rib_rho * bb * scale * math.sin(theta)
            rlen = u(0.022, 0.035)
            rr, rc, rib, rrho = cv_.blob(ru, rv, rlen, rlen * u(0.45, 0.6), theta + math.pi / 2)
            cv_.paint(rr, rc, rib, cortex * u(0.85, 1.0), "bone",
                      clear=("muscle", "fat", "lung", "vessel"))
            cv_.paint(rr, rc, rrho <= 0.55, u(150, 300), "bone")
    st_r = u(0.025, 0.04)
    r_, c_, st, srho = cv_.blob(bu, bv - (cavity_rho + muscle * 0.5) * bb, st_r * 1.6, st_r)
    cv_.paint(r_, c_, st, cortex * 0.9, "bone", clear=("muscle", "fat"))
    cv_.paint(r_, c_, srho <= 0.6, u(150, 300), "bone")

    # --- low-contrast lesions inside the liver
    liver_lab = lab["liver"]
    for _ in range(n_lesions):
        ys, xs = np.nonzero(liver_lab)
        if not len(ys):
            break
        i = int(rng.integers(0, len(ys)))
        le_u, le_v = float(cv_.coord[xs[i]]), float(cv_.coord[ys[i]])
        r = u(0.02, 0.06)
        r_, c_, les, _ = cv_.blob(le_u, le_v, r, r * u(0.7, 1.0), u(0, math.pi),
                                  _harmonics(rng, 3, 0.08))
        les &= liver_lab[r_, c_]
        delta = rng.choice([-1.0, 1.0]) * u(20, 40)
        cv_.paint(r_, c_, les, liver_hu + delta, "lesion")

    image = _downsample(cv_.hu, int(oversample))
    if not return_labels:
        return image
    labels = {name: _downsample(lab[name].astype(np.float32), int(oversample)) >= 0.5
              for name in LABELS}
    return image, labels


# ---------------------------------------------------------------------------------- batches
def anatomical_batch(n: int, size: int, seed: int = 0, **kwargs) -> np.ndarray:
    """``n`` phantoms in HU, shape (n, size, size) float32; image i uses seed ``seed + i``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"number of phantoms must be an integer >= 0, got {n!r}")
    size = _check_size(size)
    out = np.empty((int(n), size, size), np.float32)
    for i in range(int(n)):
        out[i] = anatomical_phantom(size, int(seed) + i, **kwargs)
    return out


def anatomical_dataset(n: int, size: int, split: str = "train",
                       intensity: IntensityTransform | None = None, *, start: int = 0,
                       **kwargs) -> np.ndarray:
    """``n`` phantoms of a split in the model range, shape (n, size, size) float32.

    HU are mapped with ``intensity`` (default :data:`deftmed.data.intensity.LODOPAB`, i.e.
    model 1 = 3071 HU, air about 2.5e-4); nothing is clipped, and an image falling outside
    [0, 1] under a narrower transform raises :class:`InvalidValueError`. Image ``i`` uses seed
    ``SPLIT_SEEDS[split] + start + i``.
    """
    if split not in SPLIT_SEEDS:
        raise ConfigError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
        raise ConfigError(f"start must be an integer >= 0, got {start!r}")
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool) \
            and start + n > SPLIT_SIZE_LIMIT:
        raise ConfigError(f"a split holds at most {SPLIT_SIZE_LIMIT} phantoms "
                          f"(asked for images {start}..{start + n - 1})")
    intensity = LODOPAB if intensity is None else intensity
    hu = anatomical_batch(n, size, SPLIT_SEEDS[split] + int(start), **kwargs)
    x = np.asarray(intensity.from_hu(hu), dtype=np.float32)
    if x.size and (x.min() < -1e-6 or x.max() > 1.0 + 1e-6):
        raise InvalidValueError(
            f"phantom HU range [{hu.min():.0f}, {hu.max():.0f}] does not fit the model range "
            f"of the intensity transform (HU {intensity.hu_range[0]:.0f}.."
            f"{intensity.hu_range[1]:.0f})")
    return np.clip(x, 0.0, 1.0)  # only removes float round-off of air near 0


__all__ = ["anatomical_phantom", "anatomical_batch", "anatomical_dataset", "SPLIT_SEEDS",
           "LABELS", "AIR_HU"]
