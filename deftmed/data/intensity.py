"""Intensity units: model range [0, 1] <-> linear attenuation (1/mm) <-> Hounsfield units.

A diffusion prior works on images in the *model range*, where 0 is no attenuation and 1 is a
declared attenuation maximum ``mu_max`` (as in LoDoPaB-CT). This module converts between that
range, physical linear attenuation coefficients in 1/mm, and Hounsfield units::

    mu = x * mu_max                                    (model value x -> attenuation)
    HU = 1000 * (mu - mu_water) / (mu_water - mu_air)  (attenuation -> HU)

All conversions are affine, work element-wise on numpy arrays, torch tensors and Python floats,
and keep the input's type (and, for arrays and tensors, a floating dtype). Nothing is clipped: a
value outside [0, 1] maps to an attenuation outside [0, mu_max] and back unchanged.

The transform travels with every dataset and checkpoint as ``to_dict()`` / ``from_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, TypeVar

import numpy as np

from deftmed.errors import ConfigError

ArrayT = TypeVar("ArrayT")

# LoDoPaB-CT constants (Leuschner et al. 2021), given there in 1/m; here in 1/mm.
LODOPAB_MU_WATER = 0.02  # 20 / m
LODOPAB_MU_AIR = 2e-5  # 0.02 / m
LODOPAB_MU_MAX = 0.08135858  # 81.35858 / m  (= 3071 HU, the upper end of a 12-bit CT range)


def _as_float(x: ArrayT) -> ArrayT:
    """Return ``x`` with a floating dtype (integers promote to float32 / float64)."""
    if isinstance(x, np.ndarray):
        return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.float32)
    if isinstance(x, (list, tuple)):
        return np.asarray(x, dtype=np.float64)  # type: ignore[return-value]
    return x


@dataclass(frozen=True)
class IntensityTransform:
    """Affine map between model values, attenuation (1/mm) and Hounsfield units.

    Attributes:
        mu_max: attenuation in 1/mm that model value 1 represents (model value 0 is mu = 0).
        mu_water: attenuation of water in 1/mm (0 HU).
        mu_air: attenuation of air in 1/mm (-1000 HU).
        name: optional label (e.g. ``"lodopab"``), for reports only.
    """

    mu_max: float = LODOPAB_MU_MAX
    mu_water: float = LODOPAB_MU_WATER
    mu_air: float = LODOPAB_MU_AIR
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("mu_max", "mu_water", "mu_air"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise ConfigError(f"IntensityTransform.{field} must be a finite number, "
                                  f"got {value!r}")
        if self.mu_max <= 0:
            raise ConfigError(f"IntensityTransform.mu_max must be > 0, got {self.mu_max}")
        if self.mu_air < 0:
            raise ConfigError(f"IntensityTransform.mu_air must be >= 0, got {self.mu_air}")
        if not self.mu_water > self.mu_air:
            raise ConfigError("IntensityTransform needs mu_water > mu_air, got "
                              f"mu_water={self.mu_water}, mu_air={self.mu_air}")

    # ------------------------------------------------------------------ conversions
    @property
    def _hu_per_mu(self) -> float:
        return 1000.0 / (self.mu_water - self.mu_air)

    def to_attenuation(self, x: ArrayT) -> ArrayT:
        """Model values -> linear attenuation in 1/mm."""
        return _as_float(x) * self.mu_max

    def from_attenuation(self, mu: ArrayT) -> ArrayT:
        """Linear attenuation in 1/mm -> model values."""
        return _as_float(mu) / self.mu_max

    def attenuation_to_hu(self, mu: ArrayT) -> ArrayT:
        """Linear attenuation in 1/mm -> Hounsfield units."""
        return (_as_float(mu) - self.mu_water) * self._hu_per_mu

    def hu_to_attenuation(self, hu: ArrayT) -> ArrayT:
        """Hounsfield units -> linear attenuation in 1/mm."""
        return _as_float(hu) / self._hu_per_mu + self.mu_water

    def to_hu(self, x: ArrayT) -> ArrayT:
        """Model values -> Hounsfield units."""
        return (_as_float(x) * self.mu_max - self.mu_water) * self._hu_per_mu

    def from_hu(self, hu: ArrayT) -> ArrayT:
        """Hounsfield units -> model values."""
        return (_as_float(hu) / self._hu_per_mu + self.mu_water) / self.mu_max

    @property
    def hu_range(self) -> tuple[float, float]:
        """The HU values of model values 0 and 1 (the representable window when clipped)."""
        return float(self.to_hu(0.0)), float(self.to_hu(1.0))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_hu_window(cls, lo_hu: float, hi_hu: float, *, mu_water: float = LODOPAB_MU_WATER,
                      mu_air: float = LODOPAB_MU_AIR, name: str = "") -> "IntensityTransform":
        """A transform whose model value 1 is ``hi_hu``.

        The model range always starts at zero attenuation (so a sinogram of model values is a
        physical line integral divided by ``mu_max``), which fixes model value 0 at the HU of
        vacuum, ``-1000 * mu_water / (mu_water - mu_air)`` (about -1001 HU). ``lo_hu`` states the
        lowest HU the data is expected to hold; it is checked (at most 50 HU below vacuum, so a
        scanner's -1024 passes), not stored. ``for_hu_window(-1024, 3071)`` equals ``LODOPAB``
        up to its name.
        """
        if not (math.isfinite(lo_hu) and math.isfinite(hi_hu)) or not hi_hu > lo_hu:
            raise ConfigError(f"HU window needs finite lo < hi, got ({lo_hu}, {hi_hu})")
        hu_per_mu = 1000.0 / (mu_water - mu_air)
        vacuum_hu = -mu_water * hu_per_mu
        if lo_hu < vacuum_hu - 50.0:
            # Allow a little below vacuum (scanners store -1024 for "air"), no more.
            raise ConfigError(f"HU window lower end {lo_hu} lies below the HU of zero "
                              f"attenuation ({vacuum_hu:.1f}); the model range starts at mu=0")
        mu_max = hi_hu / hu_per_mu + mu_water
        if mu_max <= 0:
            raise ConfigError(f"HU window upper end {hi_hu} gives non-positive mu_max")
        return cls(mu_max=float(mu_max), mu_water=mu_water, mu_air=mu_air, name=name)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON/YAML-friendly), with units stated."""
        d = asdict(self)
        d["units"] = "1/mm"
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IntensityTransform":
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on a bad dict."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"intensity transform must be a mapping, got {type(d).__name__}")
        units = d.get("units", "1/mm")
        scale = {"1/mm": 1.0, "1/m": 1e-3, "1/cm": 0.1}.get(units)
        if scale is None:
            raise ConfigError(f"intensity transform units must be 1/mm, 1/cm or 1/m, "
                              f"got {units!r}")
        unknown = set(d) - {"mu_max", "mu_water", "mu_air", "name", "units"}
        if unknown:
            raise ConfigError(f"intensity transform has unknown fields: {sorted(unknown)}")
        if "mu_max" not in d:
            raise ConfigError("intensity transform is missing field 'mu_max'")
        kwargs: dict[str, Any] = {}
        for key in ("mu_max", "mu_water", "mu_air"):
            if key in d:
                try:
                    kwargs[key] = float(d[key]) * scale
                except (TypeError, ValueError):
                    raise ConfigError(f"intensity transform field {key!r} must be a number, "
                                      f"got {d[key]!r}") from None
        if "name" in d:
            kwargs["name"] = str(d["name"])
        return cls(**kwargs)


#: LoDoPaB-CT: mu_max = 81.35858 / m, so model value 1 is 3071 HU and 0 is about -1001 HU.
LODOPAB = IntensityTransform(name="lodopab")

#: Random-ellipse phantoms are unitless in [0, 1]; give them LoDoPaB's mu_max so that their
#: attenuation (and simulated photon counts) are physically plausible.
ELLIPSES = IntensityTransform(name="ellipses")

__all__ = ["IntensityTransform", "LODOPAB", "ELLIPSES", "LODOPAB_MU_MAX", "LODOPAB_MU_WATER",
           "LODOPAB_MU_AIR"]
