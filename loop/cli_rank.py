"""``dclabel rank PROJECT``: rank the unreviewed chips, print the queue and store it."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from loop.cli_project import positive_int
from loop.ranking_scores import STRATEGIES

if TYPE_CHECKING:  # the ranking module imports torch: load it only when a command runs
    from loop.ranking import QueueItem


def format_queue(items: list[QueueItem]) -> str:
    """The queue as a fixed-width text table (rank, score, scene, window, proposals)."""
    header = (
        f"{'rank':>4}  {'score':>7}  {'scene':<24}  {'window (col,row,w,h)':<22}  {'proposals':>9}"
    )
    lines = [header, "-" * len(header)]
    for it in items:
        w = it.window
        window = f"{int(w.col_off)},{int(w.row_off)},{int(w.width)},{int(w.height)}"
        lines.append(
            f"{it.rank:>4}  {it.score:>7.4f}  {it.scene_id[:24]:<24}  {window:<22}  {len(it.proposals):>9}"
        )
    return "\n".join(lines)


def _open_project(root: str):
    from loop.project import Project

    return Project.open(root)


def _progress(done: int, total: int, info: dict) -> None:
    print(
        f"\r  {done}/{total} chips, {info.get('chips_per_s', 0.0):.1f} chips/s",
        end="",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    """Rank, print and save the queue of ``args.project``."""
    from loop.ranking import rank_chips, save_queue

    project = _open_project(args.project)
    # the version read once, before ranking: one promoted or published meanwhile (the app, another
    # `retrain`, `models --promote`) must not be recorded as the model that scored this queue
    current = None if args.checkpoint else project.registry.current()
    items = rank_chips(
        project,
        strategy=args.strategy,
        top=args.top,
        checkpoint=args.checkpoint or (current.path if current is not None else None),
        batch_size=args.batch_size,
        diversity=not args.no_diversity,
        seed=args.seed,
        progress=None if args.quiet else _progress,
        mc_samples=args.mc_samples,
        device=args.device,
    )
    if not args.quiet:
        print(file=sys.stderr)
    scored_by = f"file:{args.checkpoint}" if args.checkpoint else (current.version if current is not None else None)
    path = save_queue(project, items, strategy=args.strategy, model_version=scored_by)
    print(format_queue(items))
    print(f"{len(items)} chip(s) queued -> {path}")
    if scored_by is None and items:
        print(f"dclabel rank: note: no model yet, so the queue is a cold start (chips spread over clusters of "
              f"image features), not {args.strategy}; retrain once some chips are reviewed.", file=sys.stderr)
    if not items:
        why = ("every chip of the project is reviewed" if project.scene_ids else "the project has no scenes yet")
        print(f"dclabel rank: note: {why}; add a scene to label more (`dclabel init {args.project} --image "
              "SCENE.tif`).", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add the ``rank`` sub-command."""
    p = subparsers.add_parser(
        "rank",
        help="rank unreviewed chips by model uncertainty and store the review queue",
        description="Rank every unreviewed chip of a project (most informative first), print the "
        "queue and store it as PROJECT/queue.json. Without a model, a cold start spreads the queue "
        "over clusters of image features.",
    )
    p.add_argument("project", help="project folder")
    p.add_argument(
        "--strategy",
        default="entropy",
        choices=list(STRATEGIES),
        help="; ".join(f"{s.name}: {s.description}" for s in STRATEGIES.values()),
    )
    p.add_argument("--top", type=positive_int, default=None, help="keep only the N most informative chips")
    p.add_argument(
        "--checkpoint", default=None, help="checkpoint file (default: the project's current model)"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="chips per forward pass (default 8)")
    p.add_argument(
        "--mc-samples", type=positive_int, default=8, help="MC-dropout samples for bald (default 8)"
    )
    p.add_argument("--no-diversity", action="store_true", help="do not spread the queue over space")
    p.add_argument("--seed", type=int, default=0, help="seed of random and cold start (default 0)")
    p.add_argument("--device", default=None, help="torch device (default: best available)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)
