"""Scanner geometry: a small, validated, hashable description of a 2D CT scan.

`ScanGeometry` holds what defines a 2D scan physically — beam kind, image grid (pixels and mm),
projection angles, detector pixels and spacing, and for fan beam the source/detector distances.
It loads from and saves to YAML, validates itself on construction (raising
:class:`~deftmed.errors.GeometryError` with a message naming the problem) and has a stable
``fingerprint()`` binding geometry-specific checkpoints.

Conventions
-----------
* All lengths are in millimetres, angles in degrees (``angles_rad()`` gives radians).
* The image is centred at the origin; its field of view (FOV) is the disc inscribed in the image
  box, radius ``min(H, W) * pixel_spacing / 2`` (mm).
* ``n_angles`` + ``angle_range = [start, stop]`` means ``n_angles`` equally spaced views
  ``start + k * (stop - start) / n_angles``, ``k = 0 .. n_angles - 1`` (stop excluded, so
  ``[0, 180]`` with 4 views is 0, 45, 90, 135 degrees). An explicit, strictly increasing
  ``angles`` list allows irregular sampling.
* ``detector_spacing`` is measured on the detector: for fan beam (flat detector) at distance
  ``src_radius + det_radius`` from the source, so its size at the rotation centre is
  ``detector_spacing * src_radius / (src_radius + det_radius)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from deftmed.errors import GeometryError
from deftmed.fileio import atomic_path

__all__ = ["ScanGeometry", "GeometryWarning", "KINDS"]

KINDS = ("parallel", "fan")
_FINGERPRINT_VERSION = "deftmed-geometry-v1"
_DEFAULT_RANGE = {"parallel": (0.0, 180.0), "fan": (0.0, 360.0)}


class GeometryWarning(UserWarning):
    """A geometry is valid but questionable (e.g. the detector truncates the field of view)."""


def _round(x: float) -> float:
    """Round to 10 significant digits so float noise does not change a fingerprint."""
    return float(f"{float(x):.10g}")


@dataclass
class ScanGeometry:
    """A 2D parallel-beam or fan-beam (flat detector) CT scan geometry.

    Parameters
    ----------
    kind : ``"parallel"`` or ``"fan"``.
    image_size : int ``n`` (image ``n x n``) or a pair ``(H, W)``.
    pixel_spacing : image pixel side in mm (square pixels).
    n_detector : number of detector pixels.
    detector_spacing : detector pixel size in mm (on the detector).
    n_angles, angle_range : number of equally spaced views over ``[start, stop)`` degrees.
    angles : explicit view angles in degrees (instead of ``n_angles``/``angle_range``).
    src_radius, det_radius : source-to-centre and centre-to-detector distances in mm (fan only).
    name, description : free text; not part of the fingerprint.
    """

    kind: str
    image_size: int | tuple[int, int]
    pixel_spacing: float
    n_detector: int
    detector_spacing: float
    n_angles: int | None = None
    angle_range: tuple[float, float] | None = None
    angles: tuple[float, ...] | None = None
    src_radius: float | None = None
    det_radius: float | None = None
    name: str = ""
    description: str = ""

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        if isinstance(self.image_size, (list, tuple)):
            self.image_size = tuple(self.image_size)  # type: ignore[assignment]
        if self.angle_range is not None and isinstance(self.angle_range, (list, tuple)):
            self.angle_range = tuple(self.angle_range)  # type: ignore[assignment]
        if self.angles is not None and not isinstance(self.angles, tuple):
            try:
                self.angles = tuple(self.angles)  # type: ignore[arg-type]
            except TypeError:
                raise GeometryError("'angles' must be a list of numbers (degrees)") from None
        if self.n_angles is not None and self.angles is None and self.angle_range is None:
            self.angle_range = _DEFAULT_RANGE.get(self.kind, (0.0, 180.0))
        self.validate()

    def validate(self) -> None:
        """Check every field; raise GeometryError naming the first problem found.

        A detector that does not cover the field-of-view disc only gives a `GeometryWarning`
        (truncated projections are legitimate, e.g. for interior tomography); one that covers
        less than half its radius is an error.
        """
        label = f"geometry {self.name!r}" if self.name else "geometry"
        if self.kind not in KINDS:
            raise GeometryError(f"{label}: unknown kind {self.kind!r}; expected one of {KINDS}")
        h, w = self._shape_or_raise(label)
        _positive_number(self.pixel_spacing, "pixel_spacing", label)
        _positive_int(self.n_detector, "n_detector", label)
        _positive_number(self.detector_spacing, "detector_spacing", label)

        if self.angles is not None and self.n_angles is not None:
            raise GeometryError(f"{label}: give either 'n_angles' (with 'angle_range') or an "
                                "explicit 'angles' list, not both")
        if self.angles is None and self.n_angles is None:
            raise GeometryError(f"{label}: missing 'n_angles' (or an explicit 'angles' list)")
        if self.angles is not None:
            if self.angle_range is not None:
                raise GeometryError(f"{label}: 'angle_range' cannot be combined with an "
                                    "explicit 'angles' list")
            if len(self.angles) == 0:
                raise GeometryError(f"{label}: 'angles' is empty")
            for a in self.angles:
                if isinstance(a, bool) or not isinstance(a, (int, float, np.floating, np.integer)):
                    raise GeometryError(f"{label}: 'angles' must hold numbers (degrees), "
                                        f"got {a!r}")
            arr = np.asarray(self.angles, dtype=float)
            if not np.all(np.isfinite(arr)):
                raise GeometryError(f"{label}: 'angles' must be finite, got {list(self.angles)}")
            if arr.size > 1 and np.any(np.diff(arr) <= 0):
                raise GeometryError(f"{label}: 'angles' must be strictly increasing "
                                    "(no duplicates); sort them")
        else:
            _positive_int(self.n_angles, "n_angles", label)
            rng = self.angle_range
            if rng is None or len(rng) != 2:
                raise GeometryError(f"{label}: 'angle_range' must be [start, stop] in degrees, "
                                    f"got {rng!r}")
            for v in rng:
                if isinstance(v, bool) or not isinstance(v, (int, float, np.floating,
                                                             np.integer)):
                    raise GeometryError(f"{label}: 'angle_range' must hold numbers, got {v!r}")
                if not math.isfinite(v):
                    raise GeometryError(f"{label}: 'angle_range' must be finite, got {rng!r}")
            if not rng[1] > rng[0]:
                raise GeometryError(f"{label}: 'angle_range' stop must exceed start, "
                                    f"got {list(rng)}")
        span = float(np.ptp(self.angles_deg())) if self.n_views > 1 else 0.0
        if span >= 720.0:
            raise GeometryError(f"{label}: angles span {span:.1f} degrees; at most 720 expected")

        if self.kind == "fan":
            if self.src_radius is None:
                raise GeometryError(f"{label}: fan beam needs src_radius > 0 (mm), missing")
            if self.det_radius is None:
                raise GeometryError(f"{label}: fan beam needs det_radius >= 0 (mm), missing")
            if (isinstance(self.src_radius, bool) or not _is_number(self.src_radius)
                    or not self.src_radius > 0 or not math.isfinite(self.src_radius)):
                raise GeometryError(f"{label}: fan beam needs src_radius > 0 (mm), "
                                    f"got {self.src_radius!r}")
            if (isinstance(self.det_radius, bool) or not _is_number(self.det_radius)
                    or not self.det_radius >= 0 or not math.isfinite(self.det_radius)):
                raise GeometryError(f"{label}: fan beam needs det_radius >= 0 (mm), "
                                    f"got {self.det_radius!r}")
            half_diag = 0.5 * math.hypot(h, w) * self.pixel_spacing
            if self.src_radius <= half_diag:
                raise GeometryError(
                    f"{label}: the source (src_radius {self.src_radius} mm) lies inside the image "
                    f"box (half diagonal {half_diag:.1f} mm); increase src_radius")
        else:
            if self.src_radius is not None or self.det_radius is not None:
                raise GeometryError(f"{label}: src_radius/det_radius are only for fan beam; "
                                    "remove them for a parallel geometry")

        covered = self.detector_covered_radius()
        fov = self.fov_radius()
        if covered < 0.5 * fov:
            raise GeometryError(
                f"{label}: detector too small: it covers a disc of radius {covered:.1f} mm but "
                f"the field of view has radius {fov:.1f} mm; increase n_detector or "
                "detector_spacing")
        if covered < fov * (1 - 1e-9):
            warnings.warn(
                f"{label}: detector covers a disc of radius {covered:.1f} mm, less than the field "
                f"of view radius {fov:.1f} mm; projections of the image edge are truncated",
                GeometryWarning, stacklevel=3)

    def _shape_or_raise(self, label: str) -> tuple[int, int]:
        s = self.image_size
        if isinstance(s, tuple):
            if len(s) != 2:
                raise GeometryError(f"{label}: 'image_size' must be n or [H, W], got {list(s)}")
            for v in s:
                _positive_int(v, "image_size", label)
            return int(s[0]), int(s[1])
        _positive_int(s, "image_size", label)
        return int(s), int(s)

    # ------------------------------------------------------------------ derived quantities
    @property
    def shape(self) -> tuple[int, int]:
        """Image shape ``(H, W)``."""
        s = self.image_size
        return (int(s[0]), int(s[1])) if isinstance(s, tuple) else (int(s), int(s))

    @property
    def n_views(self) -> int:
        """Number of projection angles."""
        return len(self.angles) if self.angles is not None else int(self.n_angles)  # type: ignore

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_views, n_detector)``."""
        return (self.n_views, int(self.n_detector))

    def angles_deg(self) -> np.ndarray:
        """View angles in degrees (float64 array, a copy)."""
        if self.angles is not None:
            return np.asarray(self.angles, dtype=np.float64)
        start, stop = (float(v) for v in self.angle_range)  # type: ignore[union-attr]
        n = int(self.n_angles)  # type: ignore[arg-type]
        return start + np.arange(n, dtype=np.float64) * (stop - start) / n

    def angles_rad(self) -> np.ndarray:
        """View angles in radians (float64 array)."""
        return np.deg2rad(self.angles_deg())

    def angular_coverage_deg(self) -> float:
        """Angular range the views sample, in degrees (``stop - start`` for uniform views;
        for an explicit list, its span plus the mean step)."""
        if self.angles is None:
            start, stop = self.angle_range  # type: ignore[misc]
            return float(stop - start)
        a = self.angles_deg()
        if a.size == 1:
            return 0.0
        span = float(a[-1] - a[0])
        return span + span / (a.size - 1)

    def fov_radius(self) -> float:
        """Radius (mm) of the field-of-view disc inscribed in the image box."""
        return 0.5 * min(self.shape) * float(self.pixel_spacing)

    def image_half_diagonal(self) -> float:
        """Half diagonal (mm) of the image box: radius needed to project every pixel."""
        h, w = self.shape
        return 0.5 * math.hypot(h, w) * float(self.pixel_spacing)

    def detector_width(self) -> float:
        """Detector length in mm."""
        return int(self.n_detector) * float(self.detector_spacing)

    def magnification(self) -> float:
        """Geometric magnification at the rotation centre (1 for parallel beam)."""
        if self.kind == "fan":
            return (self.src_radius + self.det_radius) / self.src_radius  # type: ignore
        return 1.0

    def fan_angle_deg(self) -> float:
        """Full fan angle in degrees (0 for parallel beam)."""
        if self.kind != "fan":
            return 0.0
        half = 0.5 * self.detector_width()
        return 2.0 * math.degrees(math.atan(half / (self.src_radius + self.det_radius)))

    def detector_covered_radius(self) -> float:
        """Radius (mm) of the centred disc every view sees entirely."""
        half = 0.5 * self.detector_width()
        if self.kind == "fan":
            dist = float(self.src_radius + self.det_radius)  # type: ignore[operator]
            return float(self.src_radius) * math.sin(math.atan(half / dist))  # type: ignore
        return half

    # ------------------------------------------------------------------ variants
    def scaled(self, image_size: int | Sequence[int]) -> "ScanGeometry":
        """The same scan for another image grid covering the same physical field of view.

        Use it to simulate data on a finer grid than the reconstruction grid (avoiding the
        "inverse crime"): detector, angles and distances are unchanged, only the pixel grid is.
        """
        if isinstance(image_size, (list, tuple)):
            new = tuple(int(v) for v in image_size)
            if len(new) != 2:
                raise GeometryError(f"scaled(): image_size must be n or (H, W), got {image_size}")
            h, w = self.shape
            if new[0] * w != new[1] * h:
                raise GeometryError(f"scaled(): {new} does not keep the aspect ratio of {(h, w)}")
            factor = new[0] / h
            size: int | tuple[int, int] = new
        else:
            if isinstance(image_size, bool) or int(image_size) != image_size or image_size <= 0:
                raise GeometryError(f"scaled(): image_size must be a positive int, "
                                    f"got {image_size!r}")
            factor = int(image_size) / self.shape[0]
            size = int(image_size) if not isinstance(self.image_size, tuple) else (
                int(image_size), int(round(self.shape[1] * factor)))
        return dataclasses.replace(
            self, image_size=size, pixel_spacing=float(self.pixel_spacing) / factor,
            name=f"{self.name}@{size if isinstance(size, int) else 'x'.join(map(str, size))}"
            if self.name else "",
        )

    def with_angles(self, n_angles: int | None = None,
                    angle_range: Sequence[float] | None = None,
                    angles: Sequence[float] | None = None) -> "ScanGeometry":
        """A copy with other view angles (e.g. a fully sampled version of a sparse protocol)."""
        if angles is not None:
            return dataclasses.replace(self, n_angles=None, angle_range=None,
                                       angles=tuple(float(a) for a in angles))
        if n_angles is None:
            raise GeometryError("with_angles(): give n_angles or angles")
        rng = angle_range if angle_range is not None else (
            self.angle_range if self.angle_range is not None else _DEFAULT_RANGE[self.kind])
        return dataclasses.replace(self, n_angles=int(n_angles), angles=None,
                                   angle_range=tuple(float(v) for v in rng))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON ready) that `from_dict` turns back into an equal geometry."""
        d: dict[str, Any] = {}
        if self.name:
            d["name"] = self.name
        if self.description:
            d["description"] = self.description
        d["kind"] = self.kind
        d["image_size"] = list(self.image_size) if isinstance(self.image_size, tuple) \
            else int(self.image_size)
        d["pixel_spacing"] = float(self.pixel_spacing)
        if self.angles is not None:
            d["angles"] = [float(a) for a in self.angles]
        else:
            d["n_angles"] = int(self.n_angles)  # type: ignore[arg-type]
            d["angle_range"] = [float(v) for v in self.angle_range]  # type: ignore[union-attr]
        d["n_detector"] = int(self.n_detector)
        d["detector_spacing"] = float(self.detector_spacing)
        if self.kind == "fan":
            d["src_radius"] = float(self.src_radius)  # type: ignore[arg-type]
            d["det_radius"] = float(self.det_radius)  # type: ignore[arg-type]
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "geometry") -> "ScanGeometry":
        """Build from a dict, checking keys and types; errors name the offending key."""
        if not isinstance(data, dict):
            raise GeometryError(f"{source}: expected a mapping of geometry fields, "
                                f"got {type(data).__name__}")
        unknown = sorted(set(map(str, data)) - set(_SCHEMA))
        if unknown:
            raise GeometryError(f"{source}: unknown key(s) {unknown}; allowed keys are "
                                f"{sorted(_SCHEMA)}")
        for key in ("kind", "image_size", "pixel_spacing", "n_detector", "detector_spacing"):
            if key not in data:
                raise GeometryError(f"{source}: missing required key '{key}'")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _SCHEMA[key](value, key, source)
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ScanGeometry":
        """Load a geometry YAML file (see the files in ``geometries/``)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GeometryError(f"cannot read geometry file {path}: {exc.strerror or exc}") \
                from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GeometryError(f"{path}: not valid YAML: {exc}") from None
        geom = cls.from_dict(data, source=str(path))
        if not geom.name:
            geom.name = path.stem
        return geom

    def to_yaml(self, path: str | os.PathLike, header: str | None = None) -> Path:
        """Write the geometry as YAML, atomically; ``header`` becomes a leading comment."""
        path = Path(path)
        lines = []
        if header:
            lines += [f"# {ln}".rstrip() for ln in header.splitlines()]
        lines.append(f"# fingerprint: {self.fingerprint()}")
        body = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
        return path

    def canonical(self) -> dict[str, Any]:
        """The physical fields in canonical form (angles as an explicit, rounded list)."""
        h, w = self.shape
        c: dict[str, Any] = {
            "version": _FINGERPRINT_VERSION,
            "kind": self.kind,
            "image_shape": [h, w],
            "pixel_spacing_mm": _round(self.pixel_spacing),
            "angles_deg": [_round(a) for a in self.angles_deg()],
            "n_detector": int(self.n_detector),
            "detector_spacing_mm": _round(self.detector_spacing),
        }
        if self.kind == "fan":
            c["src_radius_mm"] = _round(self.src_radius)  # type: ignore[arg-type]
            c["det_radius_mm"] = _round(self.det_radius)  # type: ignore[arg-type]
        return c

    def fingerprint(self) -> str:
        """SHA-256 hex digest of `canonical()`; ignores name and description, and does not
        change between equivalent angle specifications or YAML round trips."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        """Key numbers of the scan: sizes, views, detector coverage and angular sampling.

        ``views_nyquist`` is the classical angular sampling need for the covered range,
        ``pi/2 * n_pixels`` views per 180 degrees (parallel-beam rule, used for fan beam too);
        ``angular_sampling`` is ``n_views / views_nyquist`` (1 means fully sampled).
        ``complete_coverage`` tells whether the angles span 180 degrees (parallel) or
        180 degrees plus the fan angle (fan).
        """
        h, w = self.shape
        coverage = self.angular_coverage_deg()
        n_pix = max(h, w)
        nyq = math.pi / 2 * n_pix * coverage / 180.0
        need = 180.0 + self.fan_angle_deg()
        a = self.angles_deg()
        steps = np.diff(a) if a.size > 1 else np.array([0.0])
        s: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "image_shape": [h, w],
            "pixel_spacing_mm": float(self.pixel_spacing),
            "image_extent_mm": [h * float(self.pixel_spacing), w * float(self.pixel_spacing)],
            "fov_radius_mm": self.fov_radius(),
            "n_views": self.n_views,
            "first_angle_deg": float(a[0]),
            "last_angle_deg": float(a[-1]),
            "angular_coverage_deg": coverage,
            "uniform_angles": bool(np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9)),
            "max_angle_step_deg": float(steps.max()),
            "complete_coverage": bool(coverage >= need - 1e-6),
            "views_nyquist": nyq,
            "angular_sampling": self.n_views / nyq if nyq > 0 else 0.0,
            "n_detector": int(self.n_detector),
            "detector_spacing_mm": float(self.detector_spacing),
            "detector_width_mm": self.detector_width(),
            "detector_covered_radius_mm": self.detector_covered_radius(),
            "covers_fov": self.detector_covered_radius() >= self.fov_radius() * (1 - 1e-9),
            "covers_image_corners":
                self.detector_covered_radius() >= self.image_half_diagonal() * (1 - 1e-9),
            "sinogram_shape": list(self.sinogram_shape),
            "fingerprint": self.fingerprint(),
        }
        if self.kind == "fan":
            s.update({
                "src_radius_mm": float(self.src_radius),  # type: ignore[arg-type]
                "det_radius_mm": float(self.det_radius),  # type: ignore[arg-type]
                "magnification": self.magnification(),
                "fan_angle_deg": self.fan_angle_deg(),
                "detector_spacing_at_centre_mm":
                    float(self.detector_spacing) / self.magnification(),
            })
        return s


# ---------------------------------------------------------------------- field checks
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _positive_number(v: Any, key: str, label: str) -> None:
    if not _is_number(v):
        raise GeometryError(f"{label}: '{key}' must be a number, got {v!r}")
    if not math.isfinite(v) or v <= 0:
        raise GeometryError(f"{label}: '{key}' must be a positive finite number, got {v!r}")


def _positive_int(v: Any, key: str, label: str) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise GeometryError(f"{label}: '{key}' must be a positive integer, got {v!r}")
    if v <= 0:
        raise GeometryError(f"{label}: '{key}' must be a positive integer, got {v!r}")


def _as_str(v: Any, key: str, source: str) -> str:
    if not isinstance(v, str):
        raise GeometryError(f"{source}: '{key}' must be text, got {type(v).__name__} {v!r}")
    return v


def _as_int(v: Any, key: str, source: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise GeometryError(f"{source}: '{key}' must be an integer, got "
                            f"{type(v).__name__} {v!r}")
    return v


def _as_float(v: Any, key: str, source: str) -> float:
    if not _is_number(v):
        raise GeometryError(f"{source}: '{key}' must be a number, got {type(v).__name__} {v!r}")
    return float(v)


def _as_optional_float(v: Any, key: str, source: str) -> float | None:
    return None if v is None else _as_float(v, key, source)


def _as_image_size(v: Any, key: str, source: str) -> int | tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise GeometryError(f"{source}: '{key}' must be n or [H, W], got {v!r}")
        return tuple(_as_int(x, key, source) for x in v)  # type: ignore[return-value]
    return _as_int(v, key, source)


def _as_float_list(v: Any, key: str, source: str) -> tuple[float, ...]:
    if not isinstance(v, (list, tuple)):
        raise GeometryError(f"{source}: '{key}' must be a list of numbers, got "
                            f"{type(v).__name__} {v!r}")
    return tuple(_as_float(x, key, source) for x in v)


def _as_range(v: Any, key: str, source: str) -> tuple[float, float]:
    out = _as_float_list(v, key, source)
    if len(out) != 2:
        raise GeometryError(f"{source}: '{key}' must be [start, stop] in degrees, got {v!r}")
    return out  # type: ignore[return-value]


_SCHEMA = {
    "kind": _as_str,
    "image_size": _as_image_size,
    "pixel_spacing": _as_float,
    "n_detector": _as_int,
    "detector_spacing": _as_float,
    "n_angles": _as_int,
    "angle_range": _as_range,
    "angles": _as_float_list,
    "src_radius": _as_optional_float,
    "det_radius": _as_optional_float,
    "name": _as_str,
    "description": _as_str,
}
