"""``dclabel app [PROJECT]``: open the napari labeler (napari is imported only when run)."""

from __future__ import annotations

import argparse
import sys


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
    """Open the app and run the Qt event loop until the window closes.

    Without a project the demo project is created first (first run only: a synthetic scene, seed
    labels and a first model), in the terminal and before any window opens, so the GUI never
    waits on it.
    """
    project = args.project
    if project is None:
        from loop.demo import ensure_demo_project

        def report(done: int, total: int, info: dict) -> None:
            print(f"dclabel app: demo project {done}/{total}: {info.get('step', '')}", file=sys.stderr)

        project = ensure_demo_project(progress=report)
    else:
        from loop.project import Project

        Project.open(project)  # a wrong path is one error line, before any window opens
    import napari

    from labeler.app import launch

    launch(project, show=True)
    napari.run()
    return 0
