"""``deftmed tune``, ``deftmed bench`` and ``deftmed report``."""

from __future__ import annotations



def _methods_arg(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _space_arg(text: str) -> dict:
    """``zeta=10,30,100`` -> {"zeta": [10, 30, 100]} (values parsed as YAML scalars)."""
    import argparse

    import yaml

    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise argparse.ArgumentTypeError(f"expected SETTING=V1,V2,..., got {text!r}")
    return {key.strip(): [yaml.safe_load(v) for v in values.split(",")]}


def _override_arg(text: str) -> dict:
    """``--set deft.steps=50`` -> {"deft": {"steps": 50}} (values parsed as YAML scalars)."""
    import yaml

    from deftmed.errors import ConfigError

    key, sep, value = text.partition("=")
    method, dot, name = key.partition(".")
    if not sep or not dot or not method or not name:
        raise ConfigError(f"--set {text!r}: expected METHOD.KEY=VALUE, e.g. deft.steps=50")
    return {method: {name: yaml.safe_load(value)}}


def register(sub) -> None:
    p = sub.add_parser("tune", help="search a method's settings on a protocol's validation split")
    p.add_argument("--protocol", required=True, help="protocol name or YAML file")
    p.add_argument("--method", required=True)
    p.add_argument("--budget", type=int, default=20,
                   help="most search points tried (the defaults are tried in addition)")
    p.add_argument("--n-val", type=int, default=8, help="first N validation images")
    p.add_argument("--search", default="auto", choices=["auto", "grid", "random"],
                   help="auto: the whole grid when it fits the budget, else random points")
    p.add_argument("--space", dest="space", action="append", type=_space_arg, default=[],
                   help="search these values instead of the default grid, e.g. "
                        "--space zeta=10,30,100 (repeatable)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="random search and sampling seed")
    p.add_argument("--out", default=None,
                   help="tuned file (default protocols/tuned/<protocol>/<method>.yaml)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_tune)

    p = sub.add_parser("bench", help="benchmark methods on a protocol's test split (resumable; "
                                     "shards under torchrun)")
    p.add_argument("--protocol", required=True, help="protocol name or YAML file")
    p.add_argument("--methods", type=_methods_arg, default="fbp,tv,dps,reddiff,dds,deft",
                   help="comma-separated methods (default: fbp,tv,dps,reddiff,dds,deft)")
    p.add_argument("--n", "--num-images", dest="n", type=int, default=None,
                   help="first N test images (default: all); under torchrun write --num-images "
                        "(torchrun's own parser takes --n for an abbreviation of its options)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", default=None, help="results folder (default results/<protocol>)")
    p.add_argument("--keep", type=int, default=4, help="reconstructions saved for the figures")
    p.add_argument("--set", dest="overrides", action="append", type=_override_arg, default=[],
                   metavar="METHOD.KEY=VALUE", help="override a setting (repeatable)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed (default: the protocol's seeds.sampling)")
    p.add_argument("--device", default="auto")
    p.add_argument("--replace", type=_methods_arg, default=(),
                   help="comma-separated methods whose earlier rows in the results folder are "
                        "discarded and recomputed (e.g. after re-tuning them)")
    p.add_argument("--no-report", action="store_true", help="skip report.md / report.html")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_bench)

    p = sub.add_parser("report", help="turn a benchmark results folder into report.md and one "
                                      "self-contained HTML page")
    p.add_argument("results", help="results folder written by `deftmed bench`")
    p.add_argument("--out", default=None, help="HTML file (default RESULTS/report.html)")
    p.add_argument("--resummarise", action="store_true",
                   help="recompute summary.json from per_image.csv first")
    p.set_defaults(func=run_report)


def run_tune(args) -> int:
    from deftmed.distributed import pick_device
    from deftmed.evaluation.tuning import tune

    rec = tune(args.protocol, args.method, args.budget, args.n_val, search=args.search,
               seed=args.seed, device=pick_device(args.device), batch_size=args.batch_size,
               progress=not args.no_progress, out=args.out,
               space={k: v for d in args.space for k, v in d.items()} or None)
    obj = rec["objective"]
    print(f"{args.method}: best validation PSNR {obj['value']:.2f} dB over {len(rec['log'])} "
          f"settings ({rec['search']['kind']} search; defaults: {obj['default_value']})")
    print(f"settings: {rec['settings']}")
    print(f"wrote {rec['path']}")
    return 0


def run_bench(args) -> int:
    from pathlib import Path

    from deftmed.distributed import init_distributed, pick_device, shutdown
    from deftmed.evaluation.protocol import Protocol
    from deftmed.evaluation.report import write_report
    from deftmed.evaluation.runner import run_benchmark

    methods = args.methods if isinstance(args.methods, list) else _methods_arg(args.methods)
    overrides: dict = {}
    for o in args.overrides:
        for m, kv in o.items():
            overrides.setdefault(m, {}).update(kv)
    proto = Protocol.load(args.protocol)
    out = Path(args.out or Path("results") / proto.name)
    device = pick_device(args.device)
    dist = init_distributed(device)
    try:
        res = run_benchmark(proto, methods, args.n, out, device, dist, args.batch_size,
                            progress=not args.no_progress,
                            settings_override=overrides, keep=args.keep,
                            sampling_seed=args.seed, replace=args.replace)
        if dist.is_main:
            import json
            summary = json.loads((out / "summary.json").read_text())
            total = sum(e["n"] for e in summary["methods"].values())
            print(f"{res.rows_written} new rows, {res.rows_skipped} already done"
                  + (" (this process)" if dist.enabled else "")
                  + f"; {total} rows -> {out / 'per_image.csv'}, {out / 'summary.json'}")
            if not args.no_report:
                paths = write_report(out)
                print(f"report: {paths['markdown']}, {paths['html']}")
    finally:
        shutdown(dist)
    return 0


def run_report(args) -> int:
    from deftmed.evaluation.report import write_report
    from deftmed.evaluation.runner import summarise

    if args.resummarise:
        summarise(args.results)
    paths = write_report(args.results, html_out=args.out)
    print(f"wrote {paths['html']} and {paths['markdown']}")
    return 0
