"""The ``interp`` command.

Library errors (:class:`~interp.errors.InterpError`) and usage mistakes print one line and exit
with code 2; any other exception prints one line naming its type (``--debug`` shows the
traceback) and exits with code 1. Each subcommand lives in :mod:`interp.commands`; this module
only wires them together. Subcommand modules import their heavy dependencies when they run, so
``interp --help`` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from importlib import import_module

from interp.errors import InterpError
from interp.locks import release_outputs
from interp.options import add_common
from interp.provenance import lock_status
from interp.version import __version__

COMMANDS = ("data", "eval", "finetune", "patch", "gaps", "shift", "compare", "study", "align",
            "sweep", "calibrate")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes get the same one-line error and exit code 2 as library errors."""

    def error(self, message: str):
        self.exit(2, f"interp: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="interp", description="Why does in-context learning beat fine-tuning? Measure it.")
    parser.add_argument("--version", action="version", version=f"interp {__version__}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        p = import_module(f"interp.commands.{name}").add_parser(sub)
        add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        lock_status()   # versions that differ from the lock are said before any work, once
        return import_module(f"interp.commands.{args.command}").run(args)
    except InterpError as exc:
        print(f"interp: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("interp: error: ran out of memory (reduce the sizes asked; finished stages are "
              "kept)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interp: interrupted (finished stages are kept; the same command resumes)",
              file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, not a trace
        if args.debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"interp: unexpected {type(exc).__name__}: {first} (rerun with --debug for the "
              "traceback; finished stages are kept)", file=sys.stderr)
        return 1
    finally:
        release_outputs()


if __name__ == "__main__":
    sys.exit(main())
