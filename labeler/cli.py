"""The ``dclabel`` console script: every command of ``loop.cli`` plus ``dclabel app``."""

from __future__ import annotations

import sys

from loop.cli import main as loop_main

GUI_COMMAND_MODULES = ("labeler.cli_app",)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dclabel`` console script."""
    return loop_main(argv, extra_modules=GUI_COMMAND_MODULES)


if __name__ == "__main__":
    sys.exit(main())
