"""The benchmark runner: every method of a protocol on its first ``n`` test images.

``run_benchmark`` reconstructs the test images of a :class:`~deftmed.evaluation.protocol.Protocol`
with each requested method, batch by batch, and appends one row per (method, image index) to
``per_image.csv`` in the output folder. The file is flushed (and fsync'ed) after every batch, so
a run killed at any point loses at most the batch in progress; restarting the same command
skips the (method, index) pairs already present and never writes a pair twice.

Under ``torchrun`` rank ``r`` of ``W`` takes the image indices ``i`` with ``i % W == r``, appends
its rows to ``per_image.rank{r}.csv``, and rank 0 merges everything into ``per_image.csv`` after
a barrier. Measurements are simulated per image index by the protocol, so image ``i`` sees the
same sinogram whatever the batch size, process count or resume point; sampling noise of the
stochastic methods is seeded per batch from ``(seeds.sampling, first index of the batch)``.

Output folder layout (``results/<protocol>/`` by default)::

    run.json              protocol (name, hash, description), provenance, device, seeds, and per
                          method the settings used and where they came from (tuned file/default)
    per_image.csv         one row per (method, index); columns: CSV_COLUMNS
    recon_<method>.npz    the first ``keep`` reconstructions: image (k,1,H,W), index (k,),
                          std (k,1,H,W) when the method gives one, meta (JSON string)
    truth.npz             the matching ground truth images (image, index, meta)
    summary.json          :func:`summarise`: mean, std, 95 % Student-t interval per metric
    recon/                per-image intermediates of the recon files (kept for resuming)

Library code never prints; progress bars go through tqdm and are off unless asked for.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from deftmed.errors import ConfigError
from deftmed.fileio import atomic_path

log = logging.getLogger(__name__)

#: per-image metrics, in the order of the CSV and of summary.json
METRIC_COLUMNS = ("psnr", "ssim", "psnr_image", "ssim_image", "data_misfit", "seconds", "nfe",
                  "peak_memory_mb", "psnr_hu", "ssim_hu", "psnr_soft", "mae_body_hu")
#: columns filled only under protocols that declare them (``metrics.hu``); empty otherwise
OPTIONAL_METRICS = ("psnr_hu", "ssim_hu", "psnr_soft", "mae_body_hu")
#: every column of per_image.csv (provenance is repeated on each row so that a row read on its
#: own still says what produced it)
CSV_COLUMNS = ("method", "index") + METRIC_COLUMNS + (
    "memory_kind", "batch_size", "rank", "settings_id", "sampling_seed", "noise_seed", "protocol",
    "protocol_hash", "deftmed_version", "git_commit", "device")
#: methods that need the protocol's diffusion prior (``weights.prior``)
DIFFUSION_METHODS = frozenset({"dps", "reddiff", "dds", "deft"})
CI_METHOD = "Student t, two-sided 95 % interval of the mean over images (mean +- t_{0.975,n-1} s/sqrt(n))"
PER_IMAGE = "per_image.csv"
RUN_JSON = "run.json"
SUMMARY_JSON = "summary.json"


# --------------------------------------------------------------------------------------------
# methods: how the runner and the tuner learn about them
# --------------------------------------------------------------------------------------------
class MethodFactory:
    """The methods the runner may use; the default wraps :mod:`deftmed.methods.registry`.

    Tests (and users with their own methods) pass a subclass to :func:`run_benchmark` and
    :func:`~deftmed.evaluation.tuning.tune`.
    """

    def names(self) -> list[str]:
        return list(_registry().METHODS)

    def default_settings(self, name: str) -> dict:
        return dict(_registry().default_settings(name))

    def search_space(self, name: str) -> dict:
        return dict(_registry().search_space(name))

    def needs_prior(self, name: str) -> bool:
        info = _registry().METHODS.get(name)
        return bool(getattr(info, "needs_prior", name in DIFFUSION_METHODS))

    def needs_deft(self, name: str) -> bool:
        info = _registry().METHODS.get(name)
        return bool(getattr(info, "needs_deft", name == "deft"))

    def build(self, name: str, settings: dict, protocol, device):
        """A ready :class:`~deftmed.methods.base.Reconstructor` (the protocol's ``weights``
        give the prior and the DEFT h-transform of the diffusion methods)."""
        prior = self._prior(protocol, device) if self.needs_prior(name) else None
        deft_model = self._deft(protocol, device) if self.needs_deft(name) else None
        return _registry().build_method(name, settings, prior=prior, deft_model=deft_model)

    def preflight(self, name: str, protocol) -> None:
        """Cheap checks before any work (e.g. that the needed weights exist)."""
        from deftmed.shipped import resolve_checkpoint

        if self.needs_prior(name):
            resolve_checkpoint(self._weights(protocol, "prior"))
        if self.needs_deft(name):
            resolve_checkpoint(self._weights(protocol, "deft"))

    # cached weights: the guidance methods share one prior
    _cache: dict = {}

    def _weights(self, protocol, key: str) -> str:
        name = (protocol.weights or {}).get(key)
        if not name:
            raise ConfigError(f"protocol {protocol.name} names no '{key}' weights (add "
                              f"'weights: {{{key}: ...}}' to it); needed by the diffusion methods")
        return name

    def _prior(self, protocol, device):
        from deftmed.shipped import load_prior

        key = ("prior", self._weights(protocol, "prior"), str(device))
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = load_prior(key[1], device)
        return self._cache[key]

    def _deft(self, protocol, device):
        from deftmed.deft.model import DeftModel
        from deftmed.shipped import resolve_checkpoint

        return DeftModel.load(resolve_checkpoint(self._weights(protocol, "deft")), device)


def _registry():
    try:
        from deftmed.methods import registry
    except ModuleNotFoundError as exc:  # pragma: no cover - during development only
        if exc.name == "deftmed.methods.registry":
            raise ConfigError("deftmed.methods.registry is not installed; cannot build methods")
        raise
    return registry


def check_methods(methods: Iterable[str], factory: MethodFactory) -> list[str]:
    """Validate a method list (unknown names, duplicates) with a clear error."""
    methods = [m.strip() for m in methods if m and m.strip()]
    if not methods:
        raise ConfigError("no methods given; choose from " + ", ".join(factory.names()))
    known = factory.names()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known methods: {', '.join(known)}")
    dup = sorted({m for m in methods if methods.count(m) > 1})
    if dup:
        raise ConfigError(f"method(s) {dup} given more than once")
    return methods


def settings_id(settings: dict) -> str:
    """A short stable hash of a settings mapping (rows of different settings never mix)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_settings(protocol, method: str, factory: MethodFactory, tuned_dir=None,
                     override: dict | None = None) -> tuple[dict, str]:
    """``(settings, source)`` for a method: the tuned file when there is one, else the
    method's defaults; ``override`` (a mapping) is applied last. ``source`` says which:
    ``"tuned:<path>"``, ``"default"``, with ``"+override"`` appended when overridden."""
    from deftmed.evaluation.tuning import load_tuned, tuned_path

    defaults = factory.default_settings(method)
    tuned = load_tuned(protocol, method, tuned_dir=tuned_dir, defaults=defaults)
    if tuned is not None:
        settings = {**defaults, **tuned["settings"]}
        source = f"tuned:{tuned_path(protocol, method, tuned_dir)}"
    else:
        settings, source = dict(defaults), "default"
    if override:
        unknown = sorted(set(override) - set(defaults)) if defaults else []
        if unknown:
            raise ConfigError(f"settings override for {method}: unknown key(s) {unknown}; "
                              f"{method} takes {sorted(defaults)}")
        settings.update(override)
        source += "+override"
    return settings, source


# --------------------------------------------------------------------------------------------
# per-image CSV: robust reading, atomic rewriting, appending
# --------------------------------------------------------------------------------------------
def _parse_rows(path: Path) -> list[dict]:
    """Rows of a per-image CSV, dropping a torn last line (a kill mid-write) and malformed
    rows; an absent file has no rows."""
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last line was cut: drop it
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        return []
    missing = [c for c in ("method", "index") if c not in reader.fieldnames]
    if missing:
        raise ConfigError(f"{path} is not a deftmed per-image CSV (no column(s) {missing})")
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            continue  # wrong field count: a torn or foreign line
        try:
            row["index"] = int(row["index"])
        except (TypeError, ValueError):
            continue
        rows.append(row)
    return rows


def discard_method(out_dir, method: str) -> int:
    """Delete every row and saved reconstruction of ``method`` from a results folder (e.g. after
    re-tuning it, so the runner recomputes it); returns the number of rows removed."""
    out_dir = Path(out_dir)
    rows = read_rows(out_dir)
    keep = [r for r in rows if r["method"] != method]
    if len(keep) != len(rows) or (out_dir / PER_IMAGE).is_file():
        _write_csv(out_dir / PER_IMAGE, keep)
    for f in sorted(out_dir.glob("per_image.rank*.csv")):
        f.unlink()
    for f in list((out_dir / "recon").glob(f"{method}_*.npy")) + [out_dir / f"recon_{method}.npz"]:
        f.unlink(missing_ok=True)
    return len(rows) - len(keep)


def read_rows(out_dir) -> list[dict]:
    """All finished rows of a results folder (merged file and any rank files), without
    duplicate (method, index) pairs (the first occurrence wins)."""
    out_dir = Path(out_dir)
    files = [out_dir / PER_IMAGE] + sorted(out_dir.glob("per_image.rank*.csv"))
    seen, rows = set(), []
    for f in files:
        for row in _parse_rows(f):
            key = (row["method"], row["index"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())


class _RowWriter:
    """Append-only CSV writer: the file is cleaned (torn line removed) once at start, then
    rows are appended and fsync'ed batch by batch."""

    def __init__(self, path: Path):
        self.path = path
        rows = _parse_rows(path)
        _write_csv(path, rows)  # rewrite cleanly (drops a torn line left by a kill)
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")

    def write(self, rows: list[dict]) -> None:
        # one write call per batch: a kill leaves whole rows or one torn (dropped) line
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
        for row in rows:
            w.writerow(row)
        self.fh.write(buf.getvalue())
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def merge_rows(out_dir, methods_order: list[str] | None = None) -> list[dict]:
    """Merge ``per_image.csv`` and the rank files into ``per_image.csv`` (sorted by method
    order, then index; no duplicates), then remove the rank files."""
    out_dir = Path(out_dir)
    rows = read_rows(out_dir)
    order = {m: i for i, m in enumerate(methods_order or [])}
    rows.sort(key=lambda r: (order.get(r["method"], len(order)), r["method"], r["index"]))
    _write_csv(out_dir / PER_IMAGE, rows)
    for f in sorted(out_dir.glob("per_image.rank*.csv")):
        f.unlink()
    return rows


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory so far: CUDA ``max_memory_allocated`` on a GPU (reset per method), else the
    process's peak resident set size (``getrusage``; a whole-process, never-decreasing upper
    bound)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return float("nan"), "unavailable"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2 ** 20 if sys.platform == "darwin" else 2 ** 10  # bytes on macOS, KiB on Linux
    return rss / scale, "process_peak_rss"


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform
    return f"cpu ({platform.processor() or platform.machine()})"


def _write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)


@dataclass
class BenchmarkResult:
    out_dir: Path
    rows_written: int = 0
    rows_skipped: int = 0
    per_method: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------
def run_benchmark(protocol, methods: list[str], n: int | None, out_dir, device=None, dist=None,
                  batch_size: int = 8, progress: bool = False,
                  settings_override: dict | None = None, *, factory: MethodFactory | None = None,
                  tuned_dir=None, keep: int = 4, sampling_seed: int | None = None,
                  summarise_results: bool = True, replace: Sequence[str] = (),
                  on_batch: Callable[[str, list[int]], None] | None = None) -> BenchmarkResult:
    """Run ``methods`` on the first ``n`` test images of ``protocol``; see the module notes.

    Args:
        protocol: a :class:`Protocol` or its name/path.
        methods: method names (checked against the factory's list).
        n: number of test images (default and maximum: ``splits.test``).
        out_dir: results folder (created); a folder with earlier rows is resumed.
        device: torch device (default: :func:`~deftmed.distributed.pick_device`).
        dist: :class:`~deftmed.distributed.DistInfo` (default: single process).
        settings_override: ``{method: {key: value}}`` applied over the tuned/default settings.
        factory: where methods come from (default: the method registry).
        tuned_dir: folder of tuned files (default ``protocols/tuned/<protocol>/`` beside the
            protocol file).
        keep: how many of the first test images have their reconstructions saved for figures.
        sampling_seed: overrides ``seeds.sampling`` of the protocol (recorded).
        summarise_results: write ``summary.json`` at the end (main process).
        replace: methods whose earlier rows in ``out_dir`` are discarded first (they are
            recomputed, e.g. with a new tuned file) instead of refusing the mixed settings.
        on_batch: called as ``on_batch(method, indices)`` after each batch's rows are written
            (tests use it to simulate a kill).
    """
    from tqdm.auto import tqdm

    from deftmed.checkpoint import provenance
    from deftmed.distributed import DistInfo, barrier, pick_device
    from deftmed.evaluation.metrics import data_misfit, hu_metrics, psnr, ssim
    from deftmed.evaluation.protocol import Protocol

    if not isinstance(protocol, Protocol):
        protocol = Protocol.load(protocol)
    factory = factory or MethodFactory()
    methods = check_methods(methods, factory)
    device = torch.device(device) if device is not None else pick_device()
    dist = dist or DistInfo()
    n_test = int(protocol.splits["test"])
    n = n_test if n is None else int(n)
    if not 1 <= n <= n_test:
        raise ConfigError(f"--n must be between 1 and the protocol's {n_test} test images, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir)

    phash = protocol.hash()
    hu = protocol.hu_metric_settings()
    prov = provenance()
    seed = int(protocol.seeds.get("sampling", 0) if sampling_seed is None else sampling_seed)
    noise_seed = int(protocol.seeds["noise"])
    dev_name = _device_name(device)

    # settings of every method, resolved before any work (errors surface early)
    resolved = {}
    for m in methods:
        s, src = resolve_settings(protocol, m, factory, tuned_dir,
                                  (settings_override or {}).get(m))
        resolved[m] = {"settings": s, "settings_source": src, "settings_id": settings_id(s)}
        factory.preflight(m, protocol)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recon").mkdir(exist_ok=True)

    # resume: what is done, and is it compatible with this run?
    if dist.is_main:
        for m in check_methods(list(replace), factory) if replace else ():
            discard_method(out_dir, m)
    barrier(dist)
    existing = read_rows(out_dir)
    done: dict[str, set[int]] = {}
    for row in existing:
        m = row["method"]
        if row.get("protocol_hash") != phash:
            raise ConfigError(f"{out_dir} holds results of protocol hash {row.get('protocol_hash')}"
                              f", not {phash} ({protocol.name}); use another --out folder")
        if m in resolved:
            if row.get("settings_id") != resolved[m]["settings_id"]:
                raise ConfigError(
                    f"{out_dir} holds {m} rows made with other settings (id "
                    f"{row.get('settings_id')} vs {resolved[m]['settings_id']} now, e.g. a new "
                    f"tuned file); use another --out folder or delete those rows")
            if str(row.get("sampling_seed")) != str(seed):
                raise ConfigError(f"{out_dir} holds {m} rows made with sampling seed "
                                  f"{row.get('sampling_seed')}, not {seed}; use another --out")
        done.setdefault(m, set()).add(row["index"])

    # run.json (main process): merged with an earlier run's record
    if dist.is_main:
        run_path = out_dir / RUN_JSON
        old = json.loads(run_path.read_text()) if run_path.is_file() else {}
        record = {
            "protocol": {"name": protocol.name, "hash": phash,
                         "description": protocol.description,
                         "source": str(protocol.source) if protocol.source else None,
                         "canonical": protocol.canonical()},
            "provenance": prov, "device": dev_name, "world_size": dist.world_size,
            "seeds": {**protocol.seeds, "sampling": seed},
            "n": max(n, int(old.get("n", 0))), "batch_size": batch_size, "keep": keep,
            "methods": {**old.get("methods", {}), **resolved},
            "method_order": list(dict.fromkeys(old.get("method_order", []) + methods)),
            "created": old.get("created", _now()), "updated": _now(),
        }
        _write_json(run_path, record)

    op, sim_op = protocol.operators(device)
    source = protocol.images("test")
    noise = protocol.noise()
    my_indices = [i for i in range(n) if i % dist.world_size == dist.rank]
    csv_path = out_dir / (f"per_image.rank{dist.rank}.csv" if dist.enabled else PER_IMAGE)
    writer = _RowWriter(csv_path)
    result = BenchmarkResult(out_dir)
    base_row = {"protocol": protocol.name, "protocol_hash": phash,
                "deftmed_version": prov.get("deftmed_version"),
                "git_commit": prov.get("git_commit") or "", "device": dev_name,
                "sampling_seed": seed, "noise_seed": noise_seed, "rank": dist.rank,
                "batch_size": batch_size}
    try:
        for m in methods:
            todo = [i for i in my_indices if i not in done.get(m, set())]
            result.rows_skipped += len(my_indices) - len(todo)
            result.per_method[m] = {"done_before": len(my_indices) - len(todo), "new": 0}
            if not todo:
                continue
            method = factory.build(m, resolved[m]["settings"], protocol, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            batches = [todo[k:k + batch_size] for k in range(0, len(todo), batch_size)]
            bar = tqdm(total=len(todo), disable=not progress, unit="img",
                       desc=f"{m}" + (f" [rank {dist.rank}]" if dist.enabled else ""),
                       position=dist.rank if dist.enabled else None, leave=True)
            for idx in batches:
                x, y, op_b = protocol.measure("test", idx, op, sim_op, source, noise, device)
                gen_device = device if device.type == "cuda" else "cpu"
                gen = torch.Generator(gen_device).manual_seed(seed * 1_000_003 + idx[0])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                rec = method.reconstruct(y, op_b, noise, gen)  # methods manage autograd themselves
                if device.type == "cuda":  # kernels are asynchronous: time to completion
                    torch.cuda.synchronize(device)
                    rec.seconds = (time.perf_counter() - start) / len(idx)
                img = rec.image.detach()
                if not bool(torch.isfinite(img).all()):
                    log.warning("%s produced non-finite pixels for images %s", m, idx)
                with torch.no_grad():
                    ax = op_b(img.to(y.dtype))
                xs, gts = img.cpu().double().numpy(), x.cpu().double().numpy()
                metrics = {
                    "psnr": psnr(xs, gts, float(protocol.metrics["data_range"])),
                    "ssim": ssim(xs, gts, float(protocol.metrics["data_range"])),
                    "psnr_image": psnr(xs, gts, "image"),
                    "ssim_image": ssim(xs, gts, "image"),
                    "data_misfit": data_misfit(ax, y),
                }
                if hu is not None:
                    metrics.update(hu_metrics(xs, gts, hu[0], **hu[1]))
                mem, mem_kind = peak_memory_mb(device)
                # figures: the first `keep` images, saved before their rows are written
                for k, i in enumerate(idx):
                    if i < keep:
                        _save_npy(out_dir / "recon" / f"{m}_{i}.npy", xs[k].astype(np.float32))
                        if rec.std is not None:
                            _save_npy(out_dir / "recon" / f"{m}_{i}.std.npy",
                                      rec.std[k].detach().cpu().numpy().astype(np.float32))
                        truth = out_dir / "recon" / f"truth_{i}.npy"
                        if not truth.is_file():
                            _save_npy(truth, gts[k].astype(np.float32))
                rows = []
                for k, i in enumerate(idx):
                    row = dict(base_row, method=m, index=i, seconds=_fmt(rec.seconds),
                               nfe=int(rec.nfe), peak_memory_mb=_fmt(round(mem, 2)),
                               memory_kind=mem_kind, settings_id=resolved[m]["settings_id"])
                    row.update({key: _fmt(val[k]) for key, val in metrics.items()})
                    rows.append(row)
                writer.write(rows)
                result.rows_written += len(rows)
                result.per_method[m]["new"] += len(rows)
                bar.update(len(idx))
                if on_batch is not None:
                    on_batch(m, list(idx))
            bar.close()
    finally:
        writer.close()

    barrier(dist)
    if dist.is_main:
        order = json.loads((out_dir / RUN_JSON).read_text()).get("method_order", methods)
        merge_rows(out_dir, order)
        _collect_recons(out_dir, order, protocol, prov, dev_name, seed)
        if summarise_results:
            summarise(out_dir)
    barrier(dist)
    return result


def _collect_recons(out_dir: Path, methods: list[str], protocol, prov, device, seed) -> None:
    """Gather the per-image figure intermediates into ``recon_<method>.npz`` and
    ``truth.npz`` (with a JSON ``meta`` entry recording provenance)."""
    rdir = out_dir / "recon"
    meta = json.dumps({"protocol": protocol.name, "protocol_hash": protocol.hash(), **prov,
                       "device": device, "seeds": {**protocol.seeds, "sampling": seed}},
                      default=str)

    def indices(prefix):
        out = []
        for f in rdir.glob(f"{prefix}_*.npy"):
            tail = f.name[len(prefix) + 1:-4]
            if tail.isdigit():
                out.append(int(tail))
        return sorted(out)

    def save(path, prefix, with_std=False):
        idx = indices(prefix)
        if not idx:
            return
        arrays = {"image": np.stack([np.load(rdir / f"{prefix}_{i}.npy") for i in idx]),
                  "index": np.asarray(idx, dtype=np.int64), "meta": np.asarray(meta)}
        if with_std and all((rdir / f"{prefix}_{i}.std.npy").is_file() for i in idx):
            arrays["std"] = np.stack([np.load(rdir / f"{prefix}_{i}.std.npy") for i in idx])
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    save(out_dir / "truth.npz", "truth")
    for m in methods:
        save(out_dir / f"recon_{m}.npz", m, with_std=True)


def load_recons(out_dir) -> tuple[dict | None, dict[str, dict]]:
    """``(truth, {method: recon})`` from a results folder, each a dict of arrays (``image``,
    ``index``, optionally ``std``) plus ``meta`` (a dict)."""
    out_dir = Path(out_dir)

    def load(path):
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        d["meta"] = json.loads(str(d["meta"])) if "meta" in d else {}
        return d

    truth = load(out_dir / "truth.npz") if (out_dir / "truth.npz").is_file() else None
    recons = {}
    for f in sorted(out_dir.glob("recon_*.npz")):
        recons[f.name[len("recon_"):-4]] = load(f)
    return truth, recons


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
def describe(values) -> dict:
    """mean, std (n-1), 95 % Student-t interval of the mean, median, min, max, n (finite
    values only; ``n_nonfinite`` counts the others)."""
    from scipy import stats

    v = np.asarray([np.nan if x in ("", None) else float(x) for x in values], dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = {"n": int(finite.size), "n_nonfinite": int(v.size - finite.size)}
    if finite.size == 0:
        return {**out, "mean": None, "std": None, "ci95": [None, None], "median": None,
                "min": None, "max": None}
    mean = float(finite.mean())
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    if finite.size > 1:
        half = float(stats.t.ppf(0.975, finite.size - 1)) * std / math.sqrt(finite.size)
        ci = [mean - half, mean + half]
    else:
        ci = [mean, mean]
    return {**out, "mean": mean, "std": std, "ci95": ci, "median": float(np.median(finite)),
            "min": float(finite.min()), "max": float(finite.max())}


def summarise(out_dir) -> dict:
    """Write ``summary.json`` for a results folder and return it.

    Keys: ``protocol`` {name, hash, description}, ``provenance`` {deftmed_version,
    git_commit}, ``device``, ``seeds``, ``date``, ``ci_method``, ``metric_conventions``,
    ``n_requested``, ``n_common`` (images every method finished), ``complete`` (every method
    has ``n_requested`` images), ``methods``: {name: {n, settings, settings_source,
    settings_id, memory_kind, metrics: {metric: describe()}, psnr_common (mean PSNR on the
    common images)}}, ``method_order``.
    """
    from deftmed.evaluation.metrics import METRIC_CONVENTIONS

    out_dir = Path(out_dir)
    run_path = out_dir / RUN_JSON
    if not run_path.is_file():
        raise ConfigError(f"{out_dir} is not a deftmed results folder (no {RUN_JSON})")
    run = json.loads(run_path.read_text())
    rows = read_rows(out_dir)
    order = [m for m in run.get("method_order", []) if any(r["method"] == m for r in rows)]
    order += sorted({r["method"] for r in rows} - set(order))
    by_method = {m: [r for r in rows if r["method"] == m] for m in order}
    common = set.intersection(*[{r["index"] for r in rs} for rs in by_method.values()]) \
        if by_method else set()
    methods = {}
    for m, rs in by_method.items():
        info = run.get("methods", {}).get(m, {})
        entry = {"n": len(rs), "settings": info.get("settings"),
                 "settings_source": info.get("settings_source"),
                 "settings_id": info.get("settings_id"),
                 "memory_kind": rs[0].get("memory_kind") if rs else None,
                 "metrics": {c: describe(r[c] for r in rs) for c in METRIC_COLUMNS
                             if c not in OPTIONAL_METRICS or any(r.get(c) for r in rs)}}
        entry["psnr_common"] = describe(r["psnr"] for r in rs if r["index"] in common)["mean"]
        methods[m] = entry
    n_req = int(run.get("n", 0))
    summary = {
        "protocol": {k: run["protocol"].get(k) for k in ("name", "hash", "description", "source")},
        "provenance": run.get("provenance"), "device": run.get("device"),
        "world_size": run.get("world_size"), "seeds": run.get("seeds"), "date": _now(),
        "ci_method": CI_METHOD, "metric_conventions": METRIC_CONVENTIONS,
        "primary_metric": "psnr (fixed data range "
                          f"{run['protocol'].get('canonical', {}).get('metrics', {}).get('data_range', 1.0)})",
        "n_requested": n_req, "n_common": len(common),
        "complete": bool(methods) and all(e["n"] >= n_req for e in methods.values()),
        "method_order": order, "methods": methods,
    }
    _write_json(out_dir / SUMMARY_JSON, summary)
    return summary


__all__ = ["run_benchmark", "summarise", "MethodFactory", "check_methods", "resolve_settings",
           "read_rows", "merge_rows", "load_recons", "describe", "settings_id", "CSV_COLUMNS",
           "METRIC_COLUMNS", "CI_METHOD"]
