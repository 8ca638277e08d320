"""DEFT fine-tuning (paper Algorithm 5): train only ``h`` on simulated pairs.

Each step draws clean images, simulates fresh measurements ``y = noise(A x0)`` (optionally on a
finer grid than the reconstruction grid), noises the images to random ``t``, evaluates the frozen
prior and the guidance under ``no_grad`` and regresses ``eps`` on ``eps_theta + h``. No gradient
ever flows through the prior (it has ``requires_grad=False`` and is only called in ``no_grad``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from deftmed.data.datasets import ImageSource
from deftmed.deft.guidance import Guidance, condition_channels
from deftmed.deft.hnet import HNetConfig, HTransform
from deftmed.deft.model import DeftBinding, DeftModel
from deftmed.deft.sampler import deft_sample
from deftmed.distributed import DistInfo
from deftmed.physics import is_ct
from deftmed.training import TrainConfig, Trainer

log = logging.getLogger(__name__)


class PairSimulator:
    """Clean images and simulated measurements for training, validation and tests.

    With ``sim_op`` (a ray transform on a finer grid with the same physical scan) measurements
    are simulated from the images rendered on that grid: no "inverse crime".
    """

    def __init__(self, source: ImageSource, op, noise, sim_op=None, image_size: int | None = None):
        self.source, self.op, self.noise, self.sim_op = source, op, noise, sim_op
        self.image_size = int(image_size or getattr(op, "image_shape", (source.image_size,))[0])

    def operator_for(self, n: int, generator: torch.Generator | None):
        """The operator of a batch of ``n``: ``op``, or a random member of an operator family
        (a fresh inpainting mask per image, drawn from ``generator``)."""
        if not hasattr(self.op, "sample"):
            return self.op
        seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        return self.op.sample(n, seed)  # an image operator on the CPU

    def pairs(self, indices, generator: torch.Generator | None, device):
        """``(x0, y, op)``: clean images, simulated measurements and the batch's operator."""
        x0 = self.source.tensor(indices, self.image_size, device)
        op = self.operator_for(len(x0), generator)
        if not is_ct(op):
            op = op.to(device)
        if self.sim_op is None:
            clean = op(x0)
        else:
            clean = self.sim_op(self.source.tensor(indices, self.sim_op.image_shape[0], device))
        return x0, self.noise.sample(clean, generator), op


def h_inputs(prior, guidance: Guidance, hcfg: HNetConfig, z_t, t, y):
    """Everything ``h`` takes besides itself, computed without gradients."""
    with torch.no_grad():
        e_u = prior.eps(z_t, t)
        x0 = prior.tweedie(z_t, t, e_u)
        g = guidance(prior.to_image(x0), y) if (hcfg.guidance_path or "g" in hcfg.inputs) else None
        aty = guidance.measurement_image(y) if "aty" in hcfg.inputs else None
        cond = guidance.condition(y) if hcfg.cond_channels else None
    return e_u, x0, g, aty, cond


def calibrate_guidance_scale(prior, guidance: Guidance, sim: PairSimulator, n: int, seed: int,
                             device) -> float:
    """The least-squares step ``kappa`` for which ``x0hat + kappa * g_raw`` best fits ``x0``.

    Over a calibration batch at uniformly random timesteps (diffusion space):
    ``kappa = <g_raw, z0 - x0hat> / <g_raw, g_raw>``. With ``g = kappa * g_raw`` the guidance
    path with ``NN2 = 1`` is, in x0 space, the best single back-projected likelihood step, so
    the network starts from a sensible data-consistency correction and learns order-one values.
    Falls back to ``1 / RMS(g_raw)`` if the fit is not positive.
    """
    gen = torch.Generator().manual_seed(seed + 7919)
    idx = torch.randint(len(sim.source), (n,), generator=gen).numpy()
    x0, y, op = sim.pairs(idx, gen, device)
    t = torch.randint(prior.num_timesteps, (n,), generator=gen).to(device)
    z0 = prior.to_diffusion(x0)
    z_t = prior.schedule.q_sample(z0, t, torch.randn(x0.shape, generator=gen).to(device))
    raw = Guidance(op, guidance.noise, guidance.backprojection, guidance.filter_type,
                   guidance.frequency_scaling, 1.0)
    with torch.no_grad():
        x0hat = prior.tweedie(z_t, t)
        g = raw(prior.to_image(x0hat), y)
    gg = float((g * g).sum())
    kappa = float((g * (z0 - x0hat)).sum()) / gg if gg > 0 else 0.0
    if kappa <= 0 or not np.isfinite(kappa):
        rms = (gg / g.numel()) ** 0.5
        kappa = 1.0 / rms if rms > 0 else 1.0
    return kappa


def deft_loss(hnet, prior, guidance, hcfg, sim: PairSimulator, generator, batch, device):
    idx = torch.randint(len(sim.source), (batch,), generator=generator).numpy()
    x0, y, op = sim.pairs(idx, generator, device)
    t = torch.randint(prior.num_timesteps, (batch,), generator=generator).to(device)
    eps = torch.randn(x0.shape, generator=generator).to(device)
    z_t = prior.schedule.q_sample(prior.to_diffusion(x0), t, eps)
    e_u, x0hat, g, aty, cond = h_inputs(prior, guidance.for_operator(op), hcfg, z_t, t, y)
    h = hnet(z_t, t, x0hat, g, aty, prior.alphas_cumprod[t], cond)
    return torch.nn.functional.mse_loss(e_u + h, eps)


def validation_psnr(prior, hnet, guidance, val_x, val_y, steps: int, seed: int) -> float:
    """Mean PSNR of DEFT samples (eta 0) on a validation batch; ``guidance`` holds its operator."""
    from deftmed.evaluation.metrics import psnr

    gen = torch.Generator().manual_seed(seed)
    x = deft_sample(prior, hnet.eval(), guidance, val_y, steps, 0.0, generator=gen)
    return float(np.mean(psnr(x, val_x, data_range=1.0)))


def finetune(prior, op, noise, source: ImageSource, hcfg: HNetConfig, cfg: TrainConfig,
             out: str | Path, device: torch.device, dist: DistInfo = DistInfo(),
             resume: bool = False, guidance_settings: dict | None = None, sim_op=None,
             val_source: ImageSource | None = None, val_n: int = 4, val_every: int = 0,
             val_steps: int = 100, command: str | None = None) -> Path:
    """Fine-tune an h-transform; writes ``out`` (EMA weights) and ``out``'s folder's state."""
    out = Path(out)
    work = out.parent / (out.stem + ".run")
    prior = prior.to(device).eval().requires_grad_(False)
    settings = dict(guidance_settings or {})
    guidance = Guidance(op, noise, settings.get("backprojection", "fbp"),
                        settings.get("filter_type", "Hann"),
                        float(settings.get("frequency_scaling", 1.0)))
    image_size = prior.spec.image_size
    sim = PairSimulator(source, op, noise, sim_op, image_size)
    guidance.scale = calibrate_guidance_scale(prior, guidance, sim, 32, cfg.seed, device)
    channels = prior.spec.unet.in_channels
    hcfg = replace(hcfg, image_channels=channels, cond_channels=condition_channels(op, channels))
    hnet = HTransform(hcfg).to(device)
    if is_ct(op):
        binding = DeftBinding(prior.fingerprint, prior.parameter_count(), op.geometry.to_dict(),
                              noise.to_dict(), guidance.settings())
    else:
        binding = DeftBinding(prior.fingerprint, prior.parameter_count(), {}, noise.to_dict(),
                              guidance.settings(), op.to_dict())
    identity = {"binding": vars(binding), "hnet": hcfg.to_dict(), "data": source.description,
                "seed": cfg.seed, "batch_size": cfg.batch_size}
    trainer = Trainer(hnet, cfg, work, dist, device, run_info={"identity": identity,
                                                               "command": command})
    curve: list[dict] = []
    if resume and out.exists():
        try:
            curve = list(DeftModel.load(out).metadata.get("validation", []))
        except Exception:  # a stale or foreign file: the curve restarts, training still resumes
            curve = []
    val = None
    if val_source is not None and val_every > 0 and dist.is_main:
        vsim = PairSimulator(val_source, op, noise, sim_op, image_size)
        val = vsim.pairs(np.arange(val_n), torch.Generator().manual_seed(cfg.seed + 1), device)

    def loss_fn(model, step, gen, batch):
        return deft_loss(model, prior, guidance, hcfg, sim, gen, batch, device)

    def on_checkpoint(ema, step):
        nonlocal curve
        curve = [c for c in curve if c["step"] < step]
        if val is None or (step % val_every and step != cfg.steps):
            return None
        value = validation_psnr(prior, ema, guidance.for_operator(val[2]), val[0], val[1],
                                val_steps, cfg.seed)
        curve.append({"step": step, "psnr": round(value, 3)})
        log.info("step %d: validation PSNR %.2f dB", step, value)
        return {"val_psnr": round(value, 3)}

    def save_fn(ema, step):
        DeftModel(ema, binding).save(out, {
            "training": {"step": step, "config": vars(cfg), "command": command,
                         "wall_seconds": round(trainer.wall_seconds, 1),
                         "data": source.description, "world_size": dist.world_size,
                         "simulation_grid": sim_op.image_shape[0] if sim_op is not None else None},
            "validation": curve, "validation_steps": val_steps})

    trainer.run(loss_fn, save_fn, on_checkpoint, resume=resume)
    return out
