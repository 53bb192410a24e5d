"""Seconds from a retrain request to a published checkpoint, for one round on N reviewed chips.

Draws a seeded synthetic scene (``model.synth``), builds a project whose first ``--chips`` chips
(256 px) are reviewed with the true footprints, then times :class:`loop.retrain.RetrainJob`:
request -> ``started`` (process spawn, imports, chip reading) -> ``published`` (training,
baseline evaluation, atomic publish). Run it twice with ``--rounds 2`` to include a warm start.

Usage: ``.venv/bin/python bench/retrain.py [--chips 50] [--epochs 5] [--base-channels 32] [--threads 1]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loop.project import Project  # noqa: E402
from loop.retrain import RetrainJob  # noqa: E402
from loop.simulate import Oracle  # noqa: E402
from loop.training_chips import positive_reviewed_count  # noqa: E402
from model.masks import load_footprints  # noqa: E402
from model.synth import SynthConfig, generate_scene  # noqa: E402
from model.unet import UNetConfig  # noqa: E402


def build_project(root: Path, chips: int, seed: int) -> Project:
    """A project on a synthetic scene just large enough for ``chips`` chips, all of them reviewed."""
    side = 256 * max(2, int(chips**0.5 + 0.999))
    tif, truth = generate_scene(root / "scene.tif", root / "truth.geojson",
                                SynthConfig(width=side, height=side, seed=seed, density=1.5))
    project = Project.create(root / "proj", images=[tif])
    scene = project.scenes[0]
    gt = load_footprints(truth).to_crs(scene.crs)
    Oracle(project, gt).review(project.chip_windows(scene.scene_id)[:chips])
    return project


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chips", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--base-channels", type=int, default=32)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="2 = also time a warm-started second round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="dclabel-bench-retrain-") as tmp:
        t0 = time.perf_counter()
        project = build_project(Path(tmp), args.chips, args.seed)
        n, n_pos = positive_reviewed_count(project)
        print(f"project: {n} reviewed chips ({n_pos} with a data center), built in {time.perf_counter() - t0:.1f} s")
        job = RetrainJob(project.root, epochs=args.epochs, batch_size=args.batch_size, threads=args.threads,
                         unet=UNetConfig(base_channels=args.base_channels, depth=args.depth, dropout=0.1))
        print(f"{'round':>5} {'to started s':>13} {'to published s':>15} {'steps':>6} {'val IoU':>8}  result")
        for rnd in range(1, args.rounds + 1):
            t_req = time.perf_counter()
            job.request()
            t_started = None
            steps = 0
            final = None
            while job.is_running:
                for e in job.poll():
                    if e["type"] == "started" and t_started is None:
                        t_started = time.perf_counter() - t_req
                    elif e["type"] == "step":
                        steps += 1
                    elif e["type"] in ("published", "rejected", "error", "cancelled"):
                        final = (e, time.perf_counter() - t_req)
                time.sleep(0.05)
            if final is None:
                print(f"{rnd:>5} no result")
                return 1
            e, secs = final
            iou = e.get("val_iou")
            print(f"{rnd:>5} {t_started or float('nan'):>13.1f} {secs:>15.1f} {steps:>6} "
                  f"{iou if iou is not None else float('nan'):>8.3f}  {e['type']} {e.get('version', '')} "
                  f"{e.get('reason', e.get('message', ''))}")
        job.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
