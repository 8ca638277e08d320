"""Every reconstruction method by name, with its defaults and tuning grid.

``build_method(name, settings, prior=None, deft_model=None)`` is the one way the CLI, the
benchmark runner and the tuner make a method: unknown names, unknown settings keys, missing
models and invalid values all raise :class:`~deftmed.errors.ConfigError`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

from deftmed.errors import ConfigError, InvalidValueError
from deftmed.methods.base import Reconstructor


@dataclass(frozen=True)
class MethodInfo:
    """How to build one method: its class (imported lazily), which models it needs, and the
    grid its key hyper-parameters are tuned on."""

    module: str
    cls: str
    needs_prior: bool
    needs_deft: bool
    grid: dict[str, list]
    description: str

    def load(self) -> type:
        import importlib

        return getattr(importlib.import_module(self.module), self.cls)


METHODS: dict[str, MethodInfo] = {
    "fbp": MethodInfo("deftmed.methods.fbp", "FBPReconstructor", False, False,
                      {"filter_type": ["Ram-Lak", "Shepp-Logan", "Cosine", "Hann"],
                       "frequency_scaling": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]},
                      "filtered back-projection"),
    "direct": MethodInfo("deftmed.methods.fbp", "DirectReconstructor", False, False, {},
                         "direct inversion (FBP for CT; upsampling / masked fill / HIO-ER / "
                         "inverse response for image operators)"),
    "tv": MethodInfo("deftmed.methods.tv", "TVReconstructor", False, False,
                     {"lam": [0.3, 1.0, 3.0, 10.0, 30.0, 100.0]},
                     "total-variation regularised least squares (Chambolle-Pock)"),
    "dps": MethodInfo("deftmed.methods.dps", "DPSReconstructor", True, False,
                      {"zeta": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]},
                      "diffusion posterior sampling (Chung et al. 2023)"),
    "reddiff": MethodInfo("deftmed.methods.reddiff", "REDDiffReconstructor", True, False,
                          {"lam": [0.0, 0.003, 0.01, 0.03, 0.1, 0.25, 1.0],
                           "lr": [0.01, 0.03, 0.1, 0.3]},
                          "RED-diff variational sampling (Mardani et al. 2024)"),
    "ddrm": MethodInfo("deftmed.methods.ddrm", "DDRMReconstructor", True, False,
                       {"eta": [0.5, 0.7, 0.85, 1.0], "eta_b": [0.5, 1.0]},
                       "denoising diffusion restoration models (Kawar et al. 2022; SVD operators)"),
    "dds": MethodInfo("deftmed.methods.dds", "DDSReconstructor", True, False,
                      {"gamma": [0.0, 0.001, 0.01, 0.1], "cg_iters": [2, 5, 10]},
                      "decomposed diffusion sampling (Chung et al. 2024)"),
    "deft": MethodInfo("deftmed.methods.deft", "DEFTReconstructor", True, True,
                       {"eta": [0.0, 0.5, 0.85, 1.0]},
                       "DEFT: fine-tuned h-transform, DDIM sampling (Denker et al. 2024)"),
    "deft-mean": MethodInfo("deftmed.methods.deft", "DEFTMeanReconstructor", True, True,
                            {"eta": [0.5, 0.85, 1.0]},
                            "DEFT posterior mean of several stochastic samples"),
}


def _info(name: str) -> MethodInfo:
    if not isinstance(name, str) or name.lower() not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name.lower()]


def _parameters(info: MethodInfo) -> dict[str, inspect.Parameter]:
    """The constructor's settings (everything but ``self`` and the models)."""
    sig = inspect.signature(info.load().__init__)
    return {k: p for k, p in sig.parameters.items() if k not in ("self", "prior", "model")}


def default_settings(name: str) -> dict[str, Any]:
    """The constructor defaults of method ``name``."""
    return {k: (list(p.default) if isinstance(p.default, tuple) else p.default)
            for k, p in _parameters(_info(name)).items()}


def search_space(name: str) -> dict[str, list]:
    """A tuning grid for the method's key hyper-parameters (cartesian product)."""
    return {k: list(v) for k, v in _info(name).grid.items()}


def _check_fbp(settings: dict) -> None:
    """FBPReconstructor checks its filter only when it runs; check it at build time."""
    from deftmed.physics.raytransform import check_fbp_filter

    check_fbp_filter(settings.get("filter_type", "Hann"), settings.get("frequency_scaling", 1.0),
                     ConfigError, "fbp: ")


def build_method(name: str, settings: dict | None = None, prior=None,
                 deft_model=None) -> Reconstructor:
    """Construct method ``name`` with ``settings`` (missing keys take their defaults).

    Diffusion methods need ``prior``; DEFT also ``deft_model`` (a ``DeftModel``). Raises
    ConfigError on an unknown method, unknown settings keys, a missing model or an invalid
    value.
    """
    info = _info(name)
    if settings is not None and not isinstance(settings, dict):
        raise ConfigError(f"{name}: settings must be a mapping, got {type(settings).__name__}")
    settings = dict(settings or {})
    allowed = _parameters(info)
    unknown = sorted(set(map(str, settings)) - set(allowed))
    if unknown:
        raise ConfigError(f"{name}: unknown setting(s) {unknown}; allowed: {sorted(allowed)}")
    args: list[Any] = []
    if info.needs_prior:
        if prior is None:
            raise ConfigError(f"method {name!r} needs a diffusion prior")
        args.append(prior)
    if info.needs_deft:
        if deft_model is None:
            raise ConfigError(f"method {name!r} needs a fine-tuned DEFT model (h-transform)")
        args.append(deft_model)
    if name.lower() == "fbp":
        _check_fbp(settings)
    builder: Callable[..., Reconstructor] = info.load()
    try:
        return builder(*args, **settings)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(f"{name}:") else f"{name}: {msg}") from None
    except (TypeError, ValueError, InvalidValueError) as exc:
        raise ConfigError(f"{name}: invalid settings {settings}: {exc}") from None
