"""Pictures and plain-text descriptions of a scan geometry.

The drawing uses ODL's own geometry object (the one the ray transform runs on), so what is shown
is what is computed: source positions, the detector at a few views, the ray fan of the first
view, the field-of-view disc and the image box, all in mm.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deftmed.fileio import atomic_path, check_writable
from deftmed.physics.geometry import ScanGeometry
from deftmed.physics.raytransform import odl_geometry

__all__ = ["draw_geometry", "describe_geometry"]


def _views_to_show(n: int, k: int = 4) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


def draw_geometry(geometry: ScanGeometry, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a PNG drawing of the scanner to ``path`` (atomically) and return the path."""
    path = check_writable(Path(path))
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    g = odl_geometry(geometry)
    angles = geometry.angles_rad()
    h, w = geometry.shape
    ps = float(geometry.pixel_spacing)
    det_half = geometry.detector_width() / 2.0
    u = np.array([-det_half, det_half])

    fig = Figure(figsize=(6.4, 7.4))
    ax = fig.add_subplot(1, 1, 1)
    ax.add_patch(Rectangle((-h * ps / 2, -w * ps / 2), h * ps, w * ps, fill=False, lw=1.2,
                           color="k", label=f"image {h}x{w} @ {ps:g} mm"))
    ax.add_patch(Circle((0, 0), geometry.fov_radius(), fill=False, ls="--", color="tab:green",
                        label=f"FOV r = {geometry.fov_radius():.0f} mm"))
    ax.add_patch(Circle((0, 0), geometry.detector_covered_radius(), fill=False, ls=":",
                        color="tab:orange",
                        label=f"detector coverage r = {geometry.detector_covered_radius():.0f} mm"))

    shown = _views_to_show(angles.size)
    ray_u = np.linspace(-det_half, det_half, 9)
    reach = 1.3 * max(det_half, geometry.image_half_diagonal())

    def det_shift(a: float) -> np.ndarray:
        # ODL's parallel detector passes through the origin; draw it behind the object.
        if geometry.kind == "fan":
            return np.zeros(2)
        d = np.asarray(g.det_to_src(a, 0.0), dtype=float)
        return -reach * d / np.linalg.norm(d)

    for i, idx in enumerate(shown):
        a = float(angles[idx])
        ends = np.array([g.det_point_position(a, float(s)) for s in u]) + det_shift(a)
        ax.plot(ends[:, 0], ends[:, 1], color="tab:blue", lw=3 if i == 0 else 1.5,
                alpha=1.0 if i == 0 else 0.5,
                label="detector (first view bold)" if i == 0 else None)
    a0 = float(angles[0])
    det_pts = np.array([g.det_point_position(a0, float(s)) for s in ray_u]) + det_shift(a0)
    if geometry.kind == "fan":
        src_all = np.array([g.src_position(float(a)) for a in angles])
        ax.scatter(src_all[:, 0], src_all[:, 1], s=12, color="tab:red",
                   label=f"sources ({angles.size} views)")
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(geometry.src_radius * np.cos(t), geometry.src_radius * np.sin(t), color="tab:red",
                lw=0.5, alpha=0.4)
        src0 = np.asarray(g.src_position(a0))
        starts = np.repeat(src0[None], ray_u.size, axis=0)
    else:
        direction = np.asarray(g.det_to_src(a0, 0.0), dtype=float)
        starts = det_pts + 2 * reach * direction[None] / np.linalg.norm(direction)
        # Ray directions of all views, as ticks on a circle.
        dirs = np.array([g.det_to_src(float(a), 0.0) for a in angles])
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        ax.scatter(reach * dirs[:, 0], reach * dirs[:, 1], s=12, color="tab:red",
                   label=f"source side of each view ({angles.size})")
    for s0, d0 in zip(starts, det_pts):
        ax.plot([s0[0], d0[0]], [s0[1], d0[1]], color="tab:red", lw=0.6, alpha=0.7)

    title = geometry.name or "scan geometry"
    ax.set_title(f"{title}: {geometry.kind} beam, {geometry.n_views} views, "
                 f"{geometry.n_detector} detector pixels", fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.autoscale_view()
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8,
              frameon=False)
    ax.grid(alpha=0.2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    return path


def describe_geometry(geometry: ScanGeometry) -> str:
    """Human-readable description built from ``geometry.summary()``."""
    s = geometry.summary()
    h, w = s["image_shape"]
    lines = [
        f"geometry     {s['name'] or '(unnamed)'}: {s['kind']} beam"
        + (" (flat detector)" if s["kind"] == "fan" else ""),
    ]
    if geometry.description:
        lines.append(f"             {geometry.description}")
    lines += [
        f"image        {h} x {w} pixels of {s['pixel_spacing_mm']:.7g} mm = "
        f"{s['image_extent_mm'][0]:g} x {s['image_extent_mm'][1]:g} mm; "
        f"field of view disc radius {s['fov_radius_mm']:g} mm",
        f"views        {s['n_views']} "
        + ("equally spaced" if s["uniform_angles"] else "irregularly spaced")
        + f", {s['first_angle_deg']:g} .. {s['last_angle_deg']:g} deg "
        f"(covers {s['angular_coverage_deg']:.4g} deg, largest step {s['max_angle_step_deg']:g} deg)",
    ]
    need = "180" if s["kind"] == "parallel" else f"180 + fan angle = {180 + s['fan_angle_deg']:.0f}"
    lines.append(
        f"coverage     {'complete' if s['complete_coverage'] else 'INCOMPLETE (limited angle)'}"
        f" (needs {need} deg)")
    lines.append(
        f"sampling     {s['angular_sampling'] * 100:.0f} % of the ~{s['views_nyquist']:.0f} views "
        f"the angular Nyquist rule (pi/2 x {max(h, w)} pixels per 180 deg) asks for"
        + (" -> sparse-view" if s["angular_sampling"] < 0.5 else ""))
    lines.append(
        f"detector     {s['n_detector']} pixels of {s['detector_spacing_mm']:g} mm = "
        f"{s['detector_width_mm']:g} mm; sees a disc of radius "
        f"{s['detector_covered_radius_mm']:.1f} mm ("
        + ("covers the FOV" if s["covers_fov"] else "TRUNCATES the FOV")
        + (", image corners included)" if s["covers_image_corners"] else
           ", not the image corners)"))
    if s["kind"] == "fan":
        lines.append(
            f"fan          source {s['src_radius_mm']:g} mm, detector {s['det_radius_mm']:g} mm "
            f"from the centre; magnification {s['magnification']:.3f}, fan angle "
            f"{s['fan_angle_deg']:.1f} deg, detector pixel at centre "
            f"{s['detector_spacing_at_centre_mm']:.3f} mm")
    lines.append(f"sinogram     {s['sinogram_shape'][0]} x {s['sinogram_shape'][1]} "
                 "(views x detector pixels)")
    lines.append(f"fingerprint  {s['fingerprint']}")
    return "\n".join(lines)
