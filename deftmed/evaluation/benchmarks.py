"""Benchmark runner: measures the package's speed and quality claims and writes ``BENCHMARKS.md``.

Usage::

    python -m deftmed.evaluation.benchmarks [--sections physics,prior] [--out BENCHMARKS.md]
                                            [--quick] [--threads N] [--dir FOLDER]

(``make bench``, or ``make bench SECTIONS=physics`` to re-run one section.)

Design
------
* Each *section* is a function ``section(quick: bool) -> str`` returning markdown; a section that
  also writes files (figures) may accept ``out_dir`` and receives the fragments folder.
* Sections are registered in `SECTIONS` as lazily imported ``"module:function"`` strings, so other
  modules add sections without this file importing them (`register_section` does it at run
  time). A registered section whose *module* does not exist yet is skipped with a note.
* The runner writes each section's text, prefixed by its provenance (exact command, date, git
  commit, machine facts, thread counts), to ``<dir>/<section>.md`` atomically, then assembles the
  output file from **all** fragments present in ``<dir>`` in registry order (fragments of
  unregistered names follow, alphabetically). Sections can therefore be re-run one at a time and
  the assembled file stays complete; each fragment carries the date and machine it was measured
  on.
* ``<dir>`` defaults to ``benchmarks/`` next to the output file; figures are linked relative to
  the output file under that folder's name.

Timed claims live here, never in tests.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import inspect
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from deftmed.errors import ConfigError
from deftmed.fileio import atomic_path

log = logging.getLogger(__name__)

__all__ = ["SECTIONS", "register_section", "run_sections", "assemble", "machine_facts",
           "provenance_markdown", "resolve_section", "main"]

#: Section name -> ``"module:function"`` (imported lazily) or a callable. Order = report order.
SECTIONS: dict[str, str | Callable[..., str]] = {
    "physics": "deftmed.evaluation.bench_physics:section",
    "prior": "deftmed.evaluation.bench_prior:section",
    "deft": "deftmed.evaluation.bench_deft:section",
    "methods": "deftmed.evaluation.bench_methods:section",
    "natural": "deftmed.evaluation.bench_natural:section",
}

TITLES = {
    "physics": "Physics: ray transform speed and adjoint accuracy",
    "prior": "Prior: shipped `prior-ellipses64` quality and speed",
    "deft": "DEFT: fine-tuning and conditional sampling",
    "methods": "Methods: reconstruction quality and cost",
    "natural": "Natural-image tasks (the paper's ImageNet tasks at 64x64 on a CPU)",
}

_FRAGMENT_MARK = "<!-- deftmed-bench-fragment:"


class SectionMissing(Exception):
    """A registered section's module is not present (yet)."""


def register_section(name: str, target: str | Callable[..., str], title: str | None = None) -> None:
    """Add (or replace) a section: ``target`` is ``"module:function"`` or a callable."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"section name {name!r} must be alphanumeric (with - or _)")
    SECTIONS[name] = target
    if title:
        TITLES[name] = title


def resolve_section(name: str) -> Callable[..., str]:
    """The section function for ``name``; `SectionMissing` if its module does not exist;
    `ConfigError` for an unknown name."""
    if name not in SECTIONS:
        raise ConfigError(f"unknown benchmark section {name!r}; known sections: "
                          f"{', '.join(SECTIONS)}")
    target = SECTIONS[name]
    if callable(target):
        return target
    module_name, _, func_name = str(target).partition(":")
    func_name = func_name or "section"
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:  # a parent package is missing
        found = None
    if found is None:
        raise SectionMissing(f"module {module_name} does not exist yet")
    module = importlib.import_module(module_name)  # real import errors propagate
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise ConfigError(f"section {name!r}: {module_name} has no function {func_name!r}") \
            from None


# ---------------------------------------------------------------------------------- provenance
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(module: str) -> str:
    try:
        from importlib.metadata import version
        dist = {"astra": "astra-toolbox"}.get(module, module)
        return version(dist)
    except Exception:
        try:
            return str(getattr(importlib.import_module(module), "__version__", "?"))
        except Exception:
            return "not installed"


def _git(args: list[str]) -> subprocess.CompletedProcess | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None


def git_state() -> str:
    """``<commit>`` plus ``(with uncommitted changes)`` when the tracked tree differs."""
    out = _git(["rev-parse", "HEAD"])
    if out is None or out.returncode != 0 or not out.stdout.strip():
        return "unknown (not a git checkout)"
    commit = out.stdout.strip()
    diff = _git(["diff", "--quiet", "HEAD", "--"])
    if diff is not None and diff.returncode == 1:
        commit += " (with uncommitted changes)"
    return commit


def machine_facts() -> dict[str, str]:
    """What a timing depends on: CPU, cores, threads, load, library versions, GPU."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    facts = {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical, {usable} usable by this process",
        "torch threads": f"{torch.get_num_threads()} (OMP_NUM_THREADS="
                         f"{os.environ.get('OMP_NUM_THREADS', 'unset')})",
    }
    try:
        load = os.getloadavg()
        facts["load average at start"] = f"{load[0]:.2f} (1 min), {load[1]:.2f} (5 min)"
    except (AttributeError, OSError):
        pass
    if torch.cuda.is_available():
        facts["GPU"] = torch.cuda.get_device_name(0)
    else:
        facts["GPU"] = "none (CPU only)"
    facts["python"] = platform.python_version()
    facts["platform"] = platform.platform()
    facts["versions"] = ", ".join(f"{m} {_version(m)}" for m in
                                  ("torch", "odl", "astra", "monai", "numpy"))
    facts["deftmed"] = _version("deftmed")
    return facts


def provenance_markdown(command: str, facts: dict[str, str] | None = None,
                        when: str | None = None) -> str:
    facts = facts if facts is not None else machine_facts()
    when = when or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"- command: `{command}`", f"- date: {when}", f"- git commit: {git_state()}"]
    lines += [f"- {k}: {v}" for k, v in facts.items()]
    return "\n".join(lines)


def current_command() -> str:
    """The command line that is running, as a user would retype it."""
    argv = sys.argv[1:]
    prog = "python -m deftmed.evaluation.benchmarks"
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " \
        if "OMP_NUM_THREADS" in os.environ else ""
    return env + prog + (" " + shlex.join(argv) if argv else "")


# ---------------------------------------------------------------------------------- runner
def _call_section(func: Callable[..., str], quick: bool, out_dir: Path) -> str:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"quick": quick}
    if "out_dir" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs["out_dir"] = out_dir
    text = func(**kwargs)
    if not isinstance(text, str):
        raise ConfigError(f"section function {func!r} returned {type(text).__name__}, not str")
    return text


def fragment_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}.md"


def run_sections(names: list[str], out_dir: Path, quick: bool = False,
                 command: str | None = None) -> dict[str, str]:
    """Run ``names`` and write their fragments; returns name -> status (``ok``, ``skipped: ...``,
    ``failed: ...``). A failed section keeps its previous fragment."""
    for name in names:  # validate all names before any (long) work
        if name not in SECTIONS:
            raise ConfigError(f"unknown benchmark section {name!r}; known sections: "
                              f"{', '.join(SECTIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = command or current_command()
    status: dict[str, str] = {}
    for name in names:
        try:
            func = resolve_section(name)
        except SectionMissing as exc:
            status[name] = f"skipped: {exc}"
            log.warning("section %s skipped: %s", name, exc)
            continue
        log.info("section %s: running%s ...", name, " (quick)" if quick else "")
        facts = machine_facts()
        when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        t0 = time.perf_counter()
        try:
            body = _call_section(func, quick, out_dir)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # one broken section must not lose the others
            status[name] = f"failed: {type(exc).__name__}: {exc}"
            log.error("section %s FAILED (%s); previous fragment kept\n%s", name, exc,
                      traceback.format_exc())
            continue
        seconds = time.perf_counter() - t0
        title = TITLES.get(name, name)
        text = (f"{_FRAGMENT_MARK} {name} -->\n## {title}\n\n"
                f"{provenance_markdown(command, facts, when)}\n"
                f"- mode: {'quick' if quick else 'full'}; section ran in {seconds:.0f} s\n\n"
                f"{body.strip()}\n")
        with atomic_path(fragment_path(out_dir, name)) as tmp:
            tmp.write_text(text)
        status[name] = "ok"
        log.info("section %s: done in %.0f s -> %s", name, seconds, fragment_path(out_dir, name))
    return status


HEADER = """# deftmed benchmarks

Measured speed and quality claims of deftmed. This file is generated; do not edit it by hand.

Regenerate everything with `make bench`, or one section with `make bench SECTIONS=physics`
(comma-separated names; add `BENCH_ARGS=--quick` for a fast, rougher pass). Each section is
stored as a fragment in `{dir}/` and this file is assembled from all fragments present, so
every section states its own command, date, git commit and machine: sections measured on
different days or machines are not directly comparable.

Conventions: images are in the model range [0, 1]; PSNR uses a fixed data range of 1.0 on that
range unless a table says otherwise. Times are wall-clock medians after warm-up.

Sections: {toc}
"""


def assemble(out: Path, out_dir: Path, status: dict[str, str] | None = None) -> Path:
    """Write ``out`` from every fragment in ``out_dir``: registry order, then the rest."""
    out, out_dir = Path(out), Path(out_dir)
    status = status or {}
    present = {p.stem: p for p in sorted(out_dir.glob("*.md"))} if out_dir.is_dir() else {}
    order = [n for n in SECTIONS] + sorted(n for n in present if n not in SECTIONS)
    toc, parts = [], []
    try:
        rel_dir = os.path.relpath(out_dir, out.parent if str(out.parent) else ".")
    except ValueError:
        rel_dir = str(out_dir)
    for name in order:
        if name in present:
            text = present[name].read_text()
            toc.append(f"`{name}`")
            if name not in SECTIONS:
                text = text.rstrip() + f"\n\n*(`{name}` is no longer a registered section; " \
                    f"delete `{rel_dir}/{name}.md` to drop it.)*\n"
            parts.append(text.rstrip() + "\n")
        else:
            why = status.get(name, "")
            if why.startswith("skipped"):
                note = f"not available yet ({why[len('skipped: '):]})"
            elif why.startswith("failed"):
                note = f"the last run failed ({why[len('failed: '):]})"
            else:
                note = "not measured yet"
            toc.append(f"`{name}` (missing)")
            parts.append(f"{_FRAGMENT_MARK} {name} -->\n## {TITLES.get(name, name)}\n\n"
                         f"*{note}; run `make bench SECTIONS={name}`.*\n")
    text = HEADER.format(dir=rel_dir, toc=", ".join(toc)) + "\n" + "\n".join(parts)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return out


def _parse_sections(text: str | None) -> list[str]:
    if text is None or not text.strip() or text.strip() == "all":
        return list(SECTIONS)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown benchmark section(s) {', '.join(map(repr, unknown))}; "
                          f"known sections: {', '.join(SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deftmed.evaluation.benchmarks",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default=None,
                   help=f"comma-separated sections (default: all of {', '.join(SECTIONS)})")
    p.add_argument("--out", default="BENCHMARKS.md", help="assembled markdown file")
    p.add_argument("--dir", default=None,
                   help="fragments folder (default: benchmarks/ next to --out)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and samples (rougher)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice / OMP_NUM_THREADS)")
    p.add_argument("--list", action="store_true", help="list sections and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench] %(levelname)s %(message)s")
    if args.list:
        for name, target in SECTIONS.items():
            print(f"{name:10s} {target if isinstance(target, str) else target!r}")
        return 0
    try:
        names = _parse_sections(args.sections)
    except ConfigError as exc:
        p.error(str(exc))
    if args.threads is not None:
        import torch
        torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    out_dir = Path(args.dir) if args.dir else (out.parent / "benchmarks")
    status = run_sections(names, out_dir, quick=args.quick)
    assemble(out, out_dir, status)
    print(f"[bench] wrote {out}", file=sys.stderr)
    return 1 if any(s.startswith("failed") for s in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
