"""Image-space forward operators for the natural-image tasks of the DEFT paper.

Inpainting, 4x super-resolution, Gaussian deblurring, HDR, phase retrieval and a non-linear
deblurring operator, as ``torch.nn.Module`` s over batched images ``(B, C, H, W)`` (any ``B``,
any ``C``: every operator acts on each channel of each item independently).

Range convention
----------------
Images are in the package's **model range [0, 1]** (``x``); the diffusion prior works on
``z = 2 x - 1`` in [-1, 1]. Every operator here takes ``x`` in [0, 1], so noise levels (``sigma``
of :class:`~deftmed.physics.noise.GaussianNoise`) are in [0, 1] image units for the linear
operators. The one exception is :class:`HDR`, which the paper defines on the [-1, 1] range:
``A(x) = clip(2 z, -1, 1)`` with ``z = 2 x - 1``, so its measurements are in [-1, 1].

Common interface (:class:`ImagingOperator`)
-------------------------------------------
``forward(x)``                 ``A(x)``; differentiable by autograd.
``measurement_shape(shape)``   trailing dims ``(C', H', W')`` of ``A(x)`` for an image of trailing
                               dims ``(C, H, W)`` (a leading batch dim is passed through).
``linear``                     bool. Linear operators have an exact ``adjoint(y)`` (dot test and
                               autograd VJP agree) and ``norm()``; non-linear ones raise.
``vjp(x, v)``                  ``J_A(x)^T v`` by autograd (for linear ``A`` equals ``adjoint(v)``).
``guidance_backprojection(r, x=None)``
                               the map ``B`` of DEFT's guidance ``g = B(score)``: the mask
                               (inpainting), the pseudo-inverse (super-resolution), the adjoint
                               (blur), the autograd VJP at ``x`` (non-linear operators: then
                               ``g`` is the exact likelihood gradient). ``fbp(y)`` is an alias for
                               linear operators so the CT-oriented guidance code runs unchanged.
``measurement_image(y)``       a crude image from ``y`` (the ``A*y`` input of ablations, and a
                               starting point).
``svd(image_shape)``           an :class:`OperatorSVD` ``A = U diag(s) V^T`` where one is cheap
                               (inpainting, both super-resolutions), else ``None`` (for DDRM).
``to_dict()`` / ``from_dict``  plain JSON-friendly description; :func:`build_operator` builds any.

Noise: :class:`~deftmed.physics.noise.GaussianNoise` works directly with the linear operators
(``log_likelihood_grad`` uses ``op.adjoint``); :func:`likelihood_grad` covers the non-linear ones
by autograd of ``log_likelihood``.
"""

from __future__ import annotations

import base64
import math
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from deftmed.errors import ConfigError, ShapeError

__all__ = [
    "ImagingOperator", "OperatorSVD", "Inpainting", "RandomMaskOperator", "SuperResolution",
    "GaussianBlur", "HDR", "PhaseRetrieval", "NonlinearBlur", "box_mask", "random_pixel_mask",
    "stroke_mask", "hio_er_estimate", "build_operator", "likelihood_grad", "OPERATORS",
]


# ----------------------------------------------------------------------------- helpers
def _check_image(x: Any, what: str = "image") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{what} must be a torch tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ShapeError(f"{what} must have shape (B, C, H, W), got {tuple(x.shape)}")
    return x


def _number(value: Any, key: str, where: str, *, minimum: float = 0.0,
            strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key!r} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        rel = ">" if strict else ">="
        raise ConfigError(f"{where}: {key!r} must be a finite number {rel} {minimum:g}, "
                          f"got {value!r}")
    return v


def _integer(value: Any, key: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _size2(size: Any, where: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (size, size)
    if not isinstance(size, (tuple, list)) or len(size) != 2:
        raise ConfigError(f"{where}: size must be an int or (H, W), got {size!r}")
    return _integer(size[0], "size[0]", where), _integer(size[1], "size[1]", where)


def _rng(rng: Any) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _split_shape(image_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (3, 4):
        raise ShapeError(f"image shape must be (C, H, W) or (B, C, H, W), got {shape}")
    return shape[:-3], shape[-3], shape[-2], shape[-1]


class OperatorSVD:
    """A singular value decomposition ``A = U diag(s) V^T`` in image-shaped coordinates.

    Spectral coefficients are tensors of the image's shape ``(B, C, H, W)``; ``s`` (from
    :meth:`singular_values`) broadcasts to it and is zero on the null space of ``A``.
    ``Vt``/``V`` are orthogonal maps image <-> coefficients, ``Ut`` maps a measurement to
    coefficients (zero where ``s == 0``) and ``U`` maps coefficients back to a measurement, so
    ``A x = U(s * Vt(x))`` and ``A^T y = V(s * Ut(y))``.
    """

    def Vt(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 (standard SVD names)
        raise NotImplementedError

    def V(self, c: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def Ut(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def U(self, c: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def singular_values(self) -> torch.Tensor:
        raise NotImplementedError


class _DiagonalSVD(OperatorSVD):
    """``A = diag(m)`` with ``m`` in [0, 1]: ``U = V = I``, ``s = m``."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def Vt(self, x):
        return x

    def V(self, c):
        return c

    def Ut(self, y):
        return (self.mask > 0).to(y.dtype) * y

    def U(self, c):
        return (self.mask > 0).to(c.dtype) * c

    def singular_values(self):
        return self.mask


class _SeparableSVD(OperatorSVD):
    """``A x = D_H x D_W^T`` per channel, with ``D_H = U_H S_H V_H^T`` (full ``V``): coefficient
    ``(i, j)`` has singular value ``s_H[i] s_W[j]`` for ``i < h, j < w`` and 0 elsewhere."""

    def __init__(self, dh: torch.Tensor, dw: torch.Tensor):
        (uh, sh, vht), (uw, sw, vwt) = (torch.linalg.svd(d.double(), full_matrices=True)
                                        for d in (dh, dw))
        self.h, self.w = dh.shape[0], dw.shape[0]
        H, W = dh.shape[1], dw.shape[1]
        f = dh.dtype
        self.uh, self.vh, self.uw, self.vw = uh.to(f), vht.T.to(f), uw.to(f), vwt.T.to(f)
        s = torch.zeros(H, W, dtype=torch.float64)
        s[: self.h, : self.w] = sh[:, None] * sw[None, :]
        self.s = s.to(f)

    def Vt(self, x):
        return torch.einsum("hi,bchw,wj->bcij", self.vh.to(x), x, self.vw.to(x))

    def V(self, c):
        return torch.einsum("hi,bcij,wj->bchw", self.vh.to(c), c, self.vw.to(c))

    def Ut(self, y):
        c = torch.einsum("ki,bckl,lj->bcij", self.uh.to(y), y, self.uw.to(y))
        H, W = self.s.shape
        return F.pad(c, (0, W - self.w, 0, H - self.h))

    def U(self, c):
        c = c[..., : self.h, : self.w]
        return torch.einsum("ki,bcij,lj->bckl", self.uh.to(c), c, self.uw.to(c))

    def singular_values(self):
        return self.s


# ----------------------------------------------------------------------------- base class
class ImagingOperator(torch.nn.Module):
    """Base class: see the module docstring for the interface."""

    type_name: ClassVar[str] = "base"
    linear: ClassVar[bool] = True

    def measurement_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        lead, c, h, w = _split_shape(image_shape)
        return lead + (c, h, w)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"{type(self).__name__} is non-linear and has no adjoint; use "
                          "vjp(x, v) or deftmed.physics.imaging.likelihood_grad (autograd)")

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J_A(x)^T v`` by autograd (no graph kept; for linear ``A`` this is ``A^T v``)."""
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.forward(xx), xx, v.detach())
        return g

    def guidance_backprojection(self, residual: torch.Tensor,
                                x: torch.Tensor | None = None) -> torch.Tensor:
        """``B(residual)``; default: the adjoint (linear) or the VJP at ``x`` (non-linear)."""
        if self.linear:
            return self.adjoint(residual)
        if x is None:
            raise ConfigError(f"{type(self).__name__} is non-linear: guidance_backprojection "
                              "needs the linearisation point x")
        return self.vjp(x, residual)

    def fbp(self, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Alias of :meth:`guidance_backprojection` for linear operators (the CT code's name;
        filter arguments are ignored)."""
        if not self.linear:
            raise ConfigError(f"{type(self).__name__} is non-linear: use "
                              "guidance_backprojection(residual, x)")
        return self.guidance_backprojection(y)

    def measurement_image(self, y: torch.Tensor) -> torch.Tensor:
        """A crude image estimate from a measurement (default: the backprojection)."""
        return self.guidance_backprojection(y)

    def svd(self, image_shape: tuple[int, ...]) -> OperatorSVD | None:
        """An SVD for images of trailing shape ``(C, H, W)``, or None where none is cheap."""
        return None

    def norm(self, image_shape: tuple[int, ...] = (1, 64, 64), n_iter: int = 50) -> float:
        """``||A||_2`` by power iteration on ``A^T A`` (subclasses give closed forms)."""
        if not self.linear:
            raise ConfigError(f"{type(self).__name__} is non-linear: no operator norm")
        lead, c, h, w = _split_shape(image_shape)
        g = torch.Generator().manual_seed(0)
        x = torch.rand((1, c, h, w), generator=g)
        lam = 0.0
        with torch.no_grad():
            for _ in range(n_iter):
                x = x / x.norm()
                z = self.adjoint(self.forward(x))
                lam = float((x * z).sum())
                x = z
        return math.sqrt(max(lam, 0.0))

    def conditioning(self, y: torch.Tensor) -> torch.Tensor | None:
        """Extra input channels for DEFT's h-network, per measurement (default: none)."""
        return None

    def conditioning_channels(self, image_channels: int) -> int:
        return 0

    def lipschitz(self, image_shape: tuple[int, ...] = (1, 64, 64)) -> float:
        """A Lipschitz constant of ``A`` (the norm for linear operators): the natural unit of
        a gradient step on ``||y - A x||`` (DPS's step, RED-diff's data weight)."""
        return self.norm(image_shape)

    # --- serialisation ---------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {}

    def fingerprint(self) -> str:
        """SHA-256 of the canonical description (binds h-transforms to their operator)."""
        return _fingerprint(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, **self._params()}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "ImagingOperator":
        return build_operator(spec) if cls is ImagingOperator else _from_dict(cls, spec)

    def describe(self) -> str:
        return repr(self)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._params().items() if k != "mask")


def _fingerprint(d: dict[str, Any]) -> str:
    import hashlib
    import json

    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _from_dict(cls: type, spec: dict[str, Any]) -> ImagingOperator:
    if not isinstance(spec, dict):
        raise ConfigError(f"operator spec must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    kind = spec.pop("type", cls.type_name)
    if kind != cls.type_name:
        raise ConfigError(f"spec of type {kind!r} given to {cls.__name__}")
    allowed = set(cls._ARGS)
    unknown = sorted(set(map(str, spec)) - allowed)
    if unknown:
        raise ConfigError(f"{cls.type_name} operator: unknown key(s) {unknown}; allowed: "
                          f"{sorted(allowed)}")
    return cls(**spec)


# ----------------------------------------------------------------------------- inpainting
def box_mask(size: int | tuple[int, int], frac: float = 0.25, rng: Any = None) -> torch.Tensor:
    """A rectangular hole covering about ``frac`` of the image, at a random position.

    Returns a float32 ``(H, W)`` mask, **1 = observed, 0 = missing**; the box has sides
    ``round(sqrt(frac) H) x round(sqrt(frac) W)`` (``frac`` is the missing fraction).
    """
    H, W = _size2(size, "box_mask")
    frac = _number(frac, "frac", "box_mask")
    if frac >= 1:
        raise ConfigError(f"box_mask: 'frac' must be < 1, got {frac}")
    r = _rng(rng)
    bh, bw = max(1, round(math.sqrt(frac) * H)), max(1, round(math.sqrt(frac) * W))
    top, left = int(r.integers(0, H - bh + 1)), int(r.integers(0, W - bw + 1))
    m = torch.ones(H, W)
    m[top:top + bh, left:left + bw] = 0
    return m


def random_pixel_mask(size: int | tuple[int, int], frac: float = 0.5,
                      rng: Any = None) -> torch.Tensor:
    """Exactly ``round(frac H W)`` pixels missing, chosen uniformly (1 = observed)."""
    H, W = _size2(size, "random_pixel_mask")
    frac = _number(frac, "frac", "random_pixel_mask", strict=False)
    if frac >= 1:
        raise ConfigError(f"random_pixel_mask: 'frac' must be < 1, got {frac}")
    n_miss = round(frac * H * W)
    m = np.ones(H * W, dtype=np.float32)
    m[_rng(rng).permutation(H * W)[:n_miss]] = 0
    return torch.from_numpy(m.reshape(H, W))


def stroke_mask(size: int | tuple[int, int], rng: Any = None,
                coverage: tuple[float, float] = (0.2, 0.3)) -> torch.Tensor:
    """Free-form brush strokes (random polylines drawn with a round brush) until the missing
    fraction lies in ``coverage`` (default 20-30 %, the free-form masks of the paper's
    inpainting task). 1 = observed, 0 = missing.

    Strokes are stamped disk by disk; the target fraction is drawn uniformly from
    ``[lo, hi - one disk]`` so that the last disk cannot overshoot ``hi``.
    """
    H, W = _size2(size, "stroke_mask")
    if not isinstance(coverage, (tuple, list)) or len(coverage) != 2:
        raise ConfigError(f"stroke_mask: coverage must be (lo, hi), got {coverage!r}")
    lo = _number(coverage[0], "coverage[0]", "stroke_mask")
    hi = _number(coverage[1], "coverage[1]", "stroke_mask")
    if not lo <= hi < 1:
        raise ConfigError(f"stroke_mask: need 0 < lo <= hi < 1, got {coverage!r}")
    r = _rng(rng)
    S, N = min(H, W), H * W
    r_min, r_max = max(1.0, 0.015 * S), max(1.5, 0.04 * S)
    disk_frac = (math.pi * (r_max + 1) ** 2) / N
    target = r.uniform(lo, max(lo, hi - disk_frac))
    hole = np.zeros((H, W), dtype=bool)
    missing = 0
    yy_all, xx_all = np.mgrid[0:H, 0:W]
    while missing < target * N:
        rad = r.uniform(r_min, r_max)
        cy, cx = r.uniform(0, H), r.uniform(0, W)
        angle = r.uniform(0, 2 * math.pi)
        for _ in range(int(r.integers(3, 9))):
            angle += r.normal(0.0, 0.7)
            length = r.uniform(0.05 * S, 0.25 * S)
            n_steps = max(1, int(length / max(rad / 2, 0.5)))
            for s in range(1, n_steps + 1):
                py = min(max(cy + math.sin(angle) * length * s / n_steps, 0), H - 1)
                px = min(max(cx + math.cos(angle) * length * s / n_steps, 0), W - 1)
                y0, y1 = max(int(py - rad), 0), min(int(py + rad) + 2, H)
                x0, x1 = max(int(px - rad), 0), min(int(px + rad) + 2, W)
                disk = ((yy_all[y0:y1, x0:x1] - py) ** 2 + (xx_all[y0:y1, x0:x1] - px) ** 2
                        <= rad ** 2)
                region = hole[y0:y1, x0:x1]
                missing += int((disk & ~region).sum())
                region |= disk
                if missing >= target * N:
                    break
            cy, cx = py, px
            if missing >= target * N:
                break
    return torch.from_numpy((~hole).astype(np.float32))


_MASK_KINDS: dict[str, Callable[..., torch.Tensor]] = {
    "box": box_mask, "random": random_pixel_mask, "stroke": stroke_mask}


def _mask_from_spec(spec: dict[str, Any]) -> torch.Tensor:
    """Masks from ``{kind: box|random|stroke, size, frac | coverage, seed}`` or
    ``{kind: array, shape, bits}`` (bits: base64 of ``np.packbits`` of the 0/1 mask)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ConfigError(f"inpainting mask spec must be a mapping with 'kind', got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "array":
        if set(spec) != {"shape", "bits"}:
            raise ConfigError("array mask spec needs exactly 'shape' and 'bits'")
        shape = tuple(int(s) for s in spec["shape"])
        try:
            bits = np.unpackbits(np.frombuffer(base64.b64decode(spec["bits"]), dtype=np.uint8))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"array mask spec: bad 'bits' ({exc})") from None
        n = int(np.prod(shape))
        if bits.size < n:
            raise ConfigError(f"array mask spec: 'bits' too short for shape {shape}")
        return torch.from_numpy(bits[:n].astype(np.float32).reshape(shape))
    if kind not in _MASK_KINDS:
        raise ConfigError(f"unknown mask kind {kind!r}; use one of {sorted(_MASK_KINDS)} "
                          "or 'array'")
    allowed = {"size", "seed"} | ({"coverage"} if kind == "stroke" else {"frac"})
    unknown = sorted(set(spec) - allowed)
    if unknown or "size" not in spec:
        raise ConfigError(f"{kind} mask spec: needs 'size'; allowed keys {sorted(allowed)}, "
                          f"unknown {unknown}")
    seed = spec.pop("seed", 0)
    if kind == "stroke":
        return stroke_mask(spec["size"], seed, tuple(spec.get("coverage", (0.2, 0.3))))
    return _MASK_KINDS[kind](spec["size"], spec.get("frac", 0.25), seed)


class Inpainting(ImagingOperator):
    """``A x = m * x``: keep the observed pixels (``m = 1``), zero the missing ones.

    ``mask``: a tensor ``(H, W)``, ``(1, H, W)`` or ``(B, 1, H, W)`` with values in [0, 1]
    (1 = observed; shared by all channels, and by all batch items unless ``B > 1``), or a mask
    spec dict (see :func:`_mask_from_spec`: ``{kind: stroke, size: 256, seed: 3}``), which is
    what :meth:`to_dict` then records. The measurement keeps the image shape (zeros where
    missing). ``A`` is self-adjoint and diagonal: ``A^T = A``, SVD ``U = V = I``, ``s = m``; the
    mask is also its own pseudo-inverse, hence the guidance backprojection.

    Amortised over masks (see :class:`RandomMaskOperator`), DEFT's h-network gets the mask as
    one extra input channel: :meth:`mask_channel` returns it as ``(B, 1, H, W)``.
    """

    type_name = "inpainting"
    linear = True
    _ARGS = ("mask", "fill")

    def __init__(self, mask: torch.Tensor | dict[str, Any], fill: float = 0.5):
        super().__init__()
        self._spec = dict(mask) if isinstance(mask, dict) else None
        m = _mask_from_spec(mask) if isinstance(mask, dict) else mask
        if not isinstance(m, torch.Tensor):
            raise ConfigError(f"inpainting: mask must be a tensor or a spec dict, got "
                              f"{type(m).__name__}")
        m = m.detach().float()
        if m.dim() == 2:
            m = m[None, None]
        elif m.dim() == 3:
            m = m[None]
        if m.dim() != 4 or m.shape[1] != 1:
            raise ShapeError(f"inpainting: mask must be (H, W), (1, H, W) or (B, 1, H, W), "
                             f"got {tuple(m.shape)}")
        if not bool(((m >= 0) & (m <= 1)).all()):
            raise ConfigError("inpainting: mask values must lie in [0, 1] (1 = observed)")
        self.fill = _number(fill, "fill", "inpainting", minimum=-math.inf)
        self.register_buffer("mask", m)

    def _mask_for(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x)
        if tuple(x.shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise ShapeError(f"inpainting: image {tuple(x.shape[-2:])} does not match the mask "
                             f"{tuple(self.mask.shape[-2:])}")
        if self.mask.shape[0] not in (1, x.shape[0]):
            raise ShapeError(f"inpainting: {self.mask.shape[0]} masks for a batch of "
                             f"{x.shape[0]}")
        return self.mask.to(x)

    def forward(self, x):
        return self._mask_for(x) * x

    def adjoint(self, y):
        return self._mask_for(y) * y

    def measurement_image(self, y):
        """Observed pixels, missing ones set to ``fill`` (mid-grey by default)."""
        m = self._mask_for(y)
        return m * y + (1 - m) * self.fill

    def mask_channel(self, batch_size: int | None = None) -> torch.Tensor:
        """The mask as an extra h-network input channel, ``(B, 1, H, W)``."""
        b = self.mask.shape[0] if batch_size is None else batch_size
        return self.mask.expand(b, 1, *self.mask.shape[-2:])

    def conditioning(self, y):
        return self.mask_channel(y.shape[0]).to(y)

    def repeat_interleave(self, n: int) -> "Inpainting":
        """The operator for a batch whose items are each repeated ``n`` times."""
        if self.mask.shape[0] == 1:
            return self
        return Inpainting(self.mask.repeat_interleave(int(n), dim=0), self.fill)

    def conditioning_channels(self, image_channels):
        return 1

    def svd(self, image_shape):
        return _DiagonalSVD(self.mask)

    def norm(self, image_shape=None, n_iter=0):
        return float(self.mask.max())

    def coverage(self) -> float:
        """Fraction of missing pixels (averaged over masks)."""
        return float(1 - self.mask.mean())

    def _params(self):
        if self._spec is not None:
            mask = self._spec
        else:
            bits = np.packbits((self.mask.cpu().numpy() > 0.5).astype(np.uint8).ravel())
            mask = {"kind": "array", "shape": list(self.mask.shape),
                    "bits": base64.b64encode(bits.tobytes()).decode("ascii")}
        return {"mask": mask, "fill": self.fill}


class RandomMaskOperator:
    """Draws :class:`Inpainting` operators with a fresh mask per batch item.

    For DEFT amortised over masks: each training step samples ``op = gen.sample(B, rng)``,
    simulates ``y = op(x0) + noise`` and feeds ``op.mask_channel()`` to the h-network as one
    extra input channel (so the network knows which pixels were seen).
    ``kind``: ``stroke`` (``coverage``), ``box`` or ``random`` (``frac``: missing fraction).
    """

    type_name = "random_inpainting"
    linear = True

    def __init__(self, kind: str = "stroke", size: int | tuple[int, int] = 256,
                 frac: float = 0.25, coverage: tuple[float, float] = (0.2, 0.3)):
        if kind not in _MASK_KINDS:
            raise ConfigError(f"unknown mask kind {kind!r}; use one of {sorted(_MASK_KINDS)}")
        self.kind, self.size = kind, _size2(size, "RandomMaskOperator")
        self.frac, self.coverage = float(frac), (float(coverage[0]), float(coverage[1]))
        self.sample_mask(1, 0)  # validates the parameters

    def sample_mask(self, batch_size: int, rng: Any = None) -> torch.Tensor:
        """``(B, 1, H, W)`` masks (1 = observed)."""
        r = _rng(rng)
        if self.kind == "stroke":
            ms = [stroke_mask(self.size, r, self.coverage) for _ in range(batch_size)]
        else:
            ms = [_MASK_KINDS[self.kind](self.size, self.frac, r) for _ in range(batch_size)]
        return torch.stack(ms)[:, None]

    def sample(self, batch_size: int, rng: Any = None) -> Inpainting:
        return Inpainting(self.sample_mask(batch_size, rng))

    def for_seeds(self, seeds) -> Inpainting:
        """One mask per seed (reproducible per image, e.g. a benchmark's image index)."""
        return Inpainting(torch.cat([self.sample_mask(1, int(s)) for s in seeds]))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "kind": self.kind, "size": list(self.size),
                "frac": self.frac, "coverage": list(self.coverage)}

    def fingerprint(self) -> str:
        return _fingerprint(self.to_dict())

    def conditioning_channels(self, image_channels: int) -> int:
        return 1  # the mask

    def accepts(self, op: Any) -> bool:
        """Whether ``op`` is one of this family's operators (an inpainting of the right size)."""
        return isinstance(op, Inpainting) and tuple(op.mask.shape[-2:]) == tuple(self.size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RandomMaskOperator":
        d = {k: v for k, v in d.items() if k != "type"}
        unknown = sorted(set(d) - {"kind", "size", "frac", "coverage"})
        if unknown:
            raise ConfigError(f"random_inpainting: unknown keys {unknown}")
        return cls(**d)


# ----------------------------------------------------------------------------- super-resolution
class SuperResolution(ImagingOperator):
    """Downsampling by an integer ``factor``, separable: ``A x = D_H x D_W^T`` per channel.

    ``kind="bicubic"``: PyTorch's bicubic resize with antialiasing (``F.interpolate(...,
    mode="bicubic", antialias=True)``, PIL-like, as the paper). ``D`` is obtained exactly by
    resizing the identity matrix, so the adjoint ``D_H^T y D_W`` is exact and the SVD is the
    product of the two 1D SVDs.
    ``kind="block"``: block averaging over ``factor x factor`` pixels, ``D = (I kron 1^T)/f``;
    adjoint = nearest upsampling / ``f^2``; singular values ``1/f`` (exact SVD).

    Guidance backprojection and SVD: the pseudo-inverse ``D_H^+ y D_W^{+T}`` (for block
    averaging, nearest upsampling). ``measurement_image``: bicubic resp. nearest upsampling.
    Image sides must be multiples of ``factor``.
    """

    type_name = "super_resolution"
    linear = True
    _ARGS = ("factor", "kind")

    def __init__(self, factor: int = 4, kind: str = "bicubic"):
        super().__init__()
        self.factor = _integer(factor, "factor", "super_resolution")
        if kind not in ("bicubic", "block"):
            raise ConfigError(f"super_resolution: kind must be 'bicubic' or 'block', got {kind!r}")
        self.kind = kind
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def measurement_shape(self, image_shape):
        lead, c, h, w = _split_shape(image_shape)
        if h % self.factor or w % self.factor:
            raise ShapeError(f"super_resolution: image {h}x{w} is not divisible by the factor "
                             f"{self.factor}")
        return lead + (c, h // self.factor, w // self.factor)

    def _matrix(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(D, D^+)`` for a side of ``n`` pixels (float64, CPU, cached)."""
        if n not in self._cache:
            if n % self.factor:
                raise ShapeError(f"super_resolution: size {n} is not divisible by the factor "
                                 f"{self.factor}")
            m = n // self.factor
            eye = torch.eye(n, dtype=torch.float64)
            if self.kind == "bicubic":
                d = F.interpolate(eye[None, None], size=(m, n), mode="bicubic",
                                  antialias=True, align_corners=False)[0, 0]
                pinv = torch.linalg.pinv(d)
            else:
                d = eye.reshape(m, self.factor, n).mean(1)
                pinv = d.T * self.factor
            self._cache[n] = (d, pinv)
        return self._cache[n]

    def _resample(self, t: torch.Tensor, transpose: bool) -> torch.Tensor:
        """``D_H t D_W^T`` (forward) or ``D_H^T t D_W`` (adjoint) on each channel."""
        _check_image(t)
        f = self.factor if transpose else 1
        dh, dw = (self._matrix(n * f)[0].to(t) for n in t.shape[-2:])
        if transpose:
            return torch.einsum("ih,bcij,jw->bchw", dh, t, dw)
        return torch.einsum("ih,bchw,jw->bcij", dh, t, dw)

    def forward(self, x):
        return self._resample(x, transpose=False)

    def adjoint(self, y):
        return self._resample(y, transpose=True)

    def pinv(self, y: torch.Tensor) -> torch.Tensor:
        """Pseudo-inverse ``A^+ y = D_H^+ y D_W^{+T}``."""
        _check_image(y, "measurement")
        H, W = y.shape[-2] * self.factor, y.shape[-1] * self.factor
        ph, pw = self._matrix(H)[1].to(y), self._matrix(W)[1].to(y)
        return torch.einsum("hi,bcij,wj->bchw", ph, y, pw)

    def guidance_backprojection(self, residual, x=None):
        return self.pinv(residual)

    def measurement_image(self, y):
        _check_image(y, "measurement")
        if self.kind == "block":
            return F.interpolate(y, scale_factor=self.factor, mode="nearest")
        return F.interpolate(y, scale_factor=self.factor, mode="bicubic", align_corners=False)

    def svd(self, image_shape):
        _, c, h, w = _split_shape(image_shape)
        return _SeparableSVD(self._matrix(h)[0].float(), self._matrix(w)[0].float())

    def norm(self, image_shape=(1, 64, 64), n_iter=0):
        if self.kind == "block":
            return 1.0 / self.factor
        _, _, h, w = _split_shape(image_shape)
        return float(torch.linalg.matrix_norm(self._matrix(h)[0], 2)
                     * torch.linalg.matrix_norm(self._matrix(w)[0], 2))

    def _params(self):
        return {"factor": self.factor, "kind": self.kind}


# ----------------------------------------------------------------------------- blur
def gaussian_kernel_1d(sigma: float, kernel_size: int) -> torch.Tensor:
    """``k_i = exp(-i^2 / (2 sigma^2)) / sum``, ``i = -(K-1)/2 .. (K-1)/2`` (float64)."""
    i = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-i ** 2 / (2 * sigma ** 2))
    return k / k.sum()


class GaussianBlur(ImagingOperator):
    """Convolution with a normalised, truncated ``kernel_size x kernel_size`` Gaussian.

    ``padding="circular"`` (default): periodic boundary, computed by FFT,
    ``A x = F^-1(K . F x)`` with ``K`` the DFT of the kernel centred at pixel (0, 0); the kernel
    is symmetric so ``K`` is real and ``A^T y = F^-1(conj(K) . F y)`` is exact; ``||A|| = 1``.
    ``padding="zero"``: ``conv2d`` with zero padding; adjoint ``conv_transpose2d`` (exact).
    ``kernel_size`` must be odd (a symmetric kernel). Guidance backprojection: the adjoint;
    ``measurement_image``: the blurred image itself.
    """

    type_name = "gaussian_blur"
    linear = True
    _ARGS = ("sigma", "kernel_size", "padding")

    def __init__(self, sigma: float = 3.0, kernel_size: int = 61, padding: str = "circular"):
        super().__init__()
        where = self.type_name
        self.sigma = _number(sigma, "sigma", where)
        self.kernel_size = _integer(kernel_size, "kernel_size", where)
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"{where}: kernel_size must be odd, got {kernel_size}")
        if padding not in ("circular", "zero"):
            raise ConfigError(f"{where}: padding must be 'circular' or 'zero', got {padding!r}")
        self.padding = padding
        self.register_buffer("kernel1d", gaussian_kernel_1d(self.sigma, self.kernel_size).float(),
                             persistent=False)
        self._fft_cache: dict[tuple[int, int], torch.Tensor] = {}

    def _spectrum(self, h: int, w: int) -> torch.Tensor:
        """``rfft2`` of the kernel wrapped onto an ``h x w`` torus (taps folded modulo size)."""
        if (h, w) not in self._fft_cache:
            k = gaussian_kernel_1d(self.sigma, self.kernel_size)
            offs = torch.arange(self.kernel_size) - self.kernel_size // 2
            kh = torch.zeros(h, dtype=torch.float64).index_add_(0, offs % h, k)
            kw = torch.zeros(w, dtype=torch.float64).index_add_(0, offs % w, k)
            self._fft_cache[(h, w)] = torch.fft.rfft2(kh[:, None] * kw[None, :])
        return self._fft_cache[(h, w)]

    def _conv(self, t: torch.Tensor, adjoint: bool) -> torch.Tensor:
        _check_image(t)
        h, w = t.shape[-2:]
        if self.padding == "circular":
            spec = self._spectrum(h, w).to(t.device)
            spec = (spec.conj() if adjoint else spec).to(torch.complex64 if t.dtype != torch.float64
                                                          else torch.complex128)
            return torch.fft.irfft2(torch.fft.rfft2(t) * spec, s=(h, w))
        k1 = self.kernel1d.to(t)
        k2 = (k1[:, None] * k1[None, :]).expand(t.shape[1], 1, -1, -1)
        fn = F.conv_transpose2d if adjoint else F.conv2d
        return fn(t, k2, padding=self.kernel_size // 2, groups=t.shape[1])

    def forward(self, x):
        return self._conv(x, adjoint=False)

    def adjoint(self, y):
        return self._conv(y, adjoint=True)

    def measurement_image(self, y):
        return _check_image(y, "measurement").clone()

    def norm(self, image_shape=(1, 64, 64), n_iter=50):
        return 1.0 if self.padding == "circular" else super().norm(image_shape, n_iter)

    def _params(self):
        return {"sigma": self.sigma, "kernel_size": self.kernel_size, "padding": self.padding}


# ----------------------------------------------------------------------------- HDR
class HDR(ImagingOperator):
    """High dynamic range: ``A(x) = clip(gain * z, -1, 1)`` with ``z = 2 x - 1`` (paper:
    ``gain = 2``), i.e. defined on the [-1, 1] range; measurements lie in [-1, 1].

    Non-linear (its Jacobian is ``2 gain`` where ``|gain z| < 1`` and 0 where clipped).
    ``measurement_image``: ``z = y / gain`` mapped back to [0, 1], ``x = (y / gain + 1) / 2``.
    """

    type_name = "hdr"
    linear = False
    _ARGS = ("gain",)

    def __init__(self, gain: float = 2.0):
        super().__init__()
        self.gain = _number(gain, "gain", self.type_name)

    def forward(self, x):
        return torch.clamp(self.gain * (2 * _check_image(x) - 1), -1.0, 1.0)

    def measurement_image(self, y):
        return (_check_image(y, "measurement") / self.gain + 1) / 2

    def lipschitz(self, image_shape=(1, 64, 64)):
        return 2.0 * self.gain  # d/dx clip(gain (2x - 1)) <= 2 gain

    def _params(self):
        return {"gain": self.gain}


# ----------------------------------------------------------------------------- phase retrieval
class PhaseRetrieval(ImagingOperator):
    """Fourier magnitudes with oversampling: ``A(x) = |F(P x)|``.

    ``P`` zero-pads each ``H x W`` channel to ``(H + 2 p_h) x (W + 2 p_w)`` with
    ``p = floor((oversampling - 1) n / 2 + 1/2)`` on each side (``oversampling=2``: ``2H x 2W``,
    image centred); ``F`` is the unitary 2D DFT (``norm="ortho"``, so ``||A(x)|| = ||x||``). Non-linear;
    the gradient of ``|.|`` at a zero coefficient is taken as 0.
    ``measurement_image``: a short deterministic HIO/ER reconstruction
    (:func:`hio_er_estimate`), as the paper uses for an extra guidance channel.
    """

    type_name = "phase_retrieval"
    linear = False
    _ARGS = ("oversampling",)

    def __init__(self, oversampling: float = 2.0):
        super().__init__()
        self.oversampling = _number(oversampling, "oversampling", self.type_name, minimum=1.0,
                                    strict=False)

    def _pad_amount(self, n: int) -> int:
        return int(math.floor((self.oversampling - 1) * n / 2 + 0.5))

    def measurement_shape(self, image_shape):
        lead, c, h, w = _split_shape(image_shape)
        return lead + (c, h + 2 * self._pad_amount(h), w + 2 * self._pad_amount(w))

    def image_size(self, padded_h: int, padded_w: int) -> tuple[int, int]:
        """``(H, W)`` of the images whose padded size is ``(padded_h, padded_w)``."""
        out = []
        for n in (padded_h, padded_w):
            guess = int(round(n / self.oversampling))
            cands = [m for m in range(max(1, guess - 2), guess + 3)
                     if m + 2 * self._pad_amount(m) == n]
            if not cands:
                raise ShapeError(f"phase_retrieval: {n} is not a padded size for oversampling "
                                 f"{self.oversampling:g}")
            out.append(cands[0])
        return out[0], out[1]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self._pad_amount(x.shape[-2]), self._pad_amount(x.shape[-1])
        return F.pad(x, (pw, pw, ph, ph))

    def crop(self, g: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        ph, pw = self._pad_amount(size[0]), self._pad_amount(size[1])
        return g[..., ph:ph + size[0], pw:pw + size[1]]

    def forward(self, x):
        return torch.fft.fft2(self.pad(_check_image(x)), norm="ortho").abs()

    def measurement_image(self, y):
        return hio_er_estimate(y, self, iters=100, er_iters=20,
                               generator=torch.Generator().manual_seed(0))

    def lipschitz(self, image_shape=(1, 64, 64)):
        return 1.0  # | |F P x| - |F P x'| | <= ||x - x'|| (unitary F, zero padding)

    def conditioning(self, y):
        return self.measurement_image(y)  # the HIO/ER estimate, as the paper's extra channel

    def conditioning_channels(self, image_channels):
        return image_channels

    def _params(self):
        return {"oversampling": self.oversampling}


def hio_er_estimate(y: torch.Tensor, op: PhaseRetrieval | None = None, *, iters: int = 200,
                    er_iters: int = 50, beta: float = 0.9, init: torch.Tensor | None = None,
                    generator: torch.Generator | None = None,
                    bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Fienup's Hybrid Input-Output, then Error Reduction, from Fourier magnitudes ``y``.

    Constraints: support = the un-padded image region, values within ``bounds``. Each
    iteration replaces the Fourier magnitudes by ``y`` keeping the phase,
    ``g' = Re F^-1(y . F g / |F g|)``, then (``valid`` = inside support and bounds)
    HIO: ``g <- g'`` where valid, ``g - beta g'`` elsewhere (``iters`` times);
    ER: ``g <- clip(g', bounds)`` in the support, 0 outside (``er_iters`` times).
    Start: ``init`` (B, C, H, W) or uniform noise from ``generator``. Returns the cropped
    ``(B, C, H, W)`` estimate, clipped to ``bounds``; it is defined up to the trivial
    ambiguities of phase retrieval (shift within the padding, 180-degree rotation).
    """
    op = op if op is not None else PhaseRetrieval(2)
    _check_image(y, "measurement")
    H, W = op.image_size(y.shape[-2], y.shape[-1])
    lo, hi = bounds
    yd = y.detach()
    with torch.no_grad():
        x0 = init if init is not None else lo + (hi - lo) * torch.rand(
            (y.shape[0], y.shape[1], H, W), generator=generator).to(y)
        support = op.pad(torch.ones(1, 1, H, W, device=y.device, dtype=torch.bool))
        g = op.pad(x0.to(yd))
        for k in range(int(iters) + int(er_iters)):
            G = torch.fft.fft2(g, norm="ortho")
            G = yd * G / G.abs().clamp_min(1e-12)
            gp = torch.fft.ifft2(G, norm="ortho").real
            if k < iters:
                valid = support & (gp >= lo) & (gp <= hi)
                g = torch.where(valid, gp, g - beta * gp)
            else:
                g = torch.where(support, gp.clamp(lo, hi), torch.zeros_like(gp))
        return op.crop(g, (H, W)).clamp(lo, hi)


# ----------------------------------------------------------------------------- non-linear blur
class NonlinearBlur(ImagingOperator):
    """A blur followed by a saturating camera response:
    ``A(x) = R(k * x)``, ``R(u) = tanh(alpha u) / tanh(alpha)``
    (``k``: the circular Gaussian blur of :class:`GaussianBlur`; ``R(0) = 0``, ``R(1) = 1``,
    monotone, bounded, ``R -> identity`` as ``alpha -> 0``).

    **Not the paper's operator.** The DEFT paper (after DPS) uses the non-linear blur of
    Tran et al. (2021, "Explore image deblurring via encoded blur kernel space"): a *learned*
    network maps a sharp image and a random latent kernel code to a blurry image. Its pretrained
    weights are not available here, so this self-contained, differentiable stand-in keeps the
    task's character (unknown-free but non-linear forward model: blur + saturation) without the
    learned, spatially varying kernels. Results are not comparable with the paper's numbers.
    ``measurement_image``: ``R^-1(y) = atanh(y tanh(alpha)) / alpha`` (the blurred image).
    """

    type_name = "nonlinear_blur"
    linear = False
    _ARGS = ("sigma", "kernel_size", "alpha")

    def __init__(self, sigma: float = 3.0, kernel_size: int = 31, alpha: float = 2.0):
        super().__init__()
        self.alpha = _number(alpha, "alpha", self.type_name)
        self.blur = GaussianBlur(sigma, kernel_size, padding="circular")

    def response(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.alpha * u) / math.tanh(self.alpha)

    def forward(self, x):
        return self.response(self.blur(x))

    def measurement_image(self, y):
        v = (_check_image(y, "measurement") * math.tanh(self.alpha)).clamp(-1 + 1e-6, 1 - 1e-6)
        return torch.atanh(v) / self.alpha

    def lipschitz(self, image_shape=(1, 64, 64)):
        return self.alpha / math.tanh(self.alpha)  # max R' times ||blur|| = 1

    def _params(self):
        return {"sigma": self.blur.sigma, "kernel_size": self.blur.kernel_size,
                "alpha": self.alpha}


# ----------------------------------------------------------------------------- factory
OPERATORS: dict[str, type[ImagingOperator]] = {
    cls.type_name: cls for cls in (Inpainting, SuperResolution, GaussianBlur, HDR,
                                   PhaseRetrieval, NonlinearBlur)}


def build_operator(spec: dict[str, Any] | ImagingOperator) -> ImagingOperator | RandomMaskOperator:
    """An operator from ``{type: NAME, **params}`` (NAME in :data:`OPERATORS`), e.g.
    ``{type: super_resolution, factor: 4, kind: bicubic}``,
    ``{type: inpainting, mask: {kind: stroke, size: 256, seed: 0}}``; or the family of
    inpainting operators with random masks, ``{type: random_inpainting, kind: stroke, size: 64}``
    (a :class:`RandomMaskOperator`); ConfigError otherwise."""
    if isinstance(spec, (ImagingOperator, RandomMaskOperator)):
        return spec
    if isinstance(spec, dict) and spec.get("type") == RandomMaskOperator.type_name:
        return RandomMaskOperator.from_dict(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"operator spec must be a mapping with 'type', got "
                          f"{type(spec).__name__}")
    kind = spec.get("type")
    if kind not in OPERATORS:
        raise ConfigError(f"unknown imaging operator {kind!r}; expected one of "
                          f"{sorted(OPERATORS) + [RandomMaskOperator.type_name]}")
    return _from_dict(OPERATORS[kind], spec)


def likelihood_grad(noise, x: torch.Tensor, y: torch.Tensor, op: ImagingOperator) -> torch.Tensor:
    """``grad_x log p(y | x)``: the noise model's closed form for linear operators
    (``noise.log_likelihood_grad``, via ``op.adjoint``), autograd of ``noise.log_likelihood``
    for non-linear ones."""
    if getattr(op, "linear", True):
        return noise.log_likelihood_grad(x, y, op)
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(noise.log_likelihood(xx, y, op).sum(), xx)
    return g
