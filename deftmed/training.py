"""One training loop for every network deftmed trains (the prior and the h-transforms).

It owns what is the same for both: Adam with linear warm-up, gradient clipping, an EMA of the
weights, DistributedDataParallel under torchrun, a CSV log, a tqdm progress bar, periodic atomic
checkpoints, and exact resume. What differs (the loss, what to save, what to draw or validate)
comes in as callbacks.

Randomness is a pure function of ``(seed, step, rank)``: every step draws from its own
generator, so a resumed run continues with exactly the numbers the uninterrupted run would
have used, without storing RNG states.
"""

from __future__ import annotations

import copy
import csv
import json
import logging

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from deftmed.checkpoint import (flatten_state, load_checkpoint, load_state_into, save_checkpoint,
                                unflatten_state)
from deftmed.distributed import DistInfo, all_reduce_mean
from deftmed.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
STATE_KIND = "training-state"


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for one training step of one process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


class Trainer:
    """Train ``model`` (an ``nn.Module`` whose parameters are all trained).

    Files in ``out_dir``: ``train_state.safetensors`` (weights, EMA, optimiser, step),
    ``log.csv`` (one row per ``log_every`` steps), plus whatever ``save_fn`` writes.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, out_dir: str | Path,
                 dist: DistInfo = DistInfo(), device: torch.device = torch.device("cpu"),
                 run_info: dict | None = None):
        self.model = model.to(device)
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.dist = dist
        self.device = device
        self.run_info = run_info or {}
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.step = 0
        self.previous_seconds = 0.0  # wall time of earlier (resumed) segments
        self._t_start = time.time()
        self.wrapped = self.model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.wrapped = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- state --------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.out_dir / "train_state.safetensors"

    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.csv"

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        opt_tensors, skeleton = flatten_state(self.opt.state_dict(), "opt")
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors.update(opt_tensors)
        save_checkpoint(self.state_path, tensors, STATE_KIND,
                        {"step": self.step, "config": asdict(self.cfg), "optimizer": skeleton,
                         "run": self.run_info, "wall_seconds": self.wall_seconds})

    def load_state(self) -> None:
        tensors, meta = load_checkpoint(self.state_path, STATE_KIND)
        old = meta.get("run", {}).get("identity")
        new = self.run_info.get("identity")
        if old != new:
            raise CheckpointError(f"cannot resume from {self.state_path}: it was made for "
                                  f"{json.dumps(old)}, this run is {json.dumps(new)}")
        split = lambda p: {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}
        load_state_into(self.model, split("model."), f"resume {self.state_path}")
        load_state_into(self.ema, split("ema."), f"resume {self.state_path} (EMA)")
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("opt")}
        self.opt.load_state_dict(unflatten_state(opt_tensors, meta["optimizer"]))
        self.step = int(meta["step"])
        self.previous_seconds = float(meta.get("wall_seconds", 0.0))

    @property
    def wall_seconds(self) -> float:
        """Training wall time so far, over all resumed segments."""
        return self.previous_seconds + time.time() - self._t_start

    # --- the loop -----------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        if self.cfg.warmup_steps <= 0:
            return self.cfg.lr
        return self.cfg.lr * min(1.0, (step + 1) / self.cfg.warmup_steps)

    @torch.no_grad()
    def update_ema(self) -> None:
        # Warm-up of the EMA decay (as in diffusers): short runs are not dominated by the init.
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    def _open_log(self, resume: bool):
        """Open the CSV log; on resume, drop rows past the resumed step (no duplicates)."""
        rows = []
        if resume and self.log_path.exists():
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = open(self.log_path, "w", newline="")
        writer = csv.DictWriter(f, fieldnames=["step", "loss", "lr", "images_per_s", "seconds",
                                               "extra"])
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        return f, writer

    def run(self, loss_fn: Callable[[torch.nn.Module, int, torch.Generator, int], torch.Tensor],
            save_fn: Callable[[torch.nn.Module, int], None],
            on_checkpoint: Callable[[torch.nn.Module, int], dict | None] | None = None,
            resume: bool = False) -> int:
        """Train until ``cfg.steps``; returns the final step.

        ``loss_fn(model, step, generator, local_batch)`` returns the scalar loss of this
        process's share of the batch; ``save_fn(ema_model, step)`` writes the usable weights;
        ``on_checkpoint(ema_model, step)`` may draw samples or validate and returns values to
        log (main process only).
        """
        from tqdm.auto import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.state_path.exists():
            self.load_state()
            log.info("resumed from step %d", self.step)
        elif resume:
            log.warning("--resume given but %s does not exist; starting from step 0", self.state_path)
        world = self.dist.world_size
        if self.cfg.batch_size % world:
            raise ConfigError(f"batch size {self.cfg.batch_size} is not divisible by the "
                              f"{world} processes")
        local_batch = self.cfg.batch_size // world
        logf, writer = self._open_log(resume) if self.dist.is_main else (None, None)
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="training", dynamic_ncols=True,
                   disable=not (self.cfg.progress and self.dist.is_main))
        t_start = self._t_start = time.time()
        t_last, step_last = t_start, self.step
        loss_acc, n_acc = 0.0, 0
        try:
            self.model.train()
            while self.step < self.cfg.steps:
                for group in self.opt.param_groups:
                    group["lr"] = self.lr_at(self.step)
                gen = step_generator(self.cfg.seed, self.step, self.dist.rank)
                loss = loss_fn(self.wrapped, self.step, gen, local_batch)
                if not torch.isfinite(loss):
                    raise ConfigError(f"training loss became {loss.item()} at step {self.step}; "
                                      "lower the learning rate or check the data")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
                self.opt.step()
                self.step += 1
                self.update_ema()
                loss_acc += all_reduce_mean(loss.detach(), self.dist).item()
                n_acc += 1
                bar.update(1)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                    now = time.time()
                    ips = (self.step - step_last) * self.cfg.batch_size / max(now - t_last, 1e-9)
                    bar.set_postfix(loss=f"{loss_acc / n_acc:.4f}", img_s=f"{ips:.1f}")
                    if writer:
                        writer.writerow({"step": self.step, "loss": f"{loss_acc / n_acc:.6f}",
                                         "lr": f"{self.lr_at(self.step - 1):.3e}",
                                         "images_per_s": f"{ips:.2f}",
                                         "seconds": f"{self.wall_seconds:.1f}", "extra": ""})
                        logf.flush()
                    t_last, step_last, loss_acc, n_acc = now, self.step, 0.0, 0
                if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps:
                    self._checkpoint(save_fn, on_checkpoint, writer, logf, t_start)
        except KeyboardInterrupt:
            self.save_state()
            raise
        finally:
            bar.close()
            if logf:
                logf.close()
        return self.step

    def _checkpoint(self, save_fn, on_checkpoint, writer, logf, t_start) -> None:
        if self.dist.is_main:
            self.save_state()
            extra = on_checkpoint(self.ema, self.step) if on_checkpoint else None
            save_fn(self.ema, self.step)
            if extra and writer:
                writer.writerow({"step": self.step, "loss": "", "lr": "", "images_per_s": "",
                                 "seconds": f"{self.wall_seconds:.1f}",
                                 "extra": json.dumps(extra, sort_keys=True)})
                logf.flush()
            self.model.train()
        from deftmed.distributed import barrier
        barrier(self.dist)


def count_trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


