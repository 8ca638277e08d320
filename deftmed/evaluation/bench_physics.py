"""Benchmark section ``physics``: ray transform speed (forward, adjoint, FBP) and accuracy.

Geometries follow the shipped conventions (``geometries/parallel64-20.yaml``): a 256 mm field of
view at any image size (pixel spacing ``256 / n`` mm), ``2 * ceil(sqrt(2) * n / 2) + 1``
detector pixels of the pixel spacing (they cover the image diagonal). The fan-beam geometry is
that of ``geometries/fan64-24.yaml`` generalised: source and detector 500 mm from the centre,
detector pixels of twice the pixel spacing, the fewest (odd) pixels that see the whole image box.

Times are per image: the median over repeats of one batched call, divided by the batch size,
after one warm-up call. The quality numbers beside them: the adjoint dot-test error
``|<A x, y> - <x, A^T y>| / |<A x, y>|`` for random non-negative ``x``, ``y`` (float64 sums), and
the PSNR of the noise-free FBP (Hann) of ellipse test phantoms on the same grid (no noise, same
grid: an upper bound showing what the view count alone costs).

The size lists are module-level so tests (and impatient users) can shrink them.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings

import numpy as np
import torch

#: Parallel-beam image sizes, view counts and batch sizes measured.
PARALLEL_SIZES: tuple[int, ...] = (64, 128, 256)
PARALLEL_VIEWS: tuple[int, ...] = (20, 60)
BATCHES: tuple[int, ...] = (1, 16)
#: Fan-beam (image size, views) pairs measured.
FAN: tuple[tuple[int, int], ...] = ((64, 24),)
FOV_MM = 256.0
#: Repeats per timing (full, quick) and a time cap per timing (seconds, after the minimum).
REPEATS = (7, 3)
MIN_REPEATS = 3
TIME_CAP_S = 5.0
#: Phantoms for the FBP PSNR column.
N_PHANTOMS = 4


def parallel_geometry(n: int, views: int):
    from deftmed.physics.geometry import ScanGeometry

    ps = FOV_MM / n
    return ScanGeometry(kind="parallel", image_size=n, pixel_spacing=ps,
                        n_angles=views, angle_range=(0.0, 180.0),
                        n_detector=2 * math.ceil(math.sqrt(2) * n / 2) + 1,
                        detector_spacing=ps, name=f"parallel{n}-{views}")


def fan_geometry(n: int, views: int, src: float = 500.0, det: float = 500.0):
    from deftmed.physics.geometry import ScanGeometry

    ps = FOV_MM / n
    spacing = ps * (src + det) / src  # pixel spacing at the rotation centre
    half_diag = math.sqrt(2) * n * ps / 2
    # flat detector: a centred disc of radius r needs half-width (src+det) * tan(asin(r / src))
    half_width = (src + det) * math.tan(math.asin(half_diag / src))
    n_det = 2 * math.ceil(half_width / spacing - 0.5) + 1
    return ScanGeometry(kind="fan", image_size=n, pixel_spacing=ps, n_angles=views,
                        angle_range=(0.0, 360.0), n_detector=n_det, detector_spacing=spacing,
                        src_radius=src, det_radius=det, name=f"fan{n}-{views}")


def _time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up (time-capped)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    for k in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if k + 1 >= MIN_REPEATS and time.perf_counter() - start > TIME_CAP_S:
            break
    return statistics.median(times)


def dot_test(op, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    h, w = op.image_shape
    na, nd = op.sinogram_shape
    x = torch.rand((1, 1, h, w), generator=g)
    y = torch.rand((1, 1, na, nd), generator=g)
    with torch.no_grad():
        lhs = float((op(x).double() * y.double()).sum())
        rhs = float((x.double() * op.adjoint(y).double()).sum())
    return abs(lhs - rhs) / abs(lhs)


def _fbp_psnr(op, n: int) -> float:
    from deftmed.data.datasets import open_images
    from deftmed.evaluation.metrics import psnr

    gt = open_images("ellipses", "test", n).tensor(list(range(N_PHANTOMS)))
    with torch.no_grad():
        rec = op.fbp(op(gt))
    return float(np.mean(psnr(rec, gt)))


def measure(geometry, batches=None, repeats: int = 3) -> list[dict]:
    """Rows (one per batch size) of timings and accuracy for one geometry."""
    from deftmed.physics.raytransform import RayTransform

    batches = tuple(batches or BATCHES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = RayTransform(geometry)
    err = dot_test(op)
    fbp_psnr = _fbp_psnr(op, geometry.shape[0])
    h, w = op.image_shape
    na, nd = op.sinogram_shape
    rows = []
    g = torch.Generator().manual_seed(1)
    for b in batches:
        x = torch.rand((b, 1, h, w), generator=g)
        y = torch.rand((b, 1, na, nd), generator=g)
        with torch.no_grad():
            fwd = _time(lambda: op(x), repeats) / b
            adj = _time(lambda: op.adjoint(y), repeats) / b
            fbp = _time(lambda: op.fbp(y), repeats) / b
        rows.append({"geometry": geometry.name, "kind": geometry.kind, "n": h, "views": na,
                     "detector": nd, "batch": b, "forward_ms": 1e3 * fwd,
                     "adjoint_ms": 1e3 * adj, "fbp_ms": 1e3 * fbp, "dot_test": err,
                     "fbp_psnr": fbp_psnr, "backend": op.backend})
    return rows


def configs() -> list:
    geoms = [parallel_geometry(n, v) for n in PARALLEL_SIZES for v in PARALLEL_VIEWS]
    geoms += [fan_geometry(n, v) for n, v in FAN]
    return geoms


def section(quick: bool = False) -> str:
    repeats = REPEATS[1] if quick else REPEATS[0]
    rows: list[dict] = []
    geoms = configs()
    for geom in geoms:
        rows += measure(geom, repeats=repeats)
    backends = sorted({r["backend"] for r in rows})
    lines = [
        f"Ray transform `deftmed.physics.raytransform.RayTransform` (ODL + ASTRA, backend "
        f"{', '.join(f'`{b}`' for b in backends)}), torch threads {torch.get_num_threads()}. "
        f"Field of view {FOV_MM:g} mm at every size; parallel beam over [0, 180) degrees with "
        "`2*ceil(sqrt(2)*n/2)+1` detector pixels of the pixel spacing; fan beam (flat detector) "
        "over [0, 360) degrees, source and detector 500 mm from the centre.",
        "",
        f"Time per image = median of {repeats} batched calls (after one warm-up; fewer if a "
        f"timing exceeds {TIME_CAP_S:g} s) / batch size. FBP: Hann filter, padding on. "
        "Dot-test error: `|<Ax,y> - <x,A^T y>| / |<Ax,y>|` for random non-negative x, y. "
        f"FBP PSNR: noise-free FBP of {N_PHANTOMS} ellipse test phantoms on the same grid "
        "(data range 1; measures the view count only, no noise, inverse crime).",
        "",
        "| geometry | image | views x detector | batch | forward ms/img | adjoint ms/img "
        "| FBP ms/img | dot-test error | FBP PSNR dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['geometry']} ({r['kind']}) | {r['n']}x{r['n']} | {r['views']} x "
            f"{r['detector']} | {r['batch']} | {r['forward_ms']:.2f} | {r['adjoint_ms']:.2f} | "
            f"{r['fbp_ms']:.2f} | {r['dot_test']:.1e} | {r['fbp_psnr']:.2f} |")
    worst = max(r["dot_test"] for r in rows)
    lines += ["", f"Largest dot-test error: {worst:.1e} "
              f"({'float32 rounding level: the adjoint is exact' if worst < 1e-4 else 'LARGER than float32 rounding: check the adjoint scaling'})."]
    by_batch: dict[tuple[str, int], dict] = {(r["geometry"], r["batch"]): r for r in rows}
    if len(BATCHES) > 1:
        b0, b1 = min(BATCHES), max(BATCHES)
        gains = [by_batch[(g.name, b0)]["forward_ms"] / by_batch[(g.name, b1)]["forward_ms"]
                 for g in configs() if (g.name, b0) in by_batch and (g.name, b1) in by_batch]
        if gains:
            lines.append(f"Batching (batch {b1} vs {b0}) changes the forward time per image by a "
                         f"factor {min(gains):.2f} to {max(gains):.2f} (the transform loops "
                         "over batch items in ASTRA; >1 means batching helps).")
    return "\n".join(lines) + "\n"
