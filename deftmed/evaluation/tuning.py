"""Hyper-parameter search on a protocol's validation split (never the test split).

``tune(protocol, method)`` evaluates candidate settings drawn from the method's
``search_space`` on the first ``n_val`` validation images, scores each by its mean PSNR (fixed
data range of the protocol, the primary metric), and writes the best to
``protocols/tuned/<protocol>/<method>.yaml`` (beside the protocol file), atomically. The
benchmark runner uses that file when it exists.

Search: ``grid`` tries every point of the Cartesian product of the search space; ``random``
tries ``budget`` distinct points drawn (seeded) from it; ``auto`` (default) is ``grid`` when
the grid fits the budget, else ``random``. The method's default settings are always evaluated
first, on top of the budget, so a tuned file is never worse than the defaults on the validation
images.

Tuned file (YAML)::

    protocol: <name>          protocol_hash: <hash>     method: <name>
    settings: {...}           # the chosen settings (complete: defaults + searched values)
    objective: {metric, split: validation, n_val, value, default_value}
    search: {kind, budget, seed, space, candidates}
    log: [{settings, psnr, ssim, psnr_image, seconds, nfe, error}, ...]   # every trial
    date, device, provenance: {deftmed_version, git_commit}
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import math
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from deftmed.errors import ConfigError, DeftmedError
from deftmed.fileio import atomic_path

log = logging.getLogger(__name__)
SEARCH_KINDS = ("auto", "grid", "random")


def tuned_dir_for(protocol, tuned_dir=None) -> Path:
    """``protocols/tuned/<protocol>/`` beside the protocol file (or ``tuned_dir`` if given)."""
    if tuned_dir is not None:
        return Path(tuned_dir)
    from deftmed.evaluation.protocol import REPO_ROOT
    base = protocol.source.parent if protocol.source else REPO_ROOT / "protocols"
    return base / "tuned" / protocol.name


def tuned_path(protocol, method: str, tuned_dir=None) -> Path:
    return tuned_dir_for(protocol, tuned_dir) / f"{method}.yaml"


def load_tuned(protocol, method: str, tuned_dir=None, defaults: dict | None = None) -> dict | None:
    """The tuned file of ``method`` for ``protocol`` as a dict, or None when there is none.

    Raises :class:`ConfigError` when the file is malformed, was tuned for another version of
    the protocol (hash mismatch) or for another method, or holds keys the method does not take
    (checked when ``defaults`` is given).
    """
    path = tuned_path(protocol, method, tuned_dir)
    if not path.is_file():
        return None
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(d, dict) or not isinstance(d.get("settings"), dict):
        raise ConfigError(f"{path}: a tuned file needs a 'settings' mapping")
    if d.get("method", method) != method:
        raise ConfigError(f"{path}: holds settings for method {d.get('method')!r}, not {method!r}")
    h = d.get("protocol_hash")
    if h is not None and h != protocol.hash():
        raise ConfigError(f"{path} was tuned for protocol {d.get('protocol')} with hash {h}, but "
                          f"{protocol.name} now hashes to {protocol.hash()}; re-run `deftmed tune "
                          f"--protocol {protocol.name} --method {method}` or delete the file")
    if defaults:
        unknown = sorted(set(d["settings"]) - set(defaults))
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {unknown} for {method}; it takes "
                              f"{sorted(defaults)}")
    return d


def candidates(space: dict, defaults: dict, budget: int | None, kind: str = "auto",
               seed: int = 0) -> tuple[list[dict], str]:
    """Candidate settings (complete: defaults first, then at most ``budget`` search points,
    no repeats) and the search kind used."""
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"search must be one of {SEARCH_KINDS}, got {kind!r}")
    for k, v in space.items():
        if not isinstance(v, (list, tuple)) or not v:
            raise ConfigError(f"search space of {k!r} must be a non-empty list, got {v!r}")
    if budget is not None and budget < 1:
        raise ConfigError(f"budget must be >= 1, got {budget}")
    keys = list(space)
    size = math.prod(len(space[k]) for k in keys) if keys else 1
    if kind == "auto":
        kind = "grid" if budget is None or size <= budget else "random"
    if kind == "grid":
        if budget is not None and size > budget:
            raise ConfigError(f"the grid has {size} points but the budget is {budget}; raise "
                              "--budget or use --search random")
        points = [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]
    else:
        rng = random.Random(seed)
        total = size
        want = min(budget or total, total)
        # draw distinct grid points by flat index (no need to enumerate a huge grid)
        flat = rng.sample(range(total), want) if total <= 10 ** 6 else \
            list(dict.fromkeys(rng.randrange(total) for _ in range(4 * want)))[:want]
        points = []
        for f in flat:
            p = {}
            for k in reversed(keys):
                f, r = divmod(f, len(space[k]))
                p[k] = space[k][r]
            points.append({k: p[k] for k in keys})
    out, seen = [], set()
    for p in [{}] + points:
        full = {**defaults, **p}
        key = repr(sorted(full.items(), key=lambda kv: kv[0]))
        if key not in seen:
            seen.add(key)
            out.append(full)
    if budget is not None:
        out = out[:budget + 1]  # the defaults come on top of the budget
    return out, kind


def _yaml_safe(obj):
    """Plain Python types for YAML (numpy scalars, tuples, paths)."""
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yaml_safe(v) for v in obj]
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def tune(protocol, method: str, budget: int | None = 20, n_val: int = 8, *, search: str = "auto",
         seed: int = 0, device=None, batch_size: int = 8, progress: bool = False,
         factory=None, tuned_dir=None, out=None, write: bool = True,
         space: dict | None = None) -> dict:
    """Search ``method``'s settings on the validation split; write and return the tuned record.

    Args:
        protocol: a :class:`Protocol` or its name/path.
        method: method name (must be known to the factory).
        budget: most search points evaluated (the defaults come on top); None: the whole grid.
        n_val: first ``n_val`` validation images are used (at most ``splits.validation``).
        search: ``auto``, ``grid`` or ``random`` (see the module notes).
        seed: seeds the random search and the sampling noise of stochastic methods.
        out: file to write (default ``protocols/tuned/<protocol>/<method>.yaml``).
        write: False to only return the record.
        space: ``{setting: [values]}`` searched instead of the method's default grid (e.g. to
            extend a grid whose best value lay on its edge).
    """
    import time

    from tqdm.auto import tqdm

    from deftmed.checkpoint import provenance
    from deftmed.distributed import pick_device
    from deftmed.evaluation.metrics import psnr, ssim
    from deftmed.evaluation.protocol import Protocol
    from deftmed.evaluation.runner import MethodFactory, check_methods, _device_name

    if not isinstance(protocol, Protocol):
        protocol = Protocol.load(protocol)
    factory = factory or MethodFactory()
    (method,) = check_methods([method], factory)
    device = torch.device(device) if device is not None else pick_device()
    n_avail = int(protocol.splits["validation"])
    if not 1 <= n_val <= n_avail:
        raise ConfigError(f"--n-val must be between 1 and the protocol's {n_avail} validation "
                          f"images, got {n_val}")
    defaults = factory.default_settings(method)
    space = dict(space) if space else factory.search_space(method)
    if any(not isinstance(v, (list, tuple)) or not v for v in space.values()):
        raise ConfigError(f"search space of {method} needs a non-empty list per setting, got "
                          f"{space}")
    unknown = sorted(set(space) - set(defaults)) if defaults else []
    if unknown:
        raise ConfigError(f"search space of {method} has key(s) {unknown} it does not take")
    cands, kind = candidates(space, defaults, budget, search, seed)
    factory.preflight(method, protocol)  # e.g. missing weights: fail before searching
    out_path = Path(out) if out is not None else tuned_path(protocol, method, tuned_dir)

    op, sim_op = protocol.operators(device)
    noise = protocol.noise()
    source = protocol.images("validation")
    chunks = [protocol.measure("validation", list(range(k, min(k + batch_size, n_val))), op,
                               sim_op, source, noise, device) for k in range(0, n_val, batch_size)]
    x = torch.cat([c[0] for c in chunks])
    data_range = float(protocol.metrics["data_range"])
    trials = []
    best = None
    for s in tqdm(cands, disable=not progress, desc=f"tune {method}", unit="trial"):
        entry = {"settings": s}
        start = time.perf_counter()
        try:
            rec_method = factory.build(method, s, protocol, device)
            images, nfe = [], 0
            for j, (_, y_k, op_k) in enumerate(chunks):
                gen_device = device if device.type == "cuda" else "cpu"
                gen = torch.Generator(gen_device).manual_seed(seed * 1_000_003 + j * batch_size)
                rec = rec_method.reconstruct(y_k, op_k, noise, gen)
                images.append(rec.image.detach().cpu().double())
                nfe = int(rec.nfe)
            img = torch.cat(images).numpy()
            gt = x.cpu().double().numpy()
            p = psnr(img, gt, data_range)
            p = np.where(np.isfinite(p), p, np.nan)
            score = float(np.mean(p)) if np.all(np.isfinite(p)) else float("-inf")
            entry.update(psnr=score, ssim=float(np.mean(ssim(img, gt, data_range))),
                         psnr_image=float(np.nanmean(psnr(img, gt, "image"))), nfe=nfe)
        except DeftmedError as exc:  # a setting the method rejects: record and move on
            score = float("-inf")
            entry.update(psnr=None, error=str(exc))
        entry["seconds"] = round(time.perf_counter() - start, 4)
        trials.append(entry)
        if math.isfinite(score) and (best is None or score > best[0]):
            best = (score, s)
        log.info("tune %s: %s -> %s", method, s, entry.get("psnr"))
    if best is None:
        raise ConfigError(f"no candidate setting of {method} gave a finite validation PSNR; "
                          "see the log of tried settings")
    record = {
        "protocol": protocol.name, "protocol_hash": protocol.hash(), "method": method,
        "settings": best[1],
        "objective": {"metric": f"mean PSNR, fixed data range {data_range}", "split": "validation",
                      "n_val": n_val, "value": best[0], "default_value": trials[0].get("psnr")},
        "search": {"kind": kind, "budget": budget, "seed": seed, "space": space,
                   "candidates": len(cands)},
        "log": trials,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": _device_name(device), "provenance": provenance(),
    }
    record = _yaml_safe(record)
    if write:
        header = (f"# Tuned settings of {method} for protocol {protocol.name} (written by "
                  f"`deftmed tune`; chosen on the validation split only).\n")
        with atomic_path(out_path) as tmp:
            tmp.write_text(header + yaml.safe_dump(record, sort_keys=False))
        record["path"] = str(out_path)
    return record


__all__ = ["tune", "load_tuned", "tuned_path", "tuned_dir_for", "candidates", "SEARCH_KINDS"]
