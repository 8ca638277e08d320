"""Argument parsing helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path


def load_noise_arg(text: str):
    """A noise model from a YAML file path or an inline YAML mapping."""
    import yaml

    from deftmed.errors import ConfigError
    from deftmed.physics.noise import load_noise

    if Path(text).is_file():
        return load_noise(Path(text))
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError:
        spec = None
    if not isinstance(spec, dict):
        raise ConfigError(f"--noise {text!r} is neither a file nor a mapping like "
                          "'{type: gaussian, relative: 0.025}'")
    return load_noise(spec)
