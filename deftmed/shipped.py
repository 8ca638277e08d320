"""The model weights that ship inside the package (trained by ``make weights``).

Names resolve to files in ``deftmed/weights/``; anywhere a command takes a checkpoint path, it
also takes one of these names.
"""

from __future__ import annotations

from pathlib import Path

from deftmed.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).parent / "weights"

SHIPPED = {
    "prior-ellipses64": "prior-ellipses64.safetensors",
    "prior-anatomy64": "prior-anatomy64.safetensors",
    "deft-ellipses64-sv20": "deft-ellipses64-sv20.safetensors",
    "deft-fan64-sv24": "deft-fan64-sv24.safetensors",
}


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
