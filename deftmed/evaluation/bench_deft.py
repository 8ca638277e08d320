"""Benchmark section ``deft``: the evidence for DEFT itself (issue: DEFT).

- the shipped h-transforms: size ratio, fine-tuning wall time, validation curve and the step at
  which validation PSNR is within 0.5 dB of its final value;
- cost: DEFT vs plain unconditional DDIM with the same prior, steps and batch, same run;
- DDIM steps sweep (20, 50, 100, 200): PSNR vs seconds per image;
- the paper's ablation (four h parametrisations) after equal fine-tuning budgets.

DEFT vs FBP with confidence intervals on >= 100 test images comes from the benchmark runner
(section ``methods``), which reconstructs exactly the same images for every method.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from deftmed.evaluation.metrics import psnr, ssim

PROTOCOLS = ("ellipses64-sv20", "fan64-sv24")
SWEEP_STEPS = (20, 50, 100, 200)
SWEEP_N = int(os.environ.get("DEFTMED_BENCH_SWEEP_N", 16))
OVERHEAD_BATCH = 8
ABLATION_PROTOCOL = "ellipses64-sv20"
ABLATION_BUDGET = int(os.environ.get("DEFTMED_BENCH_ABLATION_STEPS", 150))
ABLATION_N = int(os.environ.get("DEFTMED_BENCH_ABLATION_N", 16))
ABLATION_STEPS = 50
RUNS = Path(os.environ.get("DEFTMED_RUNS", "runs"))


def _load(protocol: str):
    from deftmed.evaluation.protocol import Protocol
    from deftmed.methods.loading import load_deft

    proto = Protocol.load(protocol)
    method, noise, _ = load_deft(proto.weights["deft"], proto.weights.get("prior"), "cpu")
    return proto, method


def steps_to_within(curve: list[dict], tol: float = 0.5) -> int | None:
    """First validation step whose PSNR is within ``tol`` dB of the final value."""
    if not curve:
        return None
    final = curve[-1]["psnr"]
    return next(c["step"] for c in curve if abs(c["psnr"] - final) <= tol)


def h_summary(protocols=PROTOCOLS) -> str:
    lines = ["| protocol | h parameters | prior parameters | ratio | fine-tuning steps | wall time "
             "| validation PSNR curve (step: dB) | within 0.5 dB of final at |",
             "|---|---|---|---|---|---|---|---|"]
    commands = []
    for name in protocols:
        try:
            proto, method = _load(name)
        except Exception as exc:  # missing weights: say so, do not fail the section
            lines.append(f"| {name} | not available: {exc} | | | | | | |")
            continue
        m = method.model.metadata
        tr = m.get("training", {})
        curve = m.get("validation", [])
        wall = tr.get("wall_seconds")
        lines.append(
            f"| {name} | {m['h_parameters']:,} | {m['prior_parameters']:,} | "
            f"{100 * m['parameter_ratio']:.1f} % | {tr.get('step')} | "
            f"{'%.0f min' % (wall / 60) if wall else 'n/a'} | "
            + ", ".join(f"{c['step']}: {c['psnr']:.2f}" for c in curve)
            + f" | {steps_to_within(curve)} |")
        commands.append(f"- `{name}`: `{tr.get('command')}`")
    vs = m.get("validation_steps", 100) if commands else 100
    return ("\n".join(lines) + f"\n\nValidation: mean PSNR of {vs}-step DEFT reconstructions (eta 0) "
            "of the first 8 validation images, fixed noise.\nCommands:\n" + "\n".join(commands))


def prior_summary(names) -> str:
    """Size, training steps, wall time and command of shipped priors (from their metadata)."""
    from deftmed.checkpoint import read_metadata
    from deftmed.shipped import resolve_checkpoint

    lines = ["| prior | parameters | data | warm start | steps | wall time | command |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        try:
            m = read_metadata(resolve_checkpoint(name))
        except Exception as exc:  # missing weights: say so, do not fail the section
            lines.append(f"| {name} | not available: {exc} | | | | | |")
            continue
        tr = m.get("training", {})
        data = (tr.get("data") or {}).get("kind") or (tr.get("data") or {}).get("source")
        wall = tr.get("wall_seconds")
        lines.append(f"| {name} | {m.get('parameters', 0):,} | {data} | "
                     f"{'yes' if tr.get('init') else 'no'} | {tr.get('step')} | "
                     f"{'%.0f min' % (wall / 60) if wall else 'n/a'} | `{tr.get('command')}` |")
    return "\n".join(lines)


def _timed(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def overhead(protocol: str = "ellipses64-sv20", steps: int = 100, quick: bool = False) -> str:
    from deftmed.deft.sampler import deft_sample
    from deftmed.diffusion.ddim import ddim_loop, ddim_timesteps, initial_noise

    proto, method = _load(protocol)
    prior, model = method.prior, method.model
    op, sim_op = proto.operators()
    b = OVERHEAD_BATCH
    steps = 20 if quick else steps
    _, y = proto.simulate("test", np.arange(b), op, sim_op)
    guidance = model.guidance(op)
    size = prior.spec.image_size

    def uncond():
        z = initial_noise((b, 1, size, size), torch.Generator().manual_seed(0), "cpu")
        for _ in ddim_loop(prior, z, ddim_timesteps(prior.num_timesteps, steps)):
            pass

    def deft():
        deft_sample(prior, model.hnet, guidance, y, steps, generator=torch.Generator().manual_seed(0))

    t_u = _timed(uncond) / b
    t_d = _timed(deft) / b
    # per-component cost at the same batch
    z = torch.randn(b, 1, size, size)
    t = torch.full((b,), 500)
    reps = 5
    comp = {
        "prior eps": _timed(lambda: [prior.eps(z, t) for _ in range(reps)]) / reps / b,
        "h network": _timed(lambda: [model.hnet(z, t, z, z, z, prior.alphas_cumprod[t])
                                     for _ in range(reps)]) / reps / b,
        "A + back-projection": _timed(lambda: [guidance(prior.to_image(z), y)
                                               for _ in range(reps)]) / reps / b,
    }
    rows = "\n".join(f"| {k} | {1000 * v:.2f} |" for k, v in comp.items())
    return (f"Same run, same prior, {steps} DDIM steps, batch {b}, {torch.get_num_threads()} "
            f"thread(s):\n\n| sampler | s/image |\n|---|---|\n"
            f"| unconditional DDIM | {t_u:.3f} |\n| DEFT (Alg. 6) | {t_d:.3f} |\n\n"
            f"**Overhead ratio DEFT / unconditional: {t_d / t_u:.2f}x** (target <= 1.3x).\n\n"
            f"Per network-evaluation cost (ms per image):\n\n| part | ms/image |\n|---|---|\n{rows}\n")


@torch.no_grad()
def steps_sweep(protocol: str = "ellipses64-sv20", quick: bool = False) -> str:
    proto, method = _load(protocol)
    op, sim_op = proto.operators()
    n = 4 if quick else SWEEP_N
    x, y = proto.simulate("test", np.arange(n), op, sim_op)
    noise = proto.noise()
    dr = float(proto.metrics["data_range"])
    lines = ["| DDIM steps | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|"]
    for steps in (SWEEP_STEPS[:2] if quick else SWEEP_STEPS):
        method.steps = steps
        rec = method.reconstruct(y, op, noise, torch.Generator().manual_seed(0))
        lines.append(f"| {steps} | {np.mean(psnr(rec.image, x, dr)):.2f} | "
                     f"{np.mean(ssim(rec.image, x, dr)):.3f} | {rec.seconds:.2f} |")
    return f"First {n} test images of `{protocol}`, eta 0, one sample:\n\n" + "\n".join(lines)


def ablation(quick: bool = False) -> str:
    """Fine-tune the four parametrisations with the same budget, evaluate on the same images."""
    from deftmed.deft.finetune import finetune
    from deftmed.deft.hnet import HNetConfig
    from deftmed.deft.model import DeftModel
    from deftmed.diffusion.prior import DiffusionPrior
    from deftmed.evaluation.protocol import Protocol
    from deftmed.methods.deft import DEFTReconstructor
    from deftmed.shipped import resolve_checkpoint
    from deftmed.training import TrainConfig

    proto = Protocol.load(ABLATION_PROTOCOL)
    prior = DiffusionPrior.load(resolve_checkpoint(proto.weights["prior"]))
    op, sim_op = proto.operators()
    noise = proto.noise()
    budget = 20 if quick else ABLATION_BUDGET
    n = 2 if quick else ABLATION_N
    x, y = proto.simulate("test", np.arange(n), op, sim_op)
    dr = float(proto.metrics["data_range"])
    labels = {"full": "NN1(x, x0hat, g, t) - NN2(t) g (full)",
              "no_x0hat": "NN1(x, g, t) - NN2(t) g (without x0hat)",
              "no_guidance_path": "NN1(x, x0hat, A*y, t) (no guidance path)",
              "aty_only": "NN1(x, A*y, t)"}
    lines = [f"Each variant fine-tuned for {budget} steps (batch 16, lr 1e-3, seed 0) on "
             f"`{proto.name}`, evaluated with {ABLATION_STEPS} DDIM steps on the first {n} test "
             "images (A*y = FBP of the measurement):\n",
             "| parametrisation | PSNR (dB) | SSIM |", "|---|---|---|"]
    for variant, label in labels.items():
        out = RUNS / "ablation" / f"{variant}-{budget}{'-quick' if quick else ''}.safetensors"
        if not out.exists():
            cfg = TrainConfig(steps=budget, batch_size=16, lr=1e-3, warmup_steps=min(100, budget),
                              checkpoint_every=max(budget // 4, 1), progress=False, seed=0)
            finetune(prior, op, noise, proto.images("train"), HNetConfig(variant=variant), cfg,
                     out, torch.device("cpu"), resume=True, sim_op=sim_op)
        model = DeftModel.load(out)
        rec = DEFTReconstructor(prior, model, steps=ABLATION_STEPS).reconstruct(
            y, op, noise, torch.Generator().manual_seed(0))
        lines.append(f"| {label} | {np.mean(psnr(rec.image, x, dr)):.2f} | "
                     f"{np.mean(ssim(rec.image, x, dr)):.3f} |")
    return "\n".join(lines)


def section(quick: bool = False) -> str:
    parts = ["### Shipped h-transforms\n", h_summary(), "\n### Cost: overhead over unconditional DDIM\n",
             overhead(quick=quick), "\n### DDIM steps sweep\n", steps_sweep(quick=quick),
             "\n### Ablation (paper Table: the h parametrisations)\n", ablation(quick),
             "\nDEFT vs FBP (and all baselines) with 95 % intervals on the test split: see the "
             "`methods` section."]
    return "\n".join(parts)
