"""Building methods from checkpoints: the glue the CLI and the demo share."""

from __future__ import annotations

from deftmed.errors import CheckpointError


def find_prior_for(fingerprint: str):
    """The shipped prior whose weights have ``fingerprint``, or None."""
    from deftmed.checkpoint import read_metadata
    from deftmed.shipped import SHIPPED, WEIGHTS_DIR

    for name, file in SHIPPED.items():
        path = WEIGHTS_DIR / file
        if name.startswith("prior-") and path.is_file():
            if read_metadata(path).get("weights_sha256") == fingerprint:
                return path
    return None


def load_deft(h: str, prior: str | None, device, steps: int = 100, eta: float = 0.0,
              samples: int = 1):
    """``(DEFTReconstructor, noise model, intensity dict)`` from an h-transform checkpoint.

    Without ``prior`` the shipped prior the h-transform was fine-tuned on is used.
    """
    from deftmed.deft.model import DeftModel
    from deftmed.methods.deft import DEFTReconstructor
    from deftmed.shipped import load_prior, resolve_checkpoint

    model = DeftModel.load(resolve_checkpoint(h), device)
    if prior is None:
        path = find_prior_for(model.binding.prior_fingerprint)
        if path is None:
            raise CheckpointError("the prior this h-transform was fine-tuned on is not shipped; "
                                  "give it with --prior")
    else:
        path = resolve_checkpoint(prior)
    p = load_prior(path, device)
    method = DEFTReconstructor(p, model, steps, eta, samples)
    return method, model.binding.noise_model(), p.spec.intensity
