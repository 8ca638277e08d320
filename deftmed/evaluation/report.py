"""Benchmark reports: ``report.md`` (figures as PNG files) and one self-contained
``report.html`` (figures inlined as base64 PNG, no external resources).

Contents: the protocol (name, hash, description), provenance, the metric conventions, a summary
table (mean +- std and 95 % interval per metric and method, n per method, settings), a
qualitative grid (truth and every method, with a zoomed inset), error maps, PSNR against seconds
per image (log x) with the Pareto front, and per-image PSNR box plots. Methods evaluated on
fewer images than requested, or than the others, are flagged.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from deftmed.display import as_display

from deftmed.errors import ConfigError
from deftmed.fileio import atomic_path

#: (column, label, decimals) of the summary table
TABLE_METRICS = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("psnr_image", "PSNR img-range (dB)", 2),
                 ("ssim_image", "SSIM img-range", 4), ("data_misfit", "misfit", 4),
                 ("seconds", "s / image", 3), ("nfe", "NFE", 0), ("peak_memory_mb", "peak MiB", 0),
                 ("psnr_hu", "PSNR HU (dB)", 2), ("ssim_hu", "SSIM HU", 4),
                 ("psnr_soft", "PSNR soft tissue (dB)", 2), ("mae_body_hu", "MAE body (HU)", 1))
WITH_CI = ("psnr", "ssim", "psnr_image", "ssim_image", "psnr_hu", "ssim_hu", "psnr_soft",
           "mae_body_hu")


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _zoom_box(shape) -> tuple[int, int, int, int]:
    """A fixed zoom window (rows, cols) in the image centre: a quarter of each side."""
    h, w = shape
    zh, zw = max(h // 4, 4), max(w // 4, 4)
    r0, c0 = h // 2 - zh // 2, w // 2 - zw // 2
    return r0, r0 + zh, c0, c0 + zw


def qualitative_grid(truth: dict, recons: dict[str, dict], methods: list[str],
                     rows: int = 4) -> bytes | None:
    """Truth and each method (columns) for the first saved images (rows), with a zoomed inset
    of the image centre and the PSNR (fixed range) of each reconstruction."""
    from deftmed.evaluation.metrics import psnr

    plt = _plt()
    if truth is None or not methods:
        return None
    idx = [int(i) for i in truth["index"][:rows]]
    cols = ["truth"] + methods
    fig, axes = plt.subplots(len(idx), len(cols), figsize=(1.9 * len(cols), 1.9 * len(idx)),
                             squeeze=False)
    for r, i in enumerate(idx):
        gt_chw = truth["image"][r]
        gt = as_display(gt_chw)
        r0, r1, c0, c1 = _zoom_box(gt.shape[:2])
        for c, name in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if name == "truth":
                img, label = gt, f"#{i}"
            else:
                rec = recons.get(name)
                pos = np.nonzero(rec["index"] == i)[0] if rec is not None else []
                if len(pos) == 0:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center")
                    continue
                img = as_display(rec["image"][pos[0]])
                label = f"{float(psnr(rec['image'][pos[0]][None], gt_chw[None])[0]):.2f} dB"
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.add_patch(plt.Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False,
                                       edgecolor="yellow", linewidth=0.8))
            inset = ax.inset_axes([0.6, 0.6, 0.4, 0.4])
            inset.imshow(img[r0:r1, c0:c1], cmap="gray", vmin=0.0, vmax=1.0,
                         interpolation="nearest")
            inset.set_xticks([])
            inset.set_yticks([])
            for s in inset.spines.values():
                s.set_edgecolor("yellow")
            ax.set_xlabel(label, fontsize=7)
            if r == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def error_maps(truth: dict, recons: dict[str, dict], methods: list[str], rows: int = 4) -> bytes | None:
    """|reconstruction - truth| per method, one shared colour scale."""
    plt = _plt()
    if truth is None or not methods:
        return None
    idx = [int(i) for i in truth["index"][:rows]]
    errs = {}
    for m in methods:
        rec = recons.get(m)
        for r, i in enumerate(idx):
            pos = np.nonzero(rec["index"] == i)[0] if rec is not None else []
            if len(pos):
                errs[(m, r)] = np.abs(rec["image"][pos[0]] - truth["image"][r]).mean(axis=0)
    if not errs:
        return None
    vmax = float(np.percentile(np.concatenate([e.ravel() for e in errs.values()]), 99.5)) or 1e-6
    fig, axes = plt.subplots(len(idx), len(methods), figsize=(1.9 * len(methods) + 0.6,
                                                              1.9 * len(idx)), squeeze=False)
    im = None
    for r in range(len(idx)):
        for c, m in enumerate(methods):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if (m, r) in errs:
                im = ax.imshow(errs[(m, r)], cmap="inferno", vmin=0, vmax=vmax,
                               interpolation="nearest")
            if r == 0:
                ax.set_title(m, fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="|x - truth|")
    return _png(fig)


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points not dominated in (lower seconds, higher PSNR), by seconds."""
    pts = sorted((p for p in points if np.isfinite(p[1]) and np.isfinite(p[2])),
                 key=lambda p: (p[1], -p[2]))
    front, best = [], -np.inf
    for name, sec, ps in pts:
        if ps > best:
            front.append(name)
            best = ps
    return front


def psnr_time_scatter(summary: dict) -> bytes | None:
    """Mean PSNR (with its 95 % interval) against mean seconds per image (log x), Pareto
    front drawn as a step line."""
    plt = _plt()
    pts = []
    for m, e in summary["methods"].items():
        ps, sec = e["metrics"]["psnr"], e["metrics"]["seconds"]
        if ps["mean"] is not None and sec["mean"] is not None:
            pts.append((m, max(float(sec["mean"]), 1e-6), float(ps["mean"]), ps["ci95"]))
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m, sec, ps, ci in pts:
        lo, hi = (ci[0] if ci[0] is not None else ps), (ci[1] if ci[1] is not None else ps)
        ax.errorbar([sec], [ps], yerr=[[ps - lo], [hi - ps]], fmt="o", capsize=3, label=m)
        ax.annotate(m, (sec, ps), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = pareto_front([(m, s, p) for m, s, p, _ in pts])
    fp = sorted([(s, p) for m, s, p, _ in pts if m in front])
    if fp:
        xs, ys = zip(*fp)
        ax.step(xs, ys, where="post", color="k", linestyle="--", linewidth=1,
                label="Pareto front")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("seconds per image (log)")
    ax.set_ylabel("PSNR (dB, fixed range)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def psnr_boxplot(rows: list[dict], methods: list[str]) -> bytes | None:
    """Per-image PSNR (fixed range) distribution per method."""
    plt = _plt()
    data = [[float(r["psnr"]) for r in rows if r["method"] == m and np.isfinite(float(r["psnr"]))]
            for m in methods]
    if not any(data):
        return None
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(methods) + 1.5), 3.6))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(methods) + 1))
    ax.set_xticklabels([f"{m}\n(n={len(d)})" for m, d in zip(methods, data)], fontsize=8)
    ax.set_ylabel("PSNR per image (dB)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------------------------
# tables and text
# --------------------------------------------------------------------------------------------
def _num(v, dec: int) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{float(v):.{dec}f}"


def _cell(stats: dict, dec: int, with_ci: bool = True) -> str:
    if stats.get("mean") is None:
        return "n/a"
    s = f"{_num(stats['mean'], dec)} ± {_num(stats['std'], dec)}"
    if with_ci:
        s += f" [{_num(stats['ci95'][0], dec)}, {_num(stats['ci95'][1], dec)}]"
    return s


def flags(summary: dict) -> list[str]:
    """Warnings about unequal or incomplete comparisons."""
    out = []
    n_req = summary.get("n_requested") or 0
    ns = {m: e["n"] for m, e in summary["methods"].items()}
    for m, e in summary["methods"].items():
        if e["n"] < n_req:
            out.append(f"{m} has {e['n']} of the {n_req} requested images (run not finished?)")
        bad = e["metrics"]["psnr"].get("n_nonfinite", 0)
        if bad:
            out.append(f"{m}: {bad} image(s) with a non-finite PSNR are left out of its statistics")
    if ns and len(set(ns.values())) > 1:
        out.append(f"methods were evaluated on different numbers of images ({ns}); "
                   f"'PSNR (common)' compares them on the {summary.get('n_common')} images all "
                   "of them finished")
    return out


def _rows_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    cols = [c for c in TABLE_METRICS
            if any(c[0] in e["metrics"] for e in summary["methods"].values())]
    head = ["method", "n"] + [lab for _, lab, _ in cols] + ["PSNR (common)"]
    body = []
    for m, e in summary["methods"].items():
        row = [m, str(e["n"])]
        for key, _, dec in cols:
            row.append(_cell(e["metrics"].get(key, {}), dec, with_ci=key in WITH_CI))
        row.append(_num(e.get("psnr_common"), 2))
        body.append(row)
    return head, body


def _md_table(head, body) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _html_table(head, body) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="summary"><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>'


def method_description(name: str) -> str:
    """The registry's one-line description of a method ('' when unknown)."""
    try:
        from deftmed.methods.registry import METHODS
    except ImportError:  # pragma: no cover
        return ""
    return str(getattr(METHODS.get(name), "description", ""))


def _settings_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    head = ["method", "description", "settings", "settings from", "memory measure"]
    body = [[m, method_description(m), json.dumps(e.get("settings"), sort_keys=True, default=str),
             str(e.get("settings_source")), str(e.get("memory_kind"))]
            for m, e in summary["methods"].items()]
    return head, body


MEMORY_NOTE = ("Peak memory: on a GPU, torch.cuda.max_memory_allocated, reset before each method "
               "(cuda_max_allocated); on a CPU, the process's peak resident set size from "
               "getrusage (process_peak_rss), which never decreases during a run and so is an "
               "upper bound for the methods run later. Seconds: wall time per image, batch time "
               "divided by the batch size. NFE: network evaluations per image.")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em}
th,td{border:1px solid #bbb;padding:0.3em 0.5em;text-align:left;vertical-align:top}
th{background:#eee} pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.85em}
.flag{background:#fff3cd;border:1px solid #e0c060;padding:0.5em 0.8em;margin:0.5em 0}
img{max-width:100%}
"""


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
def write_report(out_dir, html_out=None, md_out=None) -> dict:
    """Write ``report.md`` (+ ``figures/*.png``) and a self-contained ``report.html`` for a
    results folder (``summary.json`` is (re)made first when missing or older than the rows).
    Returns ``{"markdown", "html", "figures"}`` paths."""
    from deftmed.evaluation.runner import SUMMARY_JSON, load_recons, read_rows, summarise

    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ConfigError(f"results folder {out_dir} does not exist")
    spath = out_dir / SUMMARY_JSON
    csvs = list(out_dir.glob("per_image*.csv"))
    stale = not spath.is_file() or any(f.stat().st_mtime > spath.stat().st_mtime for f in csvs)
    # a run killed before its summary, or rows added since: summarise again (cheap)
    summary = summarise(out_dir) if stale else json.loads(spath.read_text())
    if not summary.get("methods"):
        raise ConfigError(f"{out_dir} has no finished rows to report on")
    methods = list(summary["methods"])
    rows = read_rows(out_dir)
    truth, recons = load_recons(out_dir)

    figures = [
        ("qualitative", "Qualitative comparison (first test images; inset: zoom on the yellow "
                        "box; label: PSNR, fixed range)", qualitative_grid(truth, recons, methods)),
        ("error_maps", "Absolute error maps |x - truth| (shared colour scale)",
         error_maps(truth, recons, methods)),
        ("psnr_vs_time", "Mean PSNR (95 % interval) against seconds per image, with the Pareto "
                         "front (no other method is both faster and better)",
         psnr_time_scatter(summary)),
        ("psnr_boxplot", "Per-image PSNR (fixed range) per method", psnr_boxplot(rows, methods)),
    ]
    figures = [(k, cap, png) for k, cap, png in figures if png is not None]
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    for key, _, png in figures:
        with atomic_path(fig_dir / f"{key}.png") as tmp:
            tmp.write_bytes(png)

    proto = summary["protocol"]
    prov = summary.get("provenance") or {}
    warn = flags(summary)
    head, body = _rows_table(summary)
    shead, sbody = _settings_rows(summary)
    front = pareto_front([(m, e["metrics"]["seconds"]["mean"] or np.nan,
                           e["metrics"]["psnr"]["mean"] or np.nan)
                          for m, e in summary["methods"].items()])
    meta_lines = [
        f"protocol: {proto.get('name')} (hash {proto.get('hash')})",
        f"deftmed {prov.get('deftmed_version')}, git commit {prov.get('git_commit') or 'unknown'}",
        f"device: {summary.get('device')}; processes: {summary.get('world_size')}",
        f"seeds: {json.dumps(summary.get('seeds'), sort_keys=True)}",
        f"images requested: {summary.get('n_requested')}; finished by every method: "
        f"{summary.get('n_common')}",
        f"summary written: {summary.get('date')}",
    ]
    ci_note = (f"Table cells: mean ± standard deviation over images [95 % interval of the mean: "
               f"{summary.get('ci_method')}]. Pareto front (time vs PSNR): {', '.join(front)}. "
               + MEMORY_NOTE)
    conventions = summary.get("metric_conventions") or ""

    # --- markdown ---
    md = [f"# Benchmark report: {proto.get('name')}", "", proto.get("description") or "", ""]
    md += [f"- {line}" for line in meta_lines] + [""]
    if warn:
        md += ["**Comparison caveats**", ""] + [f"- ⚠ {w}" for w in warn] + [""]
    md += ["## Summary", "", ci_note, "", _md_table(head, body), "",
           "## Settings", "", _md_table(shead, sbody), "",
           "## Metric conventions", "", "```", conventions.rstrip(), "```", ""]
    md += ["## Figures", ""]
    for key, cap, _ in figures:
        md += [f"### {cap}", "", f"![{key}](figures/{key}.png)", ""]
    md_path = Path(md_out) if md_out else out_dir / "report.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md), encoding="utf-8")

    # --- html ---
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>deftmed benchmark: {esc(str(proto.get('name')))}</title>",
             f"<style>{CSS}</style></head><body>",
             f"<h1>Benchmark report: {esc(str(proto.get('name')))}</h1>",
             f"<p>{esc(proto.get('description') or '')}</p>",
             "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in meta_lines) + "</ul>"]
    for w in warn:
        parts.append(f'<div class="flag">&#9888; {esc(w)}</div>')
    parts += ["<h2>Summary</h2>", f"<p>{esc(ci_note)}</p>", _html_table(head, body),
              "<h2>Settings</h2>", _html_table(shead, sbody),
              "<h2>Metric conventions</h2>", f"<pre>{esc(conventions)}</pre>", "<h2>Figures</h2>"]
    for key, cap, png in figures:
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure id="{key}"><img alt="{esc(key)}" src="data:image/png;base64,{b64}">'
                     f"<figcaption>{esc(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    html_path = Path(html_out) if html_out else out_dir / "report.html"
    with atomic_path(html_path) as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")
    return {"markdown": md_path, "html": html_path, "figures": [fig_dir / f"{k}.png"
                                                               for k, _, _ in figures]}


__all__ = ["write_report", "pareto_front", "flags", "qualitative_grid", "error_maps",
           "psnr_time_scatter", "psnr_boxplot"]
