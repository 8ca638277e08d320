"""Checkpoints: safetensors weights plus a JSON metadata block. No pickle, ever.

A checkpoint file is a standard ``.safetensors`` file whose header metadata holds one key,
``deftmed``, with a JSON document: ``kind`` (what the file is), ``format_version``, a
``weights_sha256`` over the stored tensors (detects corruption and identifies the weights), and
whatever the writer adds (architecture, schedule, intensity transform, command line, git commit).
Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from deftmed import __version__
from deftmed.errors import CheckpointError
from deftmed.fileio import atomic_path

FORMAT_VERSION = 1


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A stable hash of named tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def git_commit() -> str | None:
    """The git commit of the deftmed source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Package version and git commit, recorded in every checkpoint and results file."""
    return {"deftmed_version": __version__, "git_commit": git_commit()}


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], kind: str,
                    metadata: dict[str, Any]) -> dict:
    """Write ``tensors`` and ``metadata`` atomically; returns the full metadata written."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = dict(metadata)
    meta.update(kind=kind, format_version=FORMAT_VERSION, weights_sha256=tensors_sha256(tensors))
    meta.setdefault("provenance", provenance())
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"deftmed": json.dumps(meta, sort_keys=True)})
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """Only the metadata block (cheap: reads the header)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("deftmed")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({exc})") from None
    if raw is None:
        raise CheckpointError(f"{path} has no deftmed metadata block; it was not written by "
                              "deftmed (use `deftmed import-prior` for foreign MONAI weights)")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata block is not valid JSON ({exc})") from None


def load_checkpoint(path: str | os.PathLike, kind: str,
                    device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Load and verify a checkpoint of the given ``kind``; returns ``(tensors, metadata)``."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} is a {meta.get('kind')!r} checkpoint, expected {kind!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format_version')}, "
                              f"this deftmed reads format {FORMAT_VERSION}")
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({exc})") from None
    if tensors_sha256(tensors) != meta.get("weights_sha256"):
        raise CheckpointError(f"{path}: weights do not match their recorded checksum (corrupt file)")
    return {k: v.to(device) for k, v in tensors.items()}, meta


def load_state_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with a clear message when the architecture does not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} with other shapes (e.g. {k}: file "
                         f"{tuple(tensors[k].shape)} vs model {tuple(own[k].shape)})")
        raise CheckpointError(f"{what}: weights do not fit the architecture: " + "; ".join(parts))
    module.load_state_dict(tensors)


def flatten_state(obj: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested structure (e.g. an optimiser state dict) into tensors and a JSON skeleton.

    Tensors are replaced by ``{"__tensor__": key}`` markers; ``unflatten_state`` reverses this.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(o, key):
        if isinstance(o, torch.Tensor):
            tensors[key] = o
            return {"__tensor__": key}
        if isinstance(o, dict):
            return {"__dict__": [[walk(k, f"{key}.k{i}"), walk(v, f"{key}.{i}")]
                                 for i, (k, v) in enumerate(o.items())]}
        if isinstance(o, (list, tuple)):
            return {"__list__": [walk(v, f"{key}.{i}") for i, v in enumerate(o)],
                    "tuple": isinstance(o, tuple)}
        return o

    return tensors, walk(obj, prefix)


def unflatten_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(o):
        if isinstance(o, dict):
            if "__tensor__" in o:
                return tensors[o["__tensor__"]]
            if "__dict__" in o:
                return {walk(k): walk(v) for k, v in o["__dict__"]}
            if "__list__" in o:
                items = [walk(v) for v in o["__list__"]]
                return tuple(items) if o.get("tuple") else items
        return o

    return walk(skeleton)
