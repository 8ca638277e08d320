"""The ``deftmed`` command line: a thin layer over the library.

Each command group lives in its own module exposing ``register(subparsers)``; handlers are
functions ``(args) -> int``. Errors deftmed raises on purpose are printed as one line, without a
traceback, and give exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from deftmed import __version__
from deftmed.errors import DeftmedError

COMMAND_MODULES = [
    "deftmed.cli.geometry_cmd",
    "deftmed.cli.data_cmd",
    "deftmed.cli.prior_cmd",
    "deftmed.cli.deft_cmd",
    "deftmed.cli.demo_cmd",
    "deftmed.cli.bench_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deftmed", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"deftmed {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except DeftmedError as exc:
        print(f"deftmed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deftmed: interrupted; finished outputs are kept, partial ones removed",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
