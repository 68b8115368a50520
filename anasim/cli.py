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


def _cmd_params(args) -> int:
    from .config import describe_parameters, format_parameters
    from .errors import ConfigError, closest

    records = describe_parameters()
    if args.name:
        wanted = args.name
        if "." in wanted:
            section, _, field = wanted.partition(".")
            hits = [r for r in records if r.section == section and r.name == field]
        else:
            hits = [r for r in records if r.section == wanted] or [r for r in records if r.name == wanted]
        if not hits:
            names = sorted({f"{r.section}.{r.name}" for r in records} | {r.section for r in records})
            raise ConfigError(f"No parameter or section {wanted!r}.{closest(wanted, names)} "
                              "Run 'anasim params' for the full list.")
        records = hits
    print(format_parameters(records))
    return 0


def _cmd_presets(args) -> int:
    from .config import list_presets, preset

    for name, text in list_presets().items():
        print(f"{name}\n    {text}")
        if args.verbose:
            toml = preset(name).to_toml(only_changed=True)
            print("    " + toml.replace("\n", "\n    ").rstrip())
        print()
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

    s = sub.add_parser("params", help="every hardware/noise parameter: default, unit, valid range, meaning")
    s.add_argument("name", nargs="?", help="a section (forward, mapping, noise_model, ...) or section.parameter")
    s.set_defaults(func=_cmd_params)

    s = sub.add_parser("presets", help="list the configuration presets and what they set")
    s.add_argument("-v", "--verbose", action="store_true", help="print each preset's settings as TOML")
    s.set_defaults(func=_cmd_presets)
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
    except BrokenPipeError:  # output piped into `head` and friends
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("anasim: interrupted", file=sys.stderr)
        return 130
