"""``dclabel app [PROJECT]``: open the napari labeler (napari is imported only when run)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``app`` sub-command to the ``dclabel`` parser."""
    p = subparsers.add_parser(
        "app",
        help="open the napari labeler on a project (default: the demo project)",
        description="Open the napari labeler: review proposals, draw footprints, retrain, export.",
    )
    p.add_argument("project", nargs="?", default=None,
                   help="project folder holding project.json (default: the demo project, created if missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Open the app and run the Qt event loop until the window closes."""
    import napari

    from labeler.app import launch

    launch(args.project, show=True)
    napari.run()
    return 0
