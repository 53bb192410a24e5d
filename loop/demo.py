"""The demo project: a synthetic NAIP-like scene over real data-center layouts, a few seed labels
and a first small model, so ``dclabel app`` has something real to show on a machine with no NAIP.
"""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio

from loop.demo_config import DemoConfig, default_demo_dir
from loop.errors import ProjectError
from loop.project import Project
from loop.training_chips import reviewed_training_chips
from model.ground import median_pixel_size_m
from model.scene import NAIP_RES_M
from model.synth import SynthConfig, generate_scene
from model.train import TrainConfig, fit


def ensure_demo_project(root: str | os.PathLike | None = None, config: DemoConfig | None = None,
                        progress=None) -> Path:
    """Create the demo project if it is missing or incomplete; return its folder.

    Steps (each skipped when already done, so an interrupted run resumes): draw the scene and its
    ground truth; create the project; import the ground truth of ``seed_fraction`` of the chips
    as reviewed labels; train and publish a first model.

    Args:
        root: Project folder (default :func:`default_demo_dir`).
        config: What to put in it.
        progress: ``progress(done, total, {"step": ...})``.

    Returns:
        The project folder.
    """
    config = config or DemoConfig()
    root = Path(root) if root is not None else default_demo_dir()
    report = progress or (lambda *_: None)
    tif, truth = root / "scenes" / "demo.tif", root / "truth.geojson"
    if root.exists() and not root.is_dir():
        raise ProjectError(f"--output-dir {root} is a file; give a folder for the demo project.")
    if root.is_dir() and any(root.iterdir()) and not (tif.exists() or truth.exists()):
        # another project (or any folder in use): the demo would add its scene and mark chips reviewed
        raise ProjectError(f"--output-dir {root} is not empty and holds no demo project; give a new or "
                           "empty folder (the demo never writes into another project).")
    if not tif.exists() or not truth.exists():
        report(0, 4, {"step": "drawing the synthetic scene"})
        synth = SynthConfig(width=config.size, height=config.size, seed=config.seed, site=config.site)
        generate_scene(tif, truth, synth)
    # scenes the user adds (e.g. 0.3 m NAIP) are read at the demo model's pixel size
    project = Project.create(root, resolution_m=NAIP_RES_M)
    # the demo scene, added on the first run and found on later ones (silently: `make run` opens the
    # demo every time), not whichever scene the user added first
    scene = project.add_scene(tif)
    store = project.labels
    if not store.reviewed_chips(scene.scene_id):
        report(1, 4, {"step": "importing seed labels"})
        seed_labels(project, scene.scene_id, truth, config.seed_fraction)
    if config.initial_epochs > 0 and project.registry.current() is None:
        report(2, 4, {"step": "training the first model"})
        chips = reviewed_training_chips(project)
        rng = np.random.default_rng(config.seed)
        order = rng.permutation(len(chips))
        n_val = max(1, len(chips) // 5)
        pairs = [(c.image, c.mask) for c in chips]
        ckpt = fit([pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]],
                   TrainConfig(epochs=config.initial_epochs, base_channels=config.base_channels,
                               batch_size=4, lr=3e-3, pos_weight=2.0, seed=config.seed, gate_seconds=10.0,
                               resolution_m=median_pixel_size_m(project.scenes)))
        ckpt.data_version = str(store.version)
        report(3, 4, {"step": "publishing the first model"})
        project.registry.publish(ckpt)
    report(4, 4, {"step": "ready"})
    return root


def seed_labels(project: Project, scene_id: str, truth_path: Path, fraction: float) -> int:
    """Import ground truth for ``fraction`` of a scene's chips and mark those chips reviewed.

    The chips are the ones a person would label first: two thirds are the chips with the most
    building area (data centers and look-alike hard negatives), one third is spread evenly over
    the remaining chips (mostly background). Every footprint touching a chosen chip is imported
    whole, so a reviewed chip holds all of its data centers (the rest of it is truly background).

    Returns:
        Number of chips marked reviewed.
    """
    from shapely.geometry import box

    scene = project.scene(scene_id)
    store = project.labels
    truth = gpd.read_file(truth_path).to_crs(scene.crs)
    windows = project.chip_windows(scene_id)
    n = max(1, round(fraction * len(windows)))
    area = []
    for w in windows:
        b = box(*rasterio.windows.bounds(w, scene.transform))
        area.append(sum(truth.geometry.iloc[i].intersection(b).area for i in truth.sindex.query(b)))
    order = sorted(range(len(windows)), key=lambda i: -area[i])
    busy = order[: -(-2 * n // 3)]
    rest = order[len(busy) :]
    step = max(1, len(rest) // max(1, n - len(busy)))
    chosen = sorted(busy + rest[::step][: n - len(busy)])
    chips = [windows[i] for i in chosen]
    boxes = [rasterio.windows.bounds(w, scene.transform) for w in chips]
    touched = sorted({int(i) for b in boxes for i in truth.sindex.query(box(*b))})
    for i in touched:
        row = truth.iloc[i]
        store.add_footprint(scene_id, row.geometry, cls=str(row["class"]), source="imported")
    for w, b in zip(chips, boxes, strict=True):
        holds_positive = any(
            truth.iloc[i]["class"] == "datacenter" and truth.iloc[i].geometry.intersects(box(*b))
            for i in truth.sindex.query(box(*b))
        )
        store.mark_reviewed(scene_id, w, empty=not holds_positive)
    return len(chips)
