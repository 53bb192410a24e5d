"""The ``dclabel`` command line: one argparse parser, sub-commands registered per module.

The console script itself is ``labeler.cli:main``, which adds the GUI command ``app`` on top of these
(``loop`` must not import ``labeler``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from model.errors import DclabelError
from model.runtime import tune_allocator

# Modules that contribute sub-commands; each has ``register(subparsers)`` and sets ``func`` on its parsers.
COMMAND_MODULES = [
    "model.cli",
    "loop.cli_labels",
    "loop.cli_rank",
    "loop.cli_models",
    "loop.cli_naip",
    "loop.cli_project",
    "loop.cli_demo",
]


def build_parser(extra_modules: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The ``dclabel`` parser with every GUI-free command, plus those of ``extra_modules``."""
    parser = argparse.ArgumentParser(
        prog="dclabel",
        description="Find hyperscale data centers in NAIP imagery: label, train, detect.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (*COMMAND_MODULES, *extra_modules):
        importlib.import_module(name).register(sub)
    return parser


def _one_line_warnings(prefix: str) -> None:
    """Print our warnings as ``dclabel CMD: warning: ...`` (no source line: users read them, not us);
    other libraries' warnings keep their category name."""
    def formatted(message, category, filename, lineno, line=None) -> str:
        kind = "warning" if category is UserWarning else category.__name__
        return f"{prefix}: {kind}: {message}\n"

    warnings.formatwarning = formatted
    # rasterio's note that a scene's nodata value, not its alpha band, decides which pixels are
    # empty: that is how dclabel reads nodata anyway, and the user can do nothing about it
    from rasterio.errors import NodataShadowWarning

    warnings.filterwarnings("ignore", category=NodataShadowWarning)


def main(argv: list[str] | None = None, extra_modules: tuple[str, ...] = ()) -> int:
    """Run a sub-command; dclabel errors print one clear line and exit 2."""
    args = build_parser(extra_modules).parse_args(argv)
    _one_line_warnings(f"dclabel {args.command}")
    tune_allocator()  # forward passes stop page-faulting their activations back in (model/runtime.py)
    try:
        return int(args.func(args) or 0)
    except DclabelError as exc:
        print(f"dclabel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dclabel {args.command}: interrupted; no partial output was left behind.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
