"""The model weights that ship inside the package (trained by ``make weights``).

Names resolve to files in ``deftmed/weights/``; anywhere a command takes a checkpoint path, it
also takes one of these names.
"""

from __future__ import annotations

from pathlib import Path

from deftmed.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).parent / "weights"

SHIPPED = {name: f"{name}.safetensors" for name in (
    "prior-ellipses64", "deft-ellipses64-sv20", "deft-fan64-sv24",
    "prior-anatomy64", "deft-anatomy64-sv20",
    "prior-natural64", "deft-natural64-inpaint", "deft-natural64-sr4", "deft-natural64-hdr",
    "deft-natural64-phase", "deft-natural64-nlblur")}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A shipped weight name or a path, as an existing file path."""
    s = str(name_or_path)
    if s in SHIPPED:
        path = WEIGHTS_DIR / SHIPPED[s]
        if not path.is_file():
            raise CheckpointError(f"shipped weights {s!r} are not installed ({path} missing); "
                                  "train them with `make weights`")
        return path
    path = Path(s)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {s!r} is neither a file nor a shipped name "
                              f"({', '.join(sorted(SHIPPED))})")
    return path


def load_prior(name_or_path: str | Path, device="cpu"):
    """A prior from a shipped name or a file: deftmed checkpoints (``.safetensors``), or the
    guided-diffusion (ADM) ImageNet checkpoint as published (``.pt``/``.pth``, loaded with
    ``weights_only``; see ``data_manifests/imagenet-adm.yaml``)."""
    path = resolve_checkpoint(name_or_path)
    if path.suffix.lower() in (".pt", ".pth"):
        from deftmed.diffusion.adm import adm_prior
        return adm_prior(path, device=device)
    from deftmed.diffusion.prior import DiffusionPrior
    return DiffusionPrior.load(path, device)
