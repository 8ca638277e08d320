"""Benchmark section ``prior``: quality and speed of the shipped prior ``prior-ellipses64``.

1. Denoising: PSNR of the one-step Tweedie estimate ``x0hat(z_t, t)`` against the clean test
   image, versus the trivial estimate ``z_t / sqrt(abar_t)``, at a few noise levels.
2. Sample realism: unconditional DDIM samples against test images, statistic by statistic, each
   compared with the difference between two disjoint halves of the test data (the floor that
   sampling noise alone produces), and a two-sample z-score from per-image values.
3. Speed: training throughput of the architecture, the recorded training run, and DDIM sampling
   time per image.

The checkpoint is `CHECKPOINT` (a shipped name or a path); the environment variable
``DEFTMED_BENCH_PRIOR`` overrides it (e.g. to measure an intermediate training checkpoint).
"""

from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

CHECKPOINT = "prior-ellipses64"
#: Where the training run's ``log.csv`` is looked for when it is not next to the checkpoint.
RUN_DIR = Path("runs") / "prior-ellipses64"
TIMESTEPS = (50, 200, 500)
SEED = 0
# (full, quick) settings
N_DENOISE = (64, 16)
N_SAMPLES = (256, 16)
SAMPLE_STEPS = (50, 25)
TRAIN_STEPS = (5, 2)
TRAIN_BATCH = 16
SAMPLE_BATCH = 16
GRID_IMAGES = 16
#: "dark" pixels: below this value. Every normalised ellipse phantom spans exactly [0, 1]
#: (its minimum is shifted to 0, its maximum scaled to 1); ellipse values may be negative, so
#: the uncovered background is not at a fixed value and "dark" means "near the image minimum".
DARK = 0.05
Z_FLAG = 3.0
#: Absolute tolerance added to the floor test of per-image statistics (model-range units).
ABS_TOL = 0.01
RATIO_FLAG = 2.0


def _checkpoint_name() -> str:
    return os.environ.get("DEFTMED_BENCH_PRIOR") or str(CHECKPOINT)


# ------------------------------------------------------------------------------ statistics
def per_image_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics of ``(N, H, W)`` images in the model range."""
    flat = x.reshape(len(x), -1)
    return {
        "mean intensity": flat.mean(1),
        "pixel std (contrast)": flat.std(1),
        "image minimum": flat.min(1),
        "image maximum": flat.max(1),
        f"dark fraction (< {DARK:g})": (flat < DARK).mean(1),
        "fraction outside [0, 1]": ((flat < 0) | (flat > 1)).mean(1),
    }


def z_score(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample z of the means (Welch standard error)."""
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 \
        else 0.0
    diff = float(a.mean() - b.mean())
    if se == 0.0:
        return 0.0 if abs(diff) < 1e-9 else math.copysign(math.inf, diff)
    return diff / se


def raps(x: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum (mean over images, image means removed), radii
    1 .. H//2 in cycles per image."""
    n, h, w = x.shape
    f = np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True))
    p = (np.abs(f) ** 2).mean(0)
    ky = np.fft.fftfreq(h) * h
    kx = np.fft.fftfreq(w) * w
    r = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(int)
    rmax = min(h, w) // 2
    out = np.array([p[r == k].mean() for k in range(1, rmax + 1)])
    return np.maximum(out, 1e-30)


def raps_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |log10| ratio of two RAPS curves (0 = identical; 0.1 = 26 % typical ratio)."""
    return float(np.mean(np.abs(np.log10(a / b))))


def band_ratios(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Geometric-mean power ratio a/b in low, mid and high frequency bands."""
    k = np.arange(1, len(a) + 1)
    rmax = len(a)
    bands = {"low": k <= rmax / 4, "mid": (k > rmax / 4) & (k <= rmax / 2), "high": k > rmax / 2}
    return {name: float(10 ** np.mean(np.log10(a[m] / b[m]))) for name, m in bands.items()
            if m.any()}


def wasserstein1(a: np.ndarray, b: np.ndarray) -> float:
    """W1 distance between the pooled pixel-value distributions (equal counts: sorted diff)."""
    sa, sb = np.sort(a.reshape(-1)), np.sort(b.reshape(-1))
    if len(sa) != len(sb):
        q = np.linspace(0, 1, min(len(sa), len(sb)))
        sa, sb = np.quantile(sa, q), np.quantile(sb, q)
    return float(np.abs(sa - sb).mean())


# ------------------------------------------------------------------------------ parts
def _fmt(v: float, digits: int = 4) -> str:
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def denoising(prior, source, n: int) -> str:
    from deftmed.evaluation.metrics import psnr

    x = source.tensor(list(range(n)), prior.spec.image_size)
    z0 = prior.to_diffusion(x)
    rows = ["| t | abar_t | noise sigma (image units) | Tweedie PSNR dB | trivial "
            "`z_t/sqrt(abar)` PSNR dB | gain dB |", "|---|---|---|---|---|---|"]
    gains = []
    for t in TIMESTEPS:
        if t >= prior.num_timesteps:
            continue
        g = torch.Generator().manual_seed(SEED + 1000 + t)
        eps = torch.randn(z0.shape, generator=g)
        tt = torch.full((n,), t, dtype=torch.long)
        zt = prior.schedule.q_sample(z0, tt, eps)
        est = []
        with torch.no_grad():
            for s in range(0, n, SAMPLE_BATCH):
                est.append(prior.to_image(prior.tweedie(zt[s:s + SAMPLE_BATCH],
                                                        tt[s:s + SAMPLE_BATCH])))
        est = torch.cat(est)
        abar = float(prior.alphas_cumprod[t])
        trivial = prior.to_image(zt / math.sqrt(abar))
        p_tw, p_tr = psnr(est, x), psnr(trivial, x)
        sigma = math.sqrt((1 - abar) / abar) * prior.spec.data_scale
        gains.append(p_tw.mean() - p_tr.mean())
        rows.append(f"| {t} | {abar:.4f} | {sigma:.3f} | {p_tw.mean():.2f} ± {p_tw.std():.2f} | "
                    f"{p_tr.mean():.2f} ± {p_tr.std():.2f} | {p_tw.mean() - p_tr.mean():+.2f} |")
    head = (f"### Denoising (one Tweedie step)\n\n{n} test images, noise drawn with fixed seeds; "
            "PSNR with data range 1 on the model range, mean ± std over images; no clamping.\n")
    verdict = ("The prior denoises better than the trivial estimate at every level."
               if gains and min(gains) > 0 else
               "WARNING: at some level the Tweedie estimate is no better than the trivial one.")
    return head + "\n" + "\n".join(rows) + "\n\n" + verdict + "\n"


def realism(prior, source, n: int, steps: int, out_dir: Path) -> tuple[str, float]:
    """Markdown for the sample-realism part; also returns seconds per sample (batched)."""
    from deftmed.diffusion.ddim import sample_unconditional
    from deftmed.diffusion.train import save_sample_grid

    size = prior.spec.image_size
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.perf_counter()
    samples = sample_unconditional(prior, n, steps=steps, generator=gen,
                                   batch_size=SAMPLE_BATCH)
    per_sample = (time.perf_counter() - t0) / n
    s = samples[:, 0].numpy().astype(np.float64)
    a = source.get(list(range(n)), size).astype(np.float64)
    b = source.get(list(range(n, 2 * n)), size).astype(np.float64)

    png = Path(out_dir) / "prior_samples.png"
    save_sample_grid(samples[:GRID_IMAGES], png,
                     f"{n} DDIM samples ({steps} steps), first {min(n, GRID_IMAGES)} | data",
                     torch.from_numpy(a[:GRID_IMAGES, None]).float())

    st_s, st_a, st_b = per_image_stats(s), per_image_stats(a), per_image_stats(b)
    rows = ["| statistic (per image, mean over images) | samples | data A | data B | "
            "samples − A | floor B − A | z (samples vs A) | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    differs: list[str] = []
    for key in st_s:
        vs, va, vb = st_s[key].mean(), st_a[key].mean(), st_b[key].mean()
        z = z_score(st_s[key], st_a[key])
        # significant (z) or practically large against the floor (robust to a few wild samples
        # inflating the variance, and to statistics the data holds constant, like its minimum)
        bad = abs(z) > Z_FLAG or abs(vs - va) > RATIO_FLAG * abs(vb - va) + ABS_TOL
        rows.append(f"| {key} | {_fmt(vs)} | {_fmt(va)} | {_fmt(vb)} | {vs - va:+.4g} | "
                    f"{vb - va:+.4g} | {_fmt(z, 3)} | {'**differs**' if bad else 'ok'} |")
        if bad:
            differs.append(f"{key}: samples {_fmt(vs)} vs data {_fmt(va)} "
                           f"({'higher' if vs > va else 'lower'}; data-vs-data floor "
                           f"{abs(vb - va):.3g}, z = {_fmt(z, 3)})")
    w_s, w_f = wasserstein1(s, a), wasserstein1(b, a)
    r_s, r_a, r_b = raps(s), raps(a), raps(b)
    d_s, d_f = raps_distance(r_s, r_a), raps_distance(r_b, r_a)
    bands_s, bands_f = band_ratios(r_s, r_a), band_ratios(r_b, r_a)
    dist_rows = ["| distance to data A | samples | floor (data B) | ratio | verdict |",
                 "|---|---|---|---|---|"]
    for label, v, f in (("pixel-value distribution, W1", w_s, w_f),
                        ("RAPS mean abs log10 ratio", d_s, d_f)):
        ratio = v / f if f > 0 else math.inf
        bad = ratio > RATIO_FLAG
        dist_rows.append(f"| {label} | {v:.4g} | {f:.4g} | {ratio:.2f} | "
                         f"{'**differs**' if bad else 'ok'} |")
        if bad:
            differs.append(f"{label}: {v:.3g}, {ratio:.1f}x the data-vs-data floor {f:.3g}")
    band_txt = ", ".join(f"{k} {bands_s[k]:.2f}x (floor {bands_f[k]:.2f}x)" for k in bands_s)
    for k in bands_s:
        dev, floor = abs(math.log10(bands_s[k])), abs(math.log10(bands_f[k]))
        if dev > max(RATIO_FLAG * floor, math.log10(1.25)):
            differs.append(f"{k}-frequency power {bands_s[k]:.2f}x the data's "
                           f"({'too much' if bands_s[k] > 1 else 'too little'}: "
                           f"{'noise or spurious texture' if bands_s[k] > 1 else 'blur or missing detail'}"
                           f"; floor {bands_f[k]:.2f}x)")
    rel = os.path.join(Path(out_dir).name, png.name)
    lines = [
        "### Sample realism",
        "",
        f"{n} unconditional DDIM samples (eta 0, {steps} trailing steps, seed {SEED}) against "
        f"test images 0..{n - 1} (data A); test images {n}..{2 * n - 1} (data B) give the "
        "floor: the difference two independent draws of the data show. "
        f"Every ellipse phantom is normalised to span exactly [0, 1] (minimum 0, maximum 1); "
        f"ellipse values can be negative, so the uncovered background sits at no fixed value and "
        f"*dark fraction* counts pixels below {DARK:g}, i.e. near the image minimum. A statistic "
        f"is flagged when its two-sample z-score (per-image values) exceeds {Z_FLAG:g} or its "
        f"difference exceeds {RATIO_FLAG:g}x the floor + {ABS_TOL:g}; a distance when it "
        f"exceeds {RATIO_FLAG:g}x its floor.",
        "",
        *rows,
        "",
        *dist_rows,
        "",
        f"RAPS (radially averaged power spectrum, image means removed) power ratio samples / "
        f"data by band (geometric mean over radii; low = up to 1/4 of Nyquist, high = above 1/2): "
        f"{band_txt}.",
        "",
        f"![samples | data]({rel})",
        "",
        "**Where the samples differ from the data:** "
        + ("; ".join(differs) + "." if differs else
           "no statistic measured here differs beyond the data-vs-data floor."),
    ]
    if n < 64:
        lines.append(f"(Quick mode: only {n} samples, so z-scores and floors are rough.)")
    return "\n".join(lines) + "\n", per_sample


def training_throughput(prior, source, steps: int) -> str:
    from deftmed.diffusion.prior import DiffusionPrior
    from deftmed.diffusion.train import prior_loss

    torch.manual_seed(SEED)
    fresh = DiffusionPrior(prior.spec)  # same architecture, new weights
    unet = fresh.unet.train().requires_grad_(True)
    opt = torch.optim.Adam(unet.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(SEED)

    def step():
        loss = prior_loss(unet, source, fresh, gen, TRAIN_BATCH, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

    step()  # warm-up (also renders/caches the batch's images)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sec = (time.perf_counter() - t0) / steps
    return (f"Training step of this architecture ({prior.parameter_count():,} parameters; "
            f"`{_unet_summary(prior)}`): batch {TRAIN_BATCH}, Adam + gradient clipping, data "
            f"loading included, EMA update excluded; {steps} timed steps after one warm-up: "
            f"**{TRAIN_BATCH / sec:.1f} images/s** ({sec:.2f} s/step).\n")


def _unet_summary(prior) -> str:
    u = prior.spec.unet
    return (f"channels {list(u.channels)}, attention {[int(a) for a in u.attention_levels]}, "
            f"res blocks {u.num_res_blocks}")


def _read_log(path: Path) -> dict | None:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return None
    rows = [r for r in rows if r.get("seconds")]
    if not rows:
        return None
    wall, prev, segments = 0.0, None, 1
    for r in rows:
        sec = float(r["seconds"])
        if prev is not None and sec < prev:  # a resumed run restarts its clock
            wall += prev
            segments += 1
        prev = sec
    wall += prev or 0.0
    ips = [float(r["images_per_s"]) for r in rows if r.get("images_per_s")]
    return {"last_step": int(rows[-1]["step"]), "wall_s": wall, "segments": segments,
            "mean_ips": float(np.mean(ips)) if ips else float("nan"),
            "last_loss": next((float(r["loss"]) for r in reversed(rows) if r.get("loss")),
                              float("nan"))}


def training_record(prior, ckpt: Path) -> str:
    tr = prior.metadata.get("training") or {}
    cfg = tr.get("config") or {}
    lines = []
    if tr:
        lines.append(f"Recorded training (checkpoint metadata): step **{tr.get('step')}** of "
                     f"{cfg.get('steps', '?')}, batch {cfg.get('batch_size', '?')}, lr "
                     f"{cfg.get('lr', '?')}, EMA {cfg.get('ema_decay', '?')}, "
                     f"{tr.get('world_size', 1)} process(es); command: "
                     f"`{tr.get('command', 'not recorded')}`.")
    else:
        lines.append("The checkpoint records no training metadata.")
    repo_run = Path(__file__).resolve().parents[2] / RUN_DIR
    candidates = list(dict.fromkeys([ckpt.parent / "log.csv", RUN_DIR / "log.csv",
                                     repo_run / "log.csv"]))
    for cand in candidates:
        info = _read_log(cand) if cand.is_file() else None
        if info:
            batch = int(cfg.get("batch_size", TRAIN_BATCH) or TRAIN_BATCH)
            overall = info["last_step"] * batch / info["wall_s"] if info["wall_s"] else float("nan")
            lines.append(
                f"Training log `{cand}`: {info['last_step']} steps logged in "
                f"{info['wall_s'] / 3600:.2f} h wall time ({info['segments']} run segment(s)); "
                f"mean logged throughput {info['mean_ips']:.1f} images/s, overall "
                f"{overall:.1f} images/s including checkpoints and sample grids; last logged "
                f"loss {info['last_loss']:.4f}."
                + (" The log runs past the checkpoint's step (training continues)."
                   if tr.get("step") is not None and info["last_step"] > int(tr["step"]) else ""))
            break
    else:
        lines.append("No training log found (looked for "
                     + ", ".join(f"`{c}`" for c in candidates) + ").")
    return "\n\n".join(lines) + "\n"


def sampling_time(prior, steps: int, per_sample_batched: float) -> str:
    from deftmed.diffusion.ddim import sample_unconditional

    gen = torch.Generator().manual_seed(SEED + 1)
    sample_unconditional(prior, 1, steps=2, generator=gen, batch_size=1)  # warm-up
    t0 = time.perf_counter()
    sample_unconditional(prior, 1, steps=steps, generator=gen, batch_size=1)
    single = time.perf_counter() - t0
    scale = 100 / steps
    note = "" if steps == 100 else f" (measured at {steps} steps, scaled linearly to 100)"
    return (f"DDIM sampling, 100 steps{note}: **{single * scale:.2f} s/image at batch 1**, "
            f"**{per_sample_batched * scale:.2f} s/image at batch {SAMPLE_BATCH}** "
            f"({prior.spec.image_size}x{prior.spec.image_size}, one UNet evaluation per step).\n")


# ------------------------------------------------------------------------------ section
def section(quick: bool = False, out_dir: str | Path = "benchmarks") -> str:
    from deftmed.data.datasets import open_images
    from deftmed.diffusion.prior import DiffusionPrior
    from deftmed.errors import CheckpointError
    from deftmed.shipped import resolve_checkpoint

    q = 1 if quick else 0
    name = _checkpoint_name()
    try:
        ckpt = resolve_checkpoint(name)
    except CheckpointError as exc:
        return (f"**Not measured: {exc}.** Create the shipped prior with `make weights` "
                "(or `make weights-prior`), then run `make bench SECTIONS=prior`.\n")
    prior = DiffusionPrior.load(ckpt)
    meta = prior.metadata
    data = (prior.spec.data or {})
    kind = data.get("kind", "ellipses") if data.get("source", "phantom") == "phantom" \
        else "ellipses"
    size = prior.spec.image_size
    test = open_images(kind, "test", size)
    train = open_images(kind, "train", size)
    tr = meta.get("training") or {}
    label = f"`{ckpt}`" + (f" (`{name}`)" if str(name) != str(ckpt) else "")
    head = (f"Checkpoint {label}, weights sha256 "
            f"`{str(meta.get('weights_sha256', '?'))[:16]}`, {prior.parameter_count():,} "
            f"parameters, trained {tr.get('step', '?')} steps "
            f"(of {(tr.get('config') or {}).get('steps', '?')}) at git "
            f"`{str((meta.get('provenance') or {}).get('git_commit'))[:12]}`; {kind} "
            f"{size}x{size}, test split. Torch threads: {torch.get_num_threads()}.\n")
    parts = [head, denoising(prior, test, N_DENOISE[q])]
    text, per_sample = realism(prior, test, N_SAMPLES[q], SAMPLE_STEPS[q], Path(out_dir))
    parts.append(text)
    parts.append("### Speed\n")
    parts.append(training_throughput(prior, train, TRAIN_STEPS[q]))
    parts.append(training_record(prior, ckpt))
    parts.append(sampling_time(prior, SAMPLE_STEPS[q], per_sample))
    return "\n".join(parts)
