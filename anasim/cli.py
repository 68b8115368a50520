"""The ``anasim`` command line.

Subcommands are small functions registered in ``COMMANDS``; each takes the parsed
arguments and returns an exit status. Errors anasim documents (bad model, bad config,
bad input) are printed as one line ``anasim: error: ...`` with exit status 2, never as a
traceback; set ``ANASIM_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .errors import AnasimError


def _cmd_inspect(args) -> int:
    from .graph.importer import load
    from .graph.summary import format_summary

    graph = load(args.model, fold_batchnorm=not args.keep_batchnorm)
    print(format_summary(graph))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anasim",
        description="Simulate analog in-memory-computing inference hardware on trained ONNX networks.",
    )
    p.add_argument("--version", action="version", version=f"anasim {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("inspect", help="list a model's layers, shapes, parameters and analog layers")
    s.add_argument("model", help="path of an ONNX model")
    s.add_argument("--keep-batchnorm", action="store_true",
                   help="do not fold BatchNormalization into the preceding Conv/Gemm")
    s.set_defaults(func=_cmd_inspect)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except AnasimError as exc:
        if os.environ.get("ANASIM_DEBUG"):
            raise
        print(f"anasim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anasim: interrupted", file=sys.stderr)
        return 130
