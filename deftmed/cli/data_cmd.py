"""``deftmed data ...``: dataset manifests (verify a local copy of a dataset)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="dataset manifests and checks")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    verify = sub.add_parser(
        "verify", help="check a downloaded dataset against its manifest",
        description="Check every file listed in MANIFEST under --root: present, size, SHA-256. "
                    "Exit status 1 if anything is missing or corrupt; files without a "
                    "recorded checksum are reported as warnings.")
    verify.add_argument("manifest", help="manifest YAML (e.g. data_manifests/lodopab-ct.yaml)")
    verify.add_argument("--root", required=True, help="folder holding the dataset's files")
    verify.add_argument("--quick", action="store_true",
                        help="check presence and size only, skip SHA-256")
    verify.set_defaults(func=_verify)


def _verify(args: argparse.Namespace) -> int:
    from deftmed.data.manifest import load_manifest, verify_manifest

    manifest = load_manifest(args.manifest)
    width = max(len(f.path) for f in manifest.files)

    def show(status) -> None:
        flag = "FAIL" if status.failed else ("warn" if status.status != "ok" else "ok")
        print(f"{flag:4}  {status.path:<{width}}  {status.status}: {status.message}",
              flush=True)

    report = verify_manifest(manifest, args.root, checksums=not args.quick, progress=show)
    print(report.summary())
    if not report.ok:
        print(f"{len(report.failures)} file(s) missing or corrupt", file=sys.stderr)
        return 1
    return 0
