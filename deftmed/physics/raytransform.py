"""The CT forward model: an ODL/ASTRA ray transform as a batched, differentiable torch module.

Units: the image grid is in mm (``pixel_spacing``), centred at the origin, so the forward
projection of an image of attenuation values ``mu`` (1/mm) gives dimensionless line integrals
(``sum mu * length``); for an image of ones it gives chord lengths in mm.

Image array axis 0 is ODL's first coordinate (x), axis 1 the second (y); forward, adjoint and
FBP all use this same convention, so images come back as they went in.

The adjoint is the exact Euclidean transpose of the forward projection: for any ``x`` and ``y``,
``(A x * y).sum() == (x * A.adjoint(y)).sum()`` up to float rounding. ODL's own ``.adjoint`` is
the adjoint for the L2 inner products of its discretised spaces (weighted by cell volumes: pixel
area for images, angle step x detector pixel for sinograms); we undo that weighting.
"""

from __future__ import annotations

import math
import numbers
import threading
import warnings
from typing import Any

import numpy as np
import torch

from deftmed.errors import GeometryError, InvalidValueError, ShapeError
from deftmed.physics.geometry import ScanGeometry

__all__ = ["RayTransform", "odl_space", "odl_geometry", "select_backend", "FBP_FILTERS",
           "check_fbp_filter"]


FBP_FILTERS = ("Ram-Lak", "Shepp-Logan", "Cosine", "Hamming", "Hann")


def check_fbp_filter(filter_type, frequency_scaling, error: type = InvalidValueError,
                     where: str = "") -> tuple[str, float]:
    """``(canonical filter name, cut-off)``, or ``error`` naming the bad value: the filter must
    be one of `FBP_FILTERS` (any case) and the relative cut-off a number in (0, 1]."""
    names = {f.lower(): f for f in FBP_FILTERS}
    if not isinstance(filter_type, str) or filter_type.lower() not in names:
        raise error(f"{where}unknown FBP filter_type {filter_type!r}; expected one of "
                    f"{FBP_FILTERS}")
    fs = frequency_scaling
    if isinstance(fs, bool) or not isinstance(fs, numbers.Real) or not 0 < fs <= 1:
        raise error(f"{where}frequency_scaling must be in (0, 1], got {frequency_scaling!r}")
    return names[filter_type.lower()], float(fs)
_BACKENDS = ("auto", "astra_cpu", "astra_cuda")


def _tomo():
    """ODL's tomography package (``odl.tomo`` moved to ``odl.applications.tomo`` in ODL 1.0)."""
    try:
        from odl.applications import tomo
    except ImportError:  # pragma: no cover - ODL < 1.0
        from odl import tomo  # type: ignore[no-redef]
    return tomo


def odl_space(geometry: ScanGeometry):
    """ODL image space: ``H x W`` float32 pixels of ``pixel_spacing`` mm, centred at 0."""
    import odl

    h, w = geometry.shape
    ps = float(geometry.pixel_spacing)
    half = np.array([h * ps / 2.0, w * ps / 2.0])
    return odl.uniform_discr(-half, half, (h, w), dtype="float32")


def odl_geometry(geometry: ScanGeometry):
    """ODL 2D geometry (``Parallel2dGeometry`` or flat-detector ``FanBeamGeometry``) with the
    exact view angles of ``geometry``."""
    import odl

    tomo = _tomo()
    angles = geometry.angles_rad()
    if geometry.angles is None:
        # A uniform partition whose cell midpoints are exactly the view angles.
        step = (math.radians(geometry.angle_range[1]) - math.radians(geometry.angle_range[0])) \
            / geometry.n_views  # type: ignore[index]
        apart = odl.uniform_partition(angles[0] - step / 2, angles[0] + step * (angles.size - 0.5),
                                      angles.size)
    elif angles.size == 1:
        apart = odl.nonuniform_partition(angles, min_pt=angles[0] - 0.5, max_pt=angles[0] + 0.5)
    else:
        apart = odl.nonuniform_partition(angles)
    half = geometry.detector_width() / 2.0
    dpart = odl.uniform_partition(-half, half, int(geometry.n_detector))
    if geometry.kind == "parallel":
        return tomo.Parallel2dGeometry(apart, dpart)
    return tomo.FanBeamGeometry(apart, dpart, src_radius=float(geometry.src_radius),
                                det_radius=float(geometry.det_radius))


def _cuda_usable() -> bool:
    """True only if torch sees a GPU *and* ASTRA can run CUDA on it.

    ``astra.has_feature('cuda')`` only says ASTRA was built with CUDA, so it is not used.
    """
    if not torch.cuda.is_available():
        return False
    try:
        import astra

        return bool(astra.use_cuda())
    except Exception:  # pragma: no cover - depends on the machine
        return False


def select_backend(backend: str = "auto") -> str:
    """Resolve ``"auto"`` to ``"astra_cuda"`` when a usable GPU exists, else ``"astra_cpu"``."""
    if backend not in _BACKENDS:
        raise GeometryError(f"unknown ray transform backend {backend!r}; expected one of "
                            f"{_BACKENDS}")
    if backend == "auto":
        return "astra_cuda" if _cuda_usable() else "astra_cpu"
    if backend == "astra_cuda" and not _cuda_usable():
        raise GeometryError("backend 'astra_cuda' requested but no CUDA GPU usable by ASTRA "
                            "was found; use backend='astra_cpu' or 'auto'")
    return backend


def _all_finite(t: torch.Tensor) -> bool:
    """NaN/Inf check. CPU float32/64 tensors are checked with NumPy: a multi-threaded torch
    reduction right after ASTRA's OpenMP work can stall for tens of milliseconds."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return bool(np.isfinite(t.detach().numpy()).all())
    return bool(torch.isfinite(t).all())


_TRANSPOSE = {"forward": "adjoint", "adjoint": "forward"}


class _Projection(torch.autograd.Function):
    """``A x`` (direction "forward") or ``A^T y`` ("adjoint"); the gradient of each is the
    other, so autograd uses the exact transpose."""

    @staticmethod
    def forward(ctx, t, rt, direction):  # type: ignore[override]
        ctx.rt, ctx.direction = rt, direction
        return rt._project(t, direction)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return _Projection.apply(grad, ctx.rt, _TRANSPOSE[ctx.direction]), None, None


class RayTransform(torch.nn.Module):
    """Batched 2D ray transform ``(B, 1, H, W) -> (B, 1, n_views, n_detector)``.

    Parameters
    ----------
    geometry : the scan (`ScanGeometry`).
    backend : ``"auto"`` (GPU when usable, else CPU), ``"astra_cpu"`` or ``"astra_cuda"``.

    Inputs may have any float dtype and device; the computation runs in float32 through ASTRA
    and results come back with the input's dtype and device. ``forward`` and ``adjoint`` are
    differentiable (each one's gradient is the other); ``fbp`` is not.
    """

    def __init__(self, geometry: ScanGeometry, backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(geometry, ScanGeometry):
            raise GeometryError(f"RayTransform needs a ScanGeometry, got {type(geometry).__name__}")
        self.geometry = geometry
        self._requested_backend = backend
        self.backend = select_backend(backend)
        tomo = _tomo()
        self._space = odl_space(geometry)
        self._odl_geometry = odl_geometry(geometry)
        self._op = tomo.RayTransform(self._space, self._odl_geometry, impl=self.backend)
        # ODL's adjoint is w.r.t. weighted inner products: <Ax, y>_w_range = <x, A*y>_w_domain.
        # The Euclidean transpose is A* scaled by w_domain / w_range.
        self._adjoint_scale = float(self._op.domain.weighting.const) / \
            float(self._op.range.weighting.const)
        self._odl_adjoint = self._op.adjoint
        self._fbp_ops: dict[tuple[str, float, bool], Any] = {}
        self._norm: float | None = None
        self._lock = threading.Lock()  # ASTRA objects are not re-entrant

    # ------------------------------------------------------------------ shapes
    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.geometry.shape

    @property
    def sinogram_shape(self) -> tuple[int, int]:
        """``(n_views, n_detector)``."""
        return self.geometry.sinogram_shape

    @property
    def odl_operator(self):
        """The underlying ODL ``RayTransform`` (weighted spaces; see the module notes)."""
        return self._op

    def _label(self) -> str:
        return f"geometry {self.geometry.name!r}" if self.geometry.name else "the geometry"

    def _check(self, t: Any, what: str) -> torch.Tensor:
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(t)
        if not isinstance(t, torch.Tensor):
            raise InvalidValueError(f"{what} must be a torch tensor, got {type(t).__name__}")
        if t.is_complex():
            raise InvalidValueError(f"{what} must be real, got dtype {t.dtype}")
        if what == "image":
            h, w = self.image_shape
            expected = f"(B, 1, {h}, {w})"
            ok = t.ndim == 4 and t.shape[1] == 1 and tuple(t.shape[2:]) == (h, w)
            if not ok:
                raise ShapeError(f"image shape {tuple(t.shape)} does not match "
                                 f"{self._label()} ({h} x {w} pixels); expected {expected}")
        else:
            na, nd = self.sinogram_shape
            ok = t.ndim == 4 and t.shape[1] == 1 and tuple(t.shape[2:]) == (na, nd)
            if not ok:
                raise ShapeError(f"sinogram shape {tuple(t.shape)} does not match "
                                 f"{self._label()} ({na} views x {nd} detector pixels); "
                                 f"expected (B, 1, {na}, {nd})")
        if not _all_finite(t):
            raise InvalidValueError(f"{what} contains NaN or Inf values")
        return t

    # ------------------------------------------------------------------ numerics
    def _project(self, t: torch.Tensor, direction: str) -> torch.Tensor:
        """Apply forward/adjoint to each batch item in float32 NumPy; no checks, no autograd."""
        arr = t.detach().to(device="cpu", dtype=torch.float32).numpy()
        if direction == "forward":
            op, scale, out_shape = self._op, 1.0, self.sinogram_shape
        else:
            op, scale, out_shape = self._odl_adjoint, self._adjoint_scale, self.image_shape
        out = np.empty((arr.shape[0], 1) + tuple(out_shape), dtype=np.float32)
        with self._lock:
            for b in range(arr.shape[0]):
                out[b, 0] = np.asarray(op(np.ascontiguousarray(arr[b, 0])).asarray())
        if scale != 1.0:
            out *= np.float32(scale)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        return torch.from_numpy(out).to(device=t.device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Line integrals ``A x`` of images ``x`` (B, 1, H, W) -> (B, 1, n_views, n_det)."""
        x = self._check(x, "image")
        return _Projection.apply(x, self, "forward")

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact transpose (back-projection) ``A^T y``: (B, 1, n_views, n_det) -> (B, 1, H, W)."""
        y = self._check(y, "sinogram")
        return _Projection.apply(y, self, "adjoint")

    def fbp(self, y: torch.Tensor, filter_type: str = "Hann",
            frequency_scaling: float = 1.0, padding: bool = True) -> torch.Tensor:
        """Filtered back-projection (ODL ``fbp_op``) of sinograms ``y`` -> images.

        ``filter_type`` is one of `FBP_FILTERS`; ``frequency_scaling`` in (0, 1] is the relative
        cut-off. Parallel beam is exact for complete data; fan beam uses ODL's approximate
        flat-detector FBP (no Parker weighting, so best with 360-degree scans). For angular
        ranges shorter than 180 degrees (parallel) or 360 degrees (fan), ODL's normalisation by
        the covered range is replaced by the complete one, so that values stay in scale.
        Not differentiable.
        """
        y = self._check(y, "sinogram")
        key = check_fbp_filter(filter_type, frequency_scaling) + (bool(padding),)
        op = self._fbp_operator(key)
        alen = float(self._odl_geometry.motion_params.length)
        full = math.pi if self.geometry.kind == "parallel" else 2 * math.pi
        scale = np.float32(alen / max(alen, full))
        arr = y.detach().to(device="cpu", dtype=torch.float32).numpy()
        out = np.empty((arr.shape[0], 1) + self.image_shape, dtype=np.float32)
        with self._lock, warnings.catch_warnings():
            # ODL's padding operator casts a NaN cell size of irregular angle axes; harmless.
            warnings.filterwarnings("ignore", "invalid value encountered in cast",
                                    RuntimeWarning)
            for b in range(arr.shape[0]):
                out[b, 0] = np.asarray(op(np.ascontiguousarray(arr[b, 0])).asarray())
        out *= scale
        dtype = y.dtype if y.is_floating_point() else torch.float32
        return torch.from_numpy(out).to(device=y.device, dtype=dtype)

    def _fbp_operator(self, key: tuple[str, float, bool]):
        """ODL FBP operator for (filter, frequency scaling, padding), built once and cached."""
        if key not in self._fbp_ops:
            tomo = _tomo()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "invalid value encountered in cast",
                                        RuntimeWarning)
                self._fbp_ops[key] = tomo.fbp_op(self._op, padding=key[2], filter_type=key[0],
                                                 frequency_scaling=key[1])
        return self._fbp_ops[key]

    def norm(self, n_iter: int = 100, tol: float = 1e-6) -> float:
        """Operator norm ``||A||_2`` (largest singular value, Euclidean), by power iteration on
        ``A^T A`` from a fixed start; computed once and cached."""
        if self._norm is None:
            rng = np.random.default_rng(0)
            x = rng.random(self.image_shape).astype(np.float32)
            x /= np.linalg.norm(x)
            lam = 0.0
            with self._lock:
                for _ in range(int(n_iter)):
                    z = np.asarray(self._odl_adjoint(self._op(x)).asarray(), dtype=np.float64)
                    z *= self._adjoint_scale
                    new = float(np.linalg.norm(z))
                    if new == 0.0:
                        break
                    x = (z / new).astype(np.float32)
                    if abs(new - lam) <= tol * new:
                        lam = new
                        break
                    lam = new
            self._norm = math.sqrt(lam)
        return self._norm

    def __reduce__(self):
        # ODL/ASTRA objects and the lock do not pickle; rebuild from the geometry instead
        # (deepcopy, DataLoader workers, torch.save of a module holding the operator).
        return (type(self), (self.geometry, self._requested_backend))

    def __repr__(self) -> str:
        g = self.geometry
        h, w = self.image_shape
        na, nd = self.sinogram_shape
        name = f"'{g.name}', " if g.name else ""
        return (f"RayTransform({name}{g.kind}, image {h}x{w} @ {g.pixel_spacing:g} mm, "
                f"{na} views x {nd} detector pixels @ {g.detector_spacing:g} mm, "
                f"backend={self.backend!r})")
