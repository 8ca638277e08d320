"""The demo: simulate sparse-view scans of fresh test phantoms, reconstruct with FBP and the
shipped DEFT model, tabulate PSNR/SSIM/time and draw truth | FBP | DEFT | error | uncertainty."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deftmed.evaluation.metrics import psnr, ssim
from deftmed.fileio import atomic_path


@dataclass
class DemoRow:
    method: str
    psnr: float
    ssim: float
    seconds: float


def run_demo(out_dir: str | Path, protocol: str = "ellipses64-sv20", n: int = 4,
             steps: int = 100, samples: int = 4, eta: float = 1.0, start: int = 0,
             device="cpu", seed: int = 0) -> tuple[list[DemoRow], Path]:
    from deftmed.evaluation.protocol import Protocol
    from deftmed.methods.fbp import FBPReconstructor
    from deftmed.methods.loading import load_deft

    proto = Protocol.load(protocol)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    op, sim_op = proto.operators()
    noise = proto.noise()
    x, y = proto.simulate("test", np.arange(start, start + n), op, sim_op, noise=noise)
    x, y = x.to(device), y.to(device)
    deft, _, _ = load_deft(proto.weights["deft"], proto.weights.get("prior"), device, steps, eta,
                           samples)
    fbp = FBPReconstructor(**_tuned_fbp(proto.name))
    gen = torch.Generator().manual_seed(seed)
    rec_fbp = fbp.reconstruct(y, op, noise)
    rec_deft = deft.reconstruct(y, op, noise, gen)
    dr = float(proto.metrics["data_range"])
    rows = [DemoRow(name, float(np.mean(psnr(r.image, x, dr))), float(np.mean(ssim(r.image, x, dr))),
                    r.seconds) for name, r in (("FBP", rec_fbp), (f"DEFT ({steps} steps, "
                                                                  f"{samples} samples)", rec_deft))]
    fig_path = out_dir / "demo.png"
    _figure(x, rec_fbp.image, rec_deft.image, rec_deft.std, fig_path, proto.name, dr)
    return rows, fig_path


def _tuned_fbp(protocol: str) -> dict:
    """FBP settings tuned on the protocol's validation split when available."""
    import yaml

    from deftmed.evaluation.protocol import REPO_ROOT
    path = REPO_ROOT / "protocols" / "tuned" / protocol / "fbp.yaml"
    if path.is_file():
        tuned = yaml.safe_load(path.read_text()) or {}
        s = tuned.get("settings", {})
        return {k: s[k] for k in ("filter_type", "frequency_scaling") if k in s}
    return {}


def _figure(x, fbp, deft, std, path: Path, title: str, data_range: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = x.shape[0]
    cols = ["truth", "FBP", "DEFT (mean)", "|DEFT - truth|", "DEFT std"]
    fig, axes = plt.subplots(n, 5, figsize=(10, 2.1 * n), squeeze=False)
    for i in range(n):
        err = (deft[i, 0] - x[i, 0]).abs().cpu().numpy()
        sd = std[i, 0].cpu().numpy() if std is not None else np.zeros_like(err)
        emax = max(float(err.max()), float(sd.max()), 1e-6)
        panels = [(x[i, 0], "gray", 0, 1), (fbp[i, 0], "gray", 0, 1), (deft[i, 0], "gray", 0, 1),
                  (err, "magma", 0, emax), (sd, "magma", 0, emax)]
        for j, (img, cmap, lo, hi) in enumerate(panels):
            ax = axes[i, j]
            img = img.cpu().numpy() if torch.is_tensor(img) else img
            ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
        p_f = float(psnr(fbp[i:i + 1], x[i:i + 1], data_range)[0])
        p_d = float(psnr(deft[i:i + 1], x[i:i + 1], data_range)[0])
        axes[i, 1].set_xlabel(f"{p_f:.1f} dB", fontsize=8)
        axes[i, 2].set_xlabel(f"{p_d:.1f} dB", fontsize=8)
    fig.suptitle(f"{title}: sparse-view CT, FBP vs DEFT (error and std share a colour scale)",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
