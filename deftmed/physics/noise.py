"""Measurement noise models: turn clean sinograms into measurements, and score measurements.

Units
-----
Images are in model range ``[0, 1]``; the ray transform integrates over mm, so a clean sinogram
``A x`` is in mm x model units. Gaussian noise acts directly on that sinogram. Poisson noise
models photon counts: with ``attenuation_scale`` ``s`` (1/mm, the attenuation of model value 1,
LoDoPaB's ``mu_max``), the physical line integral is ``s * A x`` (dimensionless) and the expected
count of a detector bin is ``i0 * exp(-s * A x)``. Post-log measurements are brought back to
model units: ``-log(max(counts, min_count) / i0) / s``.

Every model has ``sample(clean, generator)``, ``log_likelihood(x, y, op)`` (per batch item, up to
a constant) and ``log_likelihood_grad(x, y, op)`` (its gradient with respect to the image ``x``),
where ``op`` is a :class:`~deftmed.physics.raytransform.RayTransform` (anything with
``op(x)`` and ``op.adjoint(y)`` on ``(B, 1, ...)`` tensors).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from deftmed.errors import ConfigError, InvalidValueError

__all__ = ["NoiseModel", "GaussianNoise", "PoissonNoise", "load_noise", "LODOPAB_MU_MAX"]

LODOPAB_MU_MAX = 0.08135858
"""LoDoPaB-CT's attenuation of model value 1, in 1/mm (81.35858 /m)."""


def _randn_like(t: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else t.device
    z = torch.randn(t.shape, generator=generator, device=dev, dtype=torch.float32)
    return z.to(device=t.device)


def _check_finite(t: Any, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise InvalidValueError(f"{what} must be a torch tensor, got {type(t).__name__}")
    if not bool(torch.isfinite(t).all()):
        raise InvalidValueError(f"{what} contains NaN or Inf values")
    return t


def _number(value: Any, key: str, kind: str, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{kind} noise: '{key}' must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or (not positive and v < 0):
        raise ConfigError(f"{kind} noise: '{key}' must be a {'positive' if positive else 'non-negative'}"
                          f" finite number, got {value!r}")
    return v


class NoiseModel:
    """Base class of measurement noise models."""

    kind: str = "base"

    def sample(self, clean_sino: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw a measurement from clean line integrals ``A x`` (same shape)."""
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor, op) -> torch.Tensor:
        """``log p(y | x)`` per batch item (shape ``(B,)``), up to an ``x``-independent constant;
        differentiable in ``x``."""
        raise NotImplementedError

    def log_likelihood_grad(self, x: torch.Tensor, y: torch.Tensor, op) -> torch.Tensor:
        """Gradient of ``log p(y | x)`` with respect to the image ``x`` (shape of ``x``)."""
        raise NotImplementedError

    def variance(self, clean_sino: torch.Tensor) -> torch.Tensor:
        """Variance of each measurement bin given the clean sinogram (same shape; post-log
        Poisson uses the delta-method approximation)."""
        raise NotImplementedError

    def data_misfit_weight(self, y: torch.Tensor) -> torch.Tensor:
        """Per-bin inverse variance estimated from a measurement ``y`` (for weighted
        least-squares data terms)."""
        return 1.0 / self.variance(y).clamp_min(1e-12)

    def validate_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """Check a measurement is admissible for this model; raise InvalidValueError if not."""
        return _check_finite(y, "measurement")

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    @staticmethod
    def from_dict(spec: dict[str, Any]) -> "NoiseModel":
        """Build any noise model from ``{type: gaussian|poisson, ...}``."""
        return load_noise(spec)

    @staticmethod
    def from_yaml(path: str | os.PathLike) -> "NoiseModel":
        return load_noise(Path(path))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseModel) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise on the line integrals.

    Give ``sigma`` (absolute standard deviation, in sinogram units: mm x model units) or
    ``relative`` (standard deviation ``relative * mean(|y|)`` of each clean sinogram, dival's
    convention, e.g. 0.025 for 2.5 %), not both.
    """

    kind = "gaussian"

    def __init__(self, sigma: float | None = None, relative: float | None = None) -> None:
        if (sigma is None) == (relative is None):
            raise ConfigError("gaussian noise: give exactly one of 'sigma' (absolute) or "
                              "'relative' (fraction of mean |y|)")
        self.sigma = None if sigma is None else _number(sigma, "sigma", "gaussian")
        self.relative = None if relative is None else _number(relative, "relative", "gaussian")

    def effective_sigma(self, y: torch.Tensor) -> torch.Tensor:
        """Standard deviation per batch item, shape ``(B, 1, ..., 1)`` broadcastable to ``y``.

        For relative noise it is computed from ``y``: exact when ``y`` is the clean sinogram,
        a close estimate when it is the measurement (noise barely changes mean |y|)."""
        shape = (y.shape[0],) + (1,) * (y.ndim - 1)
        if self.sigma is not None:
            return torch.full(shape, self.sigma, dtype=y.dtype, device=y.device)
        mean_abs = y.detach().abs().reshape(y.shape[0], -1).mean(dim=1)
        return (self.relative * mean_abs).reshape(shape)

    def sample(self, clean_sino, generator=None):
        clean = _check_finite(clean_sino, "clean sinogram")
        sig = self.effective_sigma(clean)
        return clean + sig * _randn_like(clean, generator).to(clean.dtype)

    def variance(self, clean_sino):
        return (self.effective_sigma(clean_sino) ** 2).expand_as(clean_sino)

    def log_likelihood(self, x, y, op, sigma: torch.Tensor | float | None = None):
        """``-||A x - y||^2 / (2 sigma^2)`` per batch item (``sigma`` from ``y`` if not given)."""
        self.validate_measurement(y)
        sig = self.effective_sigma(y) if sigma is None else sigma
        r = (op(x) - y) / sig
        return -0.5 * (r ** 2).reshape(r.shape[0], -1).sum(dim=1)

    def log_likelihood_grad(self, x, y, op, sigma: torch.Tensor | float | None = None):
        """``-(1 / sigma^2) A^T (A x - y)``."""
        self.validate_measurement(y)
        sig = self.effective_sigma(y) if sigma is None else sigma
        with torch.no_grad():
            return -op.adjoint((op(x.detach()) - y) / sig ** 2)

    def to_dict(self):
        d: dict[str, Any] = {"type": "gaussian"}
        if self.sigma is not None:
            d["sigma"] = self.sigma
        else:
            d["relative"] = self.relative
        return d

    def describe(self):
        if self.sigma is not None:
            return f"additive Gaussian noise, sigma = {self.sigma:g} (sinogram units)"
        return (f"additive Gaussian noise, sigma = {100 * self.relative:g} % of the mean |y| "
                "of each clean sinogram")


class PoissonNoise(NoiseModel):
    """Photon-count (Poisson) noise, LoDoPaB-style.

    Parameters
    ----------
    i0 : mean photon count per detector bin without an object (unattenuated beam).
    attenuation_scale : linear attenuation (1/mm) of model value 1; physical line integral is
        ``attenuation_scale * (A x)`` with ``A x`` in mm x model units. Default: LoDoPaB's
        ``mu_max`` = 81.35858 /m = 0.08135858 /mm.
    min_count : counts below this are clamped before the log (zero counts would give +inf).
    output : ``"postlog"`` -- measurements are ``-log(max(c, min_count) / i0) / attenuation_scale``
        (model units, like ``A x``); ``"prelog"`` -- measurements are the counts ``c``.
    """

    kind = "poisson"

    def __init__(self, i0: float = 4096, attenuation_scale: float = LODOPAB_MU_MAX,
                 min_count: float = 0.1, output: str = "postlog") -> None:
        self.i0 = _number(i0, "i0", "poisson")
        self.attenuation_scale = _number(attenuation_scale, "attenuation_scale", "poisson")
        self.min_count = _number(min_count, "min_count", "poisson")
        if output not in ("postlog", "prelog"):
            raise ConfigError(f"poisson noise: 'output' must be 'postlog' or 'prelog', "
                              f"got {output!r}")
        self.output = output

    def expected_counts(self, line_integrals: torch.Tensor) -> torch.Tensor:
        """``i0 * exp(-attenuation_scale * A x)`` for clean line integrals ``A x``."""
        return self.i0 * torch.exp(-self.attenuation_scale * line_integrals)

    def counts_from_measurement(self, y: torch.Tensor) -> torch.Tensor:
        """Photon counts of a measurement (post-log values are converted back)."""
        if self.output == "prelog":
            return y
        return self.i0 * torch.exp(-self.attenuation_scale * y)

    def sample(self, clean_sino, generator=None):
        clean = _check_finite(clean_sino, "clean sinogram")
        rate = self.expected_counts(clean.detach().to(torch.float64))
        dev = generator.device if generator is not None else rate.device
        counts = torch.poisson(rate.to(dev), generator=generator).to(clean.device)
        if self.output == "prelog":
            return counts.to(clean.dtype)
        post = -torch.log(counts.clamp_min(self.min_count) / self.i0) / self.attenuation_scale
        return post.to(clean.dtype)

    def variance(self, clean_sino):
        lam = self.expected_counts(clean_sino)
        if self.output == "prelog":
            return lam
        return 1.0 / (lam.clamp_min(self.min_count) * self.attenuation_scale ** 2)

    def validate_measurement(self, y):
        _check_finite(y, "measurement")
        if self.output == "prelog" and bool((y < 0).any()):
            raise InvalidValueError(f"pre-log Poisson measurement has negative counts "
                                    f"(min {float(y.min()):g}); counts must be >= 0")
        return y

    def log_likelihood(self, x, y, op):
        """``sum(c * log(lam) - lam)`` with ``lam = i0 exp(-s A x)`` and ``c`` the counts,
        per batch item (constant terms dropped)."""
        self.validate_measurement(y)
        c = self.counts_from_measurement(y)
        s_ax = self.attenuation_scale * op(x)
        ll = -c * s_ax - self.i0 * torch.exp(-s_ax)
        return ll.reshape(ll.shape[0], -1).sum(dim=1)

    def log_likelihood_grad(self, x, y, op):
        """``s * A^T (i0 exp(-s A x) - c)`` with ``s = attenuation_scale`` and counts ``c``."""
        self.validate_measurement(y)
        with torch.no_grad():
            c = self.counts_from_measurement(y)
            lam = self.expected_counts(op(x.detach()))
            return self.attenuation_scale * op.adjoint(lam - c)

    def to_dict(self):
        return {"type": "poisson", "i0": self.i0, "attenuation_scale": self.attenuation_scale,
                "min_count": self.min_count, "output": self.output}

    def describe(self):
        return (f"Poisson photon noise, I0 = {self.i0:g} counts per bin, attenuation of model "
                f"value 1 = {self.attenuation_scale:g} /mm, counts clamped at {self.min_count:g}, "
                f"{'post-log line integrals (model units)' if self.output == 'postlog' else 'pre-log counts'}")


_TYPES: dict[str, tuple[type, set[str]]] = {
    "gaussian": (GaussianNoise, {"sigma", "relative"}),
    "poisson": (PoissonNoise, {"i0", "attenuation_scale", "min_count", "output"}),
}


def load_noise(spec: dict[str, Any] | str | os.PathLike | NoiseModel) -> NoiseModel:
    """A noise model from a dict, a YAML file path, or an existing model (returned as is).

    Examples: ``{type: gaussian, relative: 0.025}``, ``{type: gaussian, sigma: 1.0}``,
    ``{type: poisson, i0: 10000, attenuation_scale: 0.02, output: postlog}``.
    """
    if isinstance(spec, NoiseModel):
        return spec
    source = "noise spec"
    if isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        source = str(path)
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read noise file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'type' key, "
                          f"got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind is None:
        raise ConfigError(f"{source}: missing key 'type' (one of {sorted(_TYPES)})")
    if kind not in _TYPES:
        raise ConfigError(f"{source}: unknown noise type {kind!r}; expected one of "
                          f"{sorted(_TYPES)}")
    cls, allowed = _TYPES[kind]
    unknown = sorted(set(map(str, spec)) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {kind} noise; allowed: "
                          f"{sorted(allowed)}")
    return cls(**spec)
