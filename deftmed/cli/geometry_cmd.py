"""``deftmed geometry show|validate FILE``: inspect scanner geometry files."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("geometry", help="inspect and check scanner geometry files (YAML)",
                       description="Inspect and check scanner geometry files (YAML).")
    gsub = p.add_subparsers(dest="geometry_command", metavar="ACTION")
    gsub.required = True

    show = gsub.add_parser("show", help="print a summary and draw the scanner to a PNG")
    show.add_argument("file", help="geometry YAML file")
    show.add_argument("--out", help="PNG to write (default: FILE's stem + .png in the current "
                                    "folder)")
    show.add_argument("--no-draw", action="store_true", help="only print the summary")
    show.set_defaults(func=_show)

    val = gsub.add_parser("validate", help="check a geometry file; exit 2 if invalid")
    val.add_argument("file", help="geometry YAML file")
    val.set_defaults(func=_validate)


def _load(path: str):
    from deftmed.physics.geometry import ScanGeometry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        geom = ScanGeometry.from_yaml(path)
    return geom, [str(w.message) for w in caught]


def _show(args: argparse.Namespace) -> int:
    from deftmed.fileio import check_writable
    from deftmed.physics.drawing import describe_geometry, draw_geometry

    out = None
    if not args.no_draw:
        out = Path(args.out) if args.out else Path.cwd() / (Path(args.file).stem + ".png")
        check_writable(out)
    geom, notes = _load(args.file)
    print(describe_geometry(geom))
    for n in notes:
        print(f"warning: {n}")
    if out is not None:
        draw_geometry(geom, out)
        print(f"drawing      {out}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    geom, notes = _load(args.file)
    for n in notes:
        print(f"warning: {n}")
    print(f"{args.file}: valid {geom.kind}-beam geometry, {geom.shape[0]}x{geom.shape[1]} image, "
          f"sinogram {geom.sinogram_shape[0]}x{geom.sinogram_shape[1]}, "
          f"fingerprint {geom.fingerprint()}")
    return 0
