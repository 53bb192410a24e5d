"""``dclabel models PROJECT``: the project's model versions; ``--promote V`` makes one current."""

from __future__ import annotations

import argparse

METRICS = ("iou", "dice", "precision", "recall", "object_f1")


def format_versions(versions: list) -> str:
    """The registry as a fixed-width table, newest first (status, metrics, parent, reason)."""
    header = (f"{'version':<8} {'status':<9} {'created':<20} {'parent':<7} "
              + " ".join(f"{m:>9}" for m in METRICS) + "  reason")
    lines = [header, "-" * len(header)]
    for mv in sorted(versions, key=lambda v: v.number, reverse=True):
        cells = " ".join(f"{mv.metrics[m]:>9.3f}" if isinstance(mv.metrics.get(m), (int, float)) else f"{'-':>9}"
                         for m in METRICS)
        lines.append(f"{mv.version:<8} {mv.status:<9} {mv.created[:19]:<20} {mv.parent or '-':<7} {cells}  {mv.reason}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """List the versions of ``args.project``; with ``--promote``, make that version current first."""
    from loop.project import Project

    project = Project.open(args.project)
    registry = project.registry
    if args.promote and (before := registry.current()) is not None and before.version == args.promote:
        print(f"{args.promote} is already the current model; nothing changed.")
    elif args.promote:
        mv = registry.promote(args.promote, reason=f"promoted by hand (was {before.version if before else 'none'})")
        print(f"{mv.version} is the current model (was {before.version if before else 'none'}); the app and "
              "`dclabel rank` use it from now on.")
    versions = registry.versions()
    if not versions:
        print(f"{args.project}: no model yet; `dclabel retrain {args.project}` trains one once chips are reviewed.")
        return 0
    print(format_versions(versions))
    return 0


def register(subparsers) -> None:
    """Add the ``models`` sub-command."""
    p = subparsers.add_parser(
        "models",
        help="list the project's model versions (metrics, status, why); --promote V makes one current",
        description="List the checkpoint registry of a project, newest first: status (current, previous, "
        "candidate), validation metrics, parent and the reason it was promoted or kept. A candidate that "
        "was not promoted (or an older version, to roll back) becomes current with --promote.",
    )
    p.add_argument("project", help="project folder")
    p.add_argument("--promote", metavar="VERSION", default=None,
                   help="make this version (e.g. v3) the current model; its checkpoint must load")
    p.set_defaults(func=run)
