"""The ``infolens`` command: ``demo``, ``estimate`` and ``bench``.

Each subcommand lives in a module of its own with two functions, ``add_parser(subparsers)`` and
``run(args) -> int`` (the exit status); this module only assembles them. Errors a user can fix
(a missing file, a bad shape) print one line on stderr and exit with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__

COMMANDS = ("demo", "estimate", "bench")


class UsageError(Exception):
    """A problem with the user's input, reported as one line and exit status 2."""


def parser() -> argparse.ArgumentParser:
    from importlib import import_module
    top = argparse.ArgumentParser(prog="infolens", description="Information-theoretic measurements of neural networks.")
    top.add_argument("--version", action="version", version=f"infolens {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        import_module(f"{__name__}.{name}").add_parser(sub)
    return top


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"infolens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"infolens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
