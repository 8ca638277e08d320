"""Argument parsing helpers shared by the command modules."""

from __future__ import annotations

from pathlib import Path


def load_mapping_arg(text: str, option: str, example: str = "{type: ...}") -> dict:
    """A mapping from a YAML file path or an inline YAML mapping (a CLI option's value)."""
    import yaml

    from deftmed.errors import ConfigError

    try:
        spec = yaml.safe_load(Path(text).read_text() if Path(text).is_file() else text)
    except (yaml.YAMLError, OSError):
        spec = None
    if not isinstance(spec, dict):
        raise ConfigError(f"{option} {text!r} is neither a YAML file nor a mapping like "
                          f"'{example}'")
    return spec


def load_noise_arg(text: str):
    """A noise model from a YAML file path or an inline YAML mapping."""
    from deftmed.physics.noise import load_noise

    return load_noise(load_mapping_arg(text, "--noise", "{type: gaussian, relative: 0.025}"))


def add_training_args(p, steps: int, lr: float, warmup: int, checkpoint_every: int) -> None:
    """The options every training command shares (the loop is ``deftmed.training.Trainer``)."""
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (split over processes)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup, help="linear learning-rate warm-up steps")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=checkpoint_every)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")


def train_config(args):
    from deftmed.training import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       warmup_steps=args.warmup, ema_decay=args.ema, grad_clip=args.grad_clip,
                       seed=args.seed, checkpoint_every=args.checkpoint_every,
                       progress=not args.no_progress)


def run_training(func, what: str, device) -> int:
    """Run ``func(dist, command)`` in a (torchrun-aware) process group; report its output."""
    import shlex
    import sys

    from deftmed.distributed import init_distributed, shutdown

    dist = init_distributed(device)
    try:
        path = func(dist, "deftmed " + shlex.join(sys.argv[1:]))
    finally:
        shutdown(dist)
    if dist.is_main:
        print(f"{what} written to {path}")
    return 0
