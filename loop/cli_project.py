"""``dclabel init``, ``dclabel retrain`` and ``dclabel simulate``: projects, background training, oracle runs."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path

from loop.ranking_scores import STRATEGIES
from model.cli import parse_bands

#: ``retrain --min-passes`` default, as :data:`loop.retrain_worker.MIN_PASSES` (not imported here:
#: that module loads torch, and the CLI's help must stay quick; a test keeps the two equal).
MIN_PASSES_DEFAULT = 256


def _strategies(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown strategy {unknown or text!r}; choose from {', '.join(STRATEGIES)}")
    return names


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
    return value


def _tolerance(text: str) -> float:
    value = _number(text)
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"is an allowed drop of val IoU, between -1 and 1; got {text!r}")
    return value


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return _whole_number(text, 0)


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (shared by the loop's sub-commands)."""
    return _whole_number(text, 1)


def _dropout(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def run_init(args: argparse.Namespace) -> int:
    """Create (or extend) a project with the given scenes."""
    from loop.project import PROJECT_FILE, Project
    from model.ground import pixel_size_m

    existed = (args.project / PROJECT_FILE).exists()
    project = Project.create(args.project, images=args.image or (), bands=args.bands,
                             chip_size=args.chip_size or 256, resolution_m=args.res)
    if existed:  # chip size and pixel size are the project's own: changing them would orphan its labels
        kept = project.settings
        for flag, asked, has in (("--chip-size", args.chip_size, kept.chip_size), ("--res", args.res, kept.resolution_m)):
            if asked is not None and asked != has:
                keeps = "each scene's own pixel size" if has is None else f"{has:g}"
                print(f"dclabel init: warning: {args.project} exists, so {flag} {asked:g} is ignored (it applies "
                      f"to a new project; this one keeps {keeps}); create a new project folder to use it",
                      file=sys.stderr)
        if args.bands is not None and not args.image:  # bands are each scene's own, set as it is added
            print(f"dclabel init: warning: {args.project} exists and no --image is given, so --bands "
                  f"{','.join(map(str, args.bands))} changes nothing: its scenes keep the bands they were added with. "
                  "--bands applies to the scenes added with --image; to read a scene's bands in another order, "
                  "add its file to a new project with --bands", file=sys.stderr)
    for scene_id, path in args.relink or ():
        info = project.relink_scene(scene_id, path)
        print(f"{scene_id}: now reads {info.path}")
    project.labels  # noqa: B018 - creates labels.gpkg with every readable scene registered
    readable = {info.scene_id: info for info in project.readable_scenes()}
    for sid in project.scene_ids:
        info = readable.get(sid)
        if info is None:
            print(f"{sid}: not used, its file is missing or not the raster it was added with (see the warning; "
                  f"put the file back, or --relink {sid} FILE)")
            continue
        n = len(project.chip_windows(info.scene_id))
        size = pixel_size_m(info)
        print(f"{info.scene_id}: {info.width} x {info.height} px, {info.crs.to_string()}, "
              + (f"{size:.3g} m pixels, " if size is not None else "") + f"{n} chips")
    print(f"project {project.root}: {len(project.scene_ids)} scene(s)")
    return 0


def _bar(done: int, total: int, width: int = 28) -> str:
    filled = int(width * done / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def format_event(event: dict) -> str | None:
    """One terminal line for a retraining event (None for ``done``)."""
    t = event["type"]
    if t == "started":
        source = f"from scratch: {event['restart']}" if event.get("restart") else f"from {event['parent'] or 'scratch'}"
        return f"training on {event['n_train']} chips, validating on {event['n_val']} ({source})"
    if t == "step":
        return f"\r  {_bar(event.get('done', 0), event.get('total', 0))} loss {event.get('loss', float('nan')):.3f}"
    if t == "epoch":  # Lightning's figures during training; the published ones are measured afterwards
        iou = event.get("val_iou")
        extra = f", val IoU {iou:.3f} (training, at 0.5)" if isinstance(iou, float) else ""
        line = f"epoch {event.get('epoch')}/{event.get('total')}: loss {event.get('loss', float('nan')):.3f}{extra}"
        return f"\r  {line:<60}"
    if t == "published":
        return f"published {event['version']} as current model{_final_figures(event)} ({event['reason']})"
    if t == "rejected":
        return (f"kept {event['version']} as a candidate{_final_figures(event)}, current model unchanged "
                f"({event['reason']})")
    if t == "error" and event.get("traceback"):  # not an input problem: a bug to report
        return (f"internal error: {event.get('message', '')}; the current model is unchanged. The traceback is in "
                "the project's logs/retrain.jsonl: please report it with that file")
    if t in ("error", "cancelled"):
        return f"{t}: {event.get('message', '')}"
    return None


def _final_figures(event: dict) -> str:
    """The published figures: the final weights on the validation chips at their own threshold."""
    m = event.get("metrics") or {}
    if not isinstance(m.get("iou"), float):
        return ""
    t = m.get("threshold", event.get("threshold"))
    at = f" at threshold {t:.2f}" if isinstance(t, float) else ""
    return (f": final val IoU {m['iou']:.3f}, Dice {m.get('dice', float('nan')):.3f}, precision "
            f"{m.get('precision', float('nan')):.3f}, recall {m.get('recall', float('nan')):.3f}{at}")


def run_retrain(args: argparse.Namespace) -> int:
    """Run one retraining round in the background process and stream its events; Ctrl+C cancels."""
    from loop.retrain import RetrainJob
    from model.unet import UNetConfig

    unet = UNetConfig(base_channels=args.base_channels, depth=args.depth, dropout=args.dropout)
    job = RetrainJob(args.project, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, unet=unet,
                     tolerance=args.tolerance, seed=args.seed, max_time_s=args.max_time, threads=args.threads,
                     min_passes=args.min_passes)
    job.start()
    previous = signal.getsignal(signal.SIGINT)
    interrupted = []

    def on_sigint(signum, frame) -> None:
        if interrupted:  # second Ctrl+C: stop waiting politely
            raise KeyboardInterrupt
        interrupted.append(True)
        print("\ncancelling (Ctrl+C again to force)...", file=sys.stderr)
        job.cancel()

    signal.signal(signal.SIGINT, on_sigint)
    status = 0
    try:
        while job.is_running:
            for event in job.wait(timeout=0.5):
                line = format_event(event)
                if line is None:
                    continue
                inline = line.startswith("\r")
                print(line, end="" if inline and event["type"] == "step" else "\n", file=sys.stderr, flush=True)
                if event["type"] == "error":
                    status = 1 if event.get("traceback") else 2  # 2: the input (no data, busy, registry)
                elif event["type"] == "cancelled":
                    status = 130
    finally:
        signal.signal(signal.SIGINT, previous)
        job.close()
    if job.last_result is not None and job.last_result["type"] in ("published", "rejected"):
        print(json.dumps({k: job.last_result.get(k) for k in ("version", "promoted", "reason", "val_iou",
                                                               "threshold")}))
    return status


def run_simulate(args: argparse.Namespace) -> int:
    """Run the oracle simulation and print the label-efficiency figures."""
    from loop.simulate import SimulationConfig, run_simulation

    config = SimulationConfig(
        strategies=args.strategies, rounds=args.rounds, batch=args.batch, seeds=args.seeds,
        chip_size=args.chip_size, holdout_fraction=args.holdout, epochs=args.epochs, train_passes=args.train_passes,
        full_epochs=args.full_epochs,
        base_channels=args.base_channels, depth=args.depth, dropout=args.dropout, lr=args.lr, pos_weight=args.pos_weight,
        finetune_lr_factor=args.finetune_lr_factor,
        batch_size=args.batch_size, val_fraction=args.val_fraction, warm_start=not args.cold, full_label=not args.no_full_label,
        threads=args.threads, jobs=args.jobs, first_pick=args.first_pick.replace("-", "_"),
    )

    def progress(done: int, total: int, info: dict) -> None:
        what = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        print(f"  {_bar(done, total)} {what}", file=sys.stderr, flush=True)

    result = run_simulation(args.image, args.truth, args.output_dir, config, progress=progress,
                            holdout_scenes=[tuple(pair) for pair in args.holdout_scene or ()])
    print_summary(result.summary)
    print(f"wrote {result.csv_path} and {result.png_path}")
    return 0


def print_summary(summary: dict) -> None:
    """The label-efficiency table and headline figures."""
    full = summary.get("full_iou")
    seeds = summary.get("full_iou_per_seed") or []
    per_seed = f" (mean of {len(seeds)} seeds: {', '.join(f'{v:.3f}' for v in seeds)})" if len(seeds) > 1 else ""
    print(f"pool chips: {summary['n_pool']}; full-label IoU: {full:.3f}{per_seed}" if full is not None else
          f"pool chips: {summary['n_pool']}")
    budget = summary["budget"]
    print(f"{'strategy':<10} {'chips to 95%':>13} {'IoU @' + format(budget, '.0%'):>9} {'final IoU':>10}")
    starred = False
    for s, d in summary["per_strategy"].items():
        reach = ("n/a" if full is None else
                 f"{d['fraction_to_95']:.1%}" if d["fraction_to_95"] is not None else "not reached")
        note = "" if d["budget_in_range"] else "*"
        starred = starred or bool(note)
        print(f"{s:<10} {reach:>13} {d['iou_at_budget']:>8.3f}{note} {d['final_iou']:>10.3f}")
    if starred:
        print(f"* the {budget:.0%} budget lies outside the reviewed-chip counts the rounds reached: the nearest "
              "round's IoU is shown")
    if full is None:
        print("chips to 95%: n/a (no full-label model: --no-full-label)")
    compared = len(summary["per_strategy"]) > 1
    if summary.get("best") and compared:
        reach = summary["best_fraction_to_95"]
        print(f"best strategy: {summary['best']}; chips to reach 95% of full-label IoU: "
              + ("not measured (no full-label model: --no-full-label)" if full is None else
                 "not reached" if reach is None else format(reach, ".1%")))
    if not compared:
        return
    if summary.get("best_minus_random_at_budget") is not None and summary["best"] != "random":
        print(f"{summary['best']} IoU minus random IoU at a {budget:.0%} budget: "
              f"{summary['best_minus_random_at_budget']:+.3f}")
    elif summary.get("best") == "random":
        print("random sampling did best in this run (or tied): no ranking strategy beat it")


def register(subparsers) -> None:
    """Add the ``init``, ``retrain`` and ``simulate`` sub-commands."""
    p = subparsers.add_parser("init", help="create a project folder from scene GeoTIFFs or a folder of chips",
                              description="Create (or extend) a dclabel project: project.json, labels.gpkg, "
                              "checkpoints/, logs/. Each --image is a 4-band GeoTIFF or a folder of chip GeoTIFFs.")
    p.add_argument("project", type=Path, help="project folder (created if missing)")
    p.add_argument("--image", action="append", type=Path, metavar="SCENE.tif", help="scene or chip folder (repeat)")
    p.add_argument("--bands", type=parse_bands, default=None, help="1-based bands read as R,G,B,NIR (default 1,2,3,4)")
    p.add_argument("--chip-size", type=int, default=None,
                   help="review/training chip side in pixels (default 256; a new project only)")
    p.add_argument("--res", type=float, default=None, metavar="METRES",
                   help="read every scene at this pixel size, e.g. 0.6 to match NAIP-trained models on 0.3 m "
                   "imagery (scenes at another size are resampled through a VRT in PROJECT/scenes; default: "
                   "each at its own; a new project only)")
    p.add_argument("--relink", nargs=2, action="append", metavar=("SCENE_ID", "NEW_PATH"),
                   help="a scene's file moved: read it from NEW_PATH (checked: same CRS, its labels inside it)")
    p.set_defaults(func=run_init)

    p = subparsers.add_parser("retrain", help="retrain the project's model on its reviewed chips",
                              description="Train a new model version in a background process (warm start from "
                              "the current model), publish it, and promote it unless it validates worse. Ctrl+C cancels.")
    p.add_argument("project", type=Path, help="project folder")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs (at least; see --min-passes)")
    p.add_argument("--min-passes", type=_non_negative_int, default=None,
                   help="fewest chip passes of the round: with few reviewed chips epochs are raised to reach it "
                        f"(default {MIN_PASSES_DEFAULT}; 0: exactly --epochs; the simulation trains 576)")
    p.add_argument("--lr", type=_positive_number, default=1e-3,
                   help="learning rate of a first model; later rounds fine-tune the current one at a quarter of it")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--tolerance", type=_tolerance, default=0.02,
                   help="allowed val IoU drop before keeping a candidate (-1..1; negative demands a gain)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-time", type=_positive_number, default=None, help="stop training after this many seconds")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads of the training process")
    p.add_argument("--base-channels", type=positive_int, default=16,
                   help="U-Net width of a first (cold-start) model (32 = the seed's; 16 trains ~4x faster on a CPU)")
    p.add_argument("--depth", type=positive_int, default=4, help="U-Net levels of a first model")
    p.add_argument("--dropout", type=_dropout, default=0.1, help="dropout of a first model (BALD needs > 0)")
    p.set_defaults(func=run_retrain)

    p = subparsers.add_parser("simulate", help="compare ranking strategies with an oracle reviewer",
                              description="Simulate labelling: an oracle reviews the chips each strategy picks, "
                              "the model retrains each round and is scored on a held-out strip of the scene.")
    p.add_argument("--image", type=Path, required=True, metavar="SCENE.tif")
    p.add_argument("--truth", type=Path, required=True, metavar="TRUTH.geojson")
    p.add_argument("--strategies", type=_strategies, default=("random", "entropy", "tta", "bald"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8, help="chips labelled per round")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--chip-size", type=int, default=256)
    p.add_argument("--holdout", type=float, default=0.25, help="right-hand share of the scene kept for evaluation")
    p.add_argument("--holdout-scene", nargs=2, action="append", type=Path, metavar=("SCENE.tif", "TRUTH.geojson"),
                   help="a further scene and its truth held out whole: models are scored over it and the strip "
                        "together (repeatable; more data centers to score on make the curves less noisy)")
    p.add_argument("--epochs", type=int, default=3, help="minimum epochs per round")
    p.add_argument("--train-passes", type=int, default=96, help="minimum chip passes per round")
    p.add_argument("--full-epochs", type=int, default=None, help="epochs of the full-label model (default 3x)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of the first round")
    p.add_argument("--finetune-lr-factor", type=float, default=0.25,
                   help="warm-started rounds train at --lr times this")
    p.add_argument("--pos-weight", type=float, default=2.0, help="BCE weight of data-center pixels")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help="reviewed chips held out to pick the best epoch (0: train on all, keep the last)")
    p.add_argument("--cold", action="store_true", help="train each round from scratch instead of warm starting")
    p.add_argument("--no-full-label", action="store_true", help="skip the full-label reference model")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of each run")
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="runs (full-label reference, each strategy and seed) trained at once in worker processes; "
                        "with N cores, --jobs N --threads 1 is fastest for small U-Nets (results are the same)")
    p.add_argument("--first-pick", choices=("cold-start", "random"), default="cold-start",
                   help="first round: uncertainty strategies take the cold-start queue the app uses without a "
                        "model, random takes random chips (cold-start, default); or all start from the same "
                        "random chips (random)")
    p.set_defaults(func=run_simulate)
