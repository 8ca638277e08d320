"""A fine-tuned DEFT model: the h-network plus what it is bound to.

An h-transform is only valid for the prior, scanner geometry and noise model it was
fine-tuned for. Its checkpoint records all three (fingerprints and full descriptions) and the
guidance settings; ``check_compatible`` refuses any other combination with a message that says
what differs and how to fine-tune for the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from deftmed.checkpoint import load_checkpoint, load_state_into, save_checkpoint
from deftmed.deft.guidance import Guidance
from deftmed.deft.hnet import HNetConfig, HTransform
from deftmed.errors import CheckpointError, GeometryError
from deftmed.physics.geometry import ScanGeometry
from deftmed.physics.noise import NoiseModel, load_noise

H_KIND = "deft-h-transform"


@dataclass
class DeftBinding:
    """What an h-transform was fine-tuned for."""

    prior_fingerprint: str
    prior_parameters: int
    geometry: dict
    noise: dict
    guidance: dict = field(default_factory=dict)
    #: image-operator tasks: the operator (or operator family) description; geometry is {}
    operator: dict | None = None

    @property
    def geometry_fingerprint(self) -> str:
        """Fingerprint of the scanner geometry (CT) or of the image operator."""
        if self.operator is not None:
            return self.task_operator().fingerprint()
        return ScanGeometry.from_dict(self.geometry).fingerprint()

    def task_operator(self):
        """The image operator (or random-mask family) this h-transform was fine-tuned for."""
        from deftmed.physics.imaging import build_operator
        return build_operator(self.operator)

    def scan_geometry(self) -> ScanGeometry:
        return ScanGeometry.from_dict(self.geometry)

    def noise_model(self) -> NoiseModel:
        return load_noise(self.noise)


def _retrain_hint(prior_name: str = "PRIOR") -> str:
    return (f"fine-tune an h-transform for it with `deftmed finetune --prior {prior_name} "
            "--geometry G.yaml --noise N.yaml --data D --steps S --out H.safetensors`")


class DeftModel(torch.nn.Module):
    """h-network + binding. ``guidance(op)`` builds the guidance for a matching operator."""

    def __init__(self, hnet: HTransform, binding: DeftBinding, metadata: dict | None = None):
        super().__init__()
        self.hnet = hnet
        self.binding = binding
        self.metadata = metadata or {}

    def check_compatible(self, prior=None, geometry: ScanGeometry | None = None,
                         noise: NoiseModel | None = None, operator=None) -> None:
        """Refuse a prior, geometry, image operator or noise model other than the trained one."""
        b = self.binding
        if operator is not None:
            self._check_operator(operator)
        if geometry is not None and b.operator is not None:
            raise GeometryError(f"this h-transform was fine-tuned for the image operator "
                                f"{b.operator.get('type')}, not for a CT scanner geometry")
        if geometry is not None and geometry.fingerprint() != b.geometry_fingerprint:
            mine = b.scan_geometry()
            raise GeometryError(
                "this h-transform was fine-tuned for another scanner geometry: trained for "
                f"{_geom_text(mine)}, given {_geom_text(geometry)}"
                f"{_first_difference(mine.to_dict(), geometry.to_dict())}; an h-transform is "
                "specific to one geometry: " + _retrain_hint())
        if prior is not None and prior.fingerprint != b.prior_fingerprint:
            raise CheckpointError(
                f"this h-transform was fine-tuned on prior {b.prior_fingerprint[:12]} "
                f"({b.prior_parameters} parameters), given prior {prior.fingerprint[:12]} "
                f"({prior.parameter_count()} parameters); " + _retrain_hint())
        if noise is not None and noise.to_dict() != b.noise:
            raise CheckpointError(
                f"this h-transform was fine-tuned for noise {b.noise}, given {noise.to_dict()}; "
                "omit --noise to use the trained one, or " + _retrain_hint())

    def _check_operator(self, op) -> None:
        b = self.binding
        if b.operator is None:
            raise GeometryError("this h-transform was fine-tuned for CT (a scanner geometry), "
                                f"not for the image operator {type(op).__name__}")
        family = b.task_operator()
        ok = family.accepts(op) if hasattr(family, "accepts") else \
            op.fingerprint() == family.fingerprint()
        if not ok:
            raise GeometryError(
                f"this h-transform was fine-tuned for the operator {b.operator}, given "
                f"{op.to_dict() if hasattr(op, 'to_dict') else type(op).__name__}; an "
                "h-transform is specific to its operator: fine-tune one with `deftmed finetune "
                "--protocol P` for a protocol with that operator")

    def guidance(self, op) -> Guidance:
        g = self.binding.guidance
        return Guidance(op, self.binding.noise_model(), g.get("backprojection", "fbp"),
                        g.get("filter_type", "Hann"), float(g.get("frequency_scaling", 1.0)),
                        float(g.get("scale", 1.0)))

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> dict:
        b = self.binding
        meta = {"hnet": self.hnet.cfg.to_dict(), "prior_fingerprint": b.prior_fingerprint,
                "prior_parameters": b.prior_parameters, "geometry": b.geometry,
                "geometry_fingerprint": b.geometry_fingerprint, "noise": b.noise,
                "guidance": b.guidance, "operator": b.operator,
                "h_parameters": self.hnet.parameter_count(),
                "parameter_ratio": self.hnet.parameter_count() / max(b.prior_parameters, 1)}
        meta.update(extra or {})
        self.metadata = save_checkpoint(path, self.hnet.state_dict(), H_KIND, meta)
        return self.metadata

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> "DeftModel":
        tensors, meta = load_checkpoint(path, H_KIND)
        for key in ("hnet", "prior_fingerprint", "prior_parameters", "geometry", "noise"):
            if key not in meta:
                raise CheckpointError(f"{path}: h-transform metadata lacks {key!r}")
        hnet = HTransform(HNetConfig.from_dict(meta["hnet"]))
        load_state_into(hnet, tensors, f"h-transform {path}")
        binding = DeftBinding(meta["prior_fingerprint"], int(meta["prior_parameters"]),
                              meta["geometry"], meta["noise"], meta.get("guidance", {}),
                              meta.get("operator"))
        if meta.get("geometry_fingerprint") not in (None, binding.geometry_fingerprint):
            raise CheckpointError(f"{path}: geometry fingerprint does not match its description")
        model = cls(hnet, binding, meta)
        model.eval().requires_grad_(False)
        return model.to(device)


def _geom_text(g: ScanGeometry) -> str:
    name = f"'{g.name}' " if g.name else ""
    return (f"{name}({g.kind} beam, {g.n_views} views, {g.n_detector} detector pixels, "
            f"{g.shape[0]}x{g.shape[1]} image, fingerprint {g.fingerprint()[:12]})")


def _first_difference(a: dict, b: dict) -> str:
    skip = {"name", "description"}
    for k in sorted(set(a) | set(b)):
        if k not in skip and a.get(k) != b.get(k):
            va, vb = a.get(k), b.get(k)
            short = lambda v: (str(v)[:40] + "...") if len(str(v)) > 40 else str(v)
            return f" (first difference: {k} = {short(va)} vs {short(vb)})"
    return ""
