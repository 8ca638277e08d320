"""Dataset manifests: where a dataset comes from, under which licence, which files it holds.

A manifest is a YAML file (schema: ``data_manifests/SCHEMA.md``). :func:`load_manifest`
validates it; :func:`verify_manifest` checks a local copy file by file (present, size,
streaming SHA-256). A file whose checksum is not recorded is reported as ``unverified`` (a
warning, not a failure): deftmed never invents checksums it could not compute from the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from deftmed.data.intensity import IntensityTransform
from deftmed.errors import ConfigError, DataFormatError, DeftmedError

REQUIRED_FIELDS = ("name", "description", "source", "licence", "citation", "files", "splits",
                   "units", "intensity", "preprocessing")
OPTIONAL_FIELDS = ("notes", "schema_version")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20

# statuses
OK, UNVERIFIED, MISSING, EMPTY, SIZE_MISMATCH, CHECKSUM_MISMATCH = (
    "ok", "unverified", "missing", "empty", "size mismatch", "checksum mismatch")
FAILURES = (MISSING, EMPTY, SIZE_MISMATCH, CHECKSUM_MISMATCH)


@dataclass(frozen=True)
class ManifestFile:
    """One file (or folder, when ``path`` ends with ``/``) of a dataset."""

    path: str
    sha256: str | None = None
    size: int | None = None
    note: str = ""

    @property
    def is_folder(self) -> bool:
        return self.path.endswith("/")


@dataclass(frozen=True)
class Manifest:
    name: str
    description: str
    source: dict[str, Any]
    licence: str
    citation: str
    files: tuple[ManifestFile, ...]
    splits: dict[str, Any]
    units: str
    intensity: IntensityTransform
    preprocessing: str
    notes: str = ""
    path: Path | None = None


@dataclass(frozen=True)
class FileStatus:
    path: str
    status: str
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILURES


@dataclass
class VerifyReport:
    manifest: str
    root: Path
    files: list[FileStatus] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing or corrupt (unverified files are only warnings)."""
        return not any(f.failed for f in self.files)

    @property
    def failures(self) -> list[FileStatus]:
        return [f for f in self.files if f.failed]

    @property
    def warnings(self) -> list[FileStatus]:
        return [f for f in self.files if f.status == UNVERIFIED]

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.status] = counts.get(f.status, 0) + 1
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"{self.manifest}: {len(self.files)} files under {self.root}: {parts}"


# ------------------------------------------------------------------------------- loading
def _need_str(d: dict, key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _parse_file(entry: Any, i: int, where: str) -> ManifestFile:
    w = f"{where}: files[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{w} must be a mapping with 'path', got {entry!r}")
    unknown = set(entry) - {"path", "sha256", "size", "note"}
    if unknown:
        raise ConfigError(f"{w} has unknown fields {sorted(unknown)}")
    path = _need_str(entry, "path", w)
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise ConfigError(f"{w}: path {path!r} must be relative to the dataset root, "
                          f"with '/' separators and no '..'")
    sha = entry.get("sha256")
    if sha is not None:
        if not isinstance(sha, str) or not _SHA256.match(sha.lower()):
            raise ConfigError(f"{w}: sha256 must be 64 hex digits or null, got {sha!r}")
        sha = sha.lower()
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ConfigError(f"{w}: size must be a byte count >= 0 or null, got {size!r}")
    note = entry.get("note") or ""
    if path.endswith("/") and (sha is not None or size is not None):
        raise ConfigError(f"{w}: folder entry {path!r} cannot have sha256 or size")
    return ManifestFile(path=path, sha256=sha, size=size, note=str(note))


def parse_manifest(data: Any, where: str = "manifest") -> Manifest:
    """Validate a manifest given as a dict (as loaded from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a manifest must be a YAML mapping")
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required fields {missing}")
    unknown = set(data) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown fields {sorted(unknown)}")
    source = data["source"]
    if not isinstance(source, dict) or not isinstance(source.get("url"), str) \
            or not re.match(r"^https?://", source["url"]):
        raise ConfigError(f"{where}: 'source' must be a mapping with an http(s) 'url'")
    files = data["files"]
    if not isinstance(files, list) or not files:
        raise ConfigError(f"{where}: 'files' must be a non-empty list")
    parsed = tuple(_parse_file(e, i, where) for i, e in enumerate(files))
    seen: set[str] = set()
    for f in parsed:
        if f.path in seen:
            raise ConfigError(f"{where}: file {f.path!r} is listed twice")
        seen.add(f.path)
    splits = data["splits"]
    if not isinstance(splits, dict) or not splits:
        raise ConfigError(f"{where}: 'splits' must be a non-empty mapping")
    try:
        intensity = IntensityTransform.from_dict(data["intensity"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: intensity: {exc}") from None
    return Manifest(
        name=_need_str(data, "name", where),
        description=_need_str(data, "description", where),
        source=dict(source),
        licence=_need_str(data, "licence", where),
        citation=_need_str(data, "citation", where),
        files=parsed,
        splits=dict(splits),
        units=_need_str(data, "units", where),
        intensity=intensity,
        preprocessing=_need_str(data, "preprocessing", where),
        notes=str(data.get("notes") or ""),
    )


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Load and validate a manifest YAML file (ConfigError on a missing/invalid field)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"manifest {path} is not valid YAML: {exc}") from None
    m = parse_manifest(data, str(path))
    return dataclasses.replace(m, path=path)


# ------------------------------------------------------------------------------- verifying
def sha256_file(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """SHA-256 hex digest of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk_size), b""):
                h.update(block)
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc}") from None
    return h.hexdigest()


def _check(entry: ManifestFile, root: Path, checksums: bool) -> FileStatus:
    target = root / entry.path
    if entry.is_folder:
        if not target.is_dir():
            return FileStatus(entry.path, MISSING, "folder not found")
        if not any(target.iterdir()):
            return FileStatus(entry.path, EMPTY, "folder is empty")
        return FileStatus(entry.path, OK, "folder present (contents not checksummed)")
    if not target.is_file():
        return FileStatus(entry.path, MISSING, "file not found")
    size = target.stat().st_size
    if entry.size is not None and size != entry.size:
        return FileStatus(entry.path, SIZE_MISMATCH,
                          f"size {size} bytes, manifest says {entry.size}")
    if entry.sha256 is None:
        return FileStatus(entry.path, UNVERIFIED, "present; no checksum recorded in manifest")
    if not checksums:
        return FileStatus(entry.path, UNVERIFIED, "present; checksum not computed (quick)")
    digest = sha256_file(target)
    if digest != entry.sha256:
        return FileStatus(entry.path, CHECKSUM_MISMATCH,
                          f"sha256 {digest[:16]}..., manifest says {entry.sha256[:16]}...")
    return FileStatus(entry.path, OK, "sha256 matches")


def verify_manifest(manifest: Manifest | str | os.PathLike, root: str | os.PathLike, *,
                    checksums: bool = True,
                    progress: Callable[[FileStatus], None] | None = None) -> VerifyReport:
    """Check every file of ``manifest`` under ``root``.

    Statuses: ``ok``, ``unverified`` (present, no checksum recorded or ``checksums=False``),
    ``missing``, ``empty`` (folder), ``size mismatch``, ``checksum mismatch``.
    ``progress`` is called with each file's status as it is found.
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    root = Path(root)
    if not root.is_dir():
        raise DeftmedError(f"dataset root {root} is not a folder")
    report = VerifyReport(manifest=manifest.name, root=root)
    for entry in manifest.files:
        status = _check(entry, root, checksums)
        report.files.append(status)
        if progress is not None:
            progress(status)
    return report


__all__ = ["Manifest", "ManifestFile", "FileStatus", "VerifyReport", "load_manifest",
           "parse_manifest", "verify_manifest", "sha256_file", "REQUIRED_FIELDS"]
