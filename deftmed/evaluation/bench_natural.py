"""Benchmark section ``natural``: the DEFT paper's natural-image tasks at CPU scale.

On each ``natural64-*`` protocol (64x64 RGB crops of scikit-image photographs, the embedded
RGB prior ``prior-natural64`` and one h-transform per task) the runner evaluates the direct
inversion, DEFT (one sample, 100 DDIM steps), DDRM (20 steps; inpainting and super-resolution,
the operators with an SVD) on the first ``N_FAST`` test crops, and DPS-1000 and RED-diff-1000
on the first ``N_SLOW`` of the same crops (slow on a CPU). Settings are the methods' defaults
(no tuning on this section: stated in the table). The section tabulates PSNR and SSIM (fixed
range 1, colour channels averaged) with 95 % intervals and seconds per image, and says per task
where DEFT wins and loses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from deftmed.evaluation.bench_methods import _ci, _ci3, _common_psnr

TASKS = tuple(os.environ.get("DEFTMED_BENCH_NATURAL",
                             "inpaint,sr4,hdr,phase,nlblur").split(","))
SVD_TASKS = ("inpaint", "sr4")
N_FAST = int(os.environ.get("DEFTMED_BENCH_NATURAL_N", 20))
N_SLOW = int(os.environ.get("DEFTMED_BENCH_NATURAL_N_SLOW", 3))
RESULTS = Path(os.environ.get("DEFTMED_RESULTS", "results"))


def methods_for(task: str) -> tuple[list[str], list[str]]:
    fast = ["direct", "deft"] + (["ddrm"] if task in SVD_TASKS else [])
    return fast, ["dps", "reddiff"]


def run(task: str, quick: bool = False) -> Path:
    from deftmed.evaluation.runner import run_benchmark

    name = f"natural64-{task}"
    out = RESULTS / (name + ("-quick" if quick else ""))
    n_fast, n_slow = (2, 1) if quick else (N_FAST, N_SLOW)
    fast, slow = methods_for(task)
    run_benchmark(name, fast, n_fast, out, batch_size=10, summarise_results=False)
    run_benchmark(name, slow, n_slow, out, batch_size=10, summarise_results=True,
                  settings_override={"dps": {"steps": 50}, "reddiff": {"steps": 50}} if quick else None)
    return out


def table(out: Path) -> tuple[str, dict]:
    s = json.loads((out / "summary.json").read_text())
    methods = s["method_order"]
    lines = [f"Protocol `{s['protocol']['name']}` (hash `{s['protocol']['hash']}`): "
             f"{s['protocol']['description']}\n",
             "| method | n | PSNR (dB) | SSIM | misfit | s/image | NFE |", "|---|---|---|---|---|---|---|"]
    for m in methods:
        d = s["methods"][m]
        mm = d["metrics"]
        lines.append(f"| {m} | {d['n']} | {_ci(mm['psnr'])} | {_ci3(mm['ssim'])} | "
                     f"{mm['data_misfit']['mean']:.3f} | {mm['seconds']['mean']:.2f} | "
                     f"{mm['nfe']['mean']:.0f} |")
    common, n_common = _common_psnr(out, methods)
    sec = {m: s["methods"][m]["metrics"]["seconds"]["mean"] for m in methods}
    return "\n".join(lines), {"common": common, "n_common": n_common, "seconds": sec}


def verdict(task: str, info: dict) -> str:
    common, sec = info["common"], info["seconds"]
    if "deft" not in common:
        return f"{task}: DEFT not measured."
    others = {m: v for m, v in common.items() if m != "deft"}
    beaten = sorted((m for m, v in others.items() if v > common["deft"]), key=others.get,
                    reverse=True)
    speed = ", ".join(f"{sec[m] / sec['deft']:.1f}x faster than {m}" for m in ("dps", "reddiff")
                      if m in sec and sec.get("deft"))
    where = (f"**DEFT wins** ({common['deft']:.2f} dB; next best "
             f"{max(others, key=others.get)} {max(others.values()):.2f} dB)" if not beaten else
             f"**DEFT loses** to {', '.join(f'{m} ({others[m]:.2f} dB)' for m in beaten)} "
             f"with {common['deft']:.2f} dB")
    return (f"{task}: {where} on the {info['n_common']} crops every method finished"
            + (f"; it is {speed}." if speed else "."))


def section(quick: bool = False) -> str:
    parts = [f"The direct inversion, DEFT (1 sample, 100 DDIM steps) and DDRM (20 steps, "
             f"inpainting and super-resolution only) on the first {N_FAST} test crops; DPS and "
             f"RED-diff (1000 steps each) on the first {N_SLOW} of them. Default settings for "
             "every method (this section is not tuned). Prior `prior-natural64` (RGB, trained "
             "on crops of 7 scikit-image photographs); test crops come from `chelsea`, which no "
             "model saw. PSNR/SSIM with fixed range 1, channels averaged; 95 % intervals in "
             "brackets. The non-linear deblurring operator is a self-contained stand-in for the "
             "paper's learned blur (see `deftmed.physics.imaging.NonlinearBlur`).\n"]
    from deftmed.evaluation.bench_deft import h_summary, prior_summary

    parts += ["### Models\n", prior_summary(["prior-natural64"]), "",
              h_summary(tuple(f"natural64-{t}" for t in TASKS)), ""]
    verdicts = []
    for task in TASKS:
        try:
            text, info = table(run(task, quick))
            parts.append(f"### natural64-{task}\n\n{text}\n")
            verdicts.append(verdict(task, info))
        except Exception as exc:  # noqa: BLE001 - report what is missing, keep other tasks
            parts.append(f"### natural64-{task}\n\nNot measured: {exc}\n")
    if verdicts:
        parts.append("### Where DEFT wins and loses\n\n" + "\n".join(f"- {v}" for v in verdicts)
                     + "\n")
    return "\n".join(parts)
