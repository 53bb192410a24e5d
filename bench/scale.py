"""Scale out: batch detection on 2 DDP processes vs 1 process on this CPU, and the cost of Virginia.

Runs ``dclabel batch-detect`` over the same scenes three ways, each a fresh command (process start
included):

- one process (the default path, torch using every core);
- Lightning's engine, ``--accelerator cpu --devices 2 --strategy ddp`` (one thread per rank);
- optionally (``--fast``) the DDP run on the fast path.

It checks that the DDP GeoJSON equals the one-process GeoJSON (every vertex within 1e-6 m), prints
wall times and their ratio, then projects the cost of detecting all of Virginia (~110,000 km^2 of
NAIP at 0.6 m) on this CPU machine, on one GPU and on N GPUs from the measured seconds per km^2.
GPU figures are a projection from the U-Net's counted multiply-adds and an assumed sustained GPU
rate (unless a CUDA GPU is present, then it is measured).

Usage: python bench/scale.py [--size 1024] [--scenes 2] [--checkpoint CKPT] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import shapely
import torch
from pyproj import Transformer
from shapely.geometry import shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, synthetic_scene  # noqa: E402

from model.checkpoint import (  # noqa: E402
    Checkpoint,
    Normalization,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from model.unet import UNet, UNetConfig  # noqa: E402

VIRGINIA_KM2 = 110_000.0
DCLABEL = [sys.executable, "-m", "labeler.cli", "batch-detect"]


def random_checkpoint(path: Path) -> Path:
    """The seed's U-Net (base 32) with random weights (speed does not depend on the weights)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig())
    with torch.no_grad():
        net.head.bias.fill_(-0.5)
    return save_checkpoint(Checkpoint(net.state_dict(), net.config, Normalization((100.0,) * 4, (40.0,) * 4)), path)


def unet_macs_per_px(ckpt: Checkpoint, tile: int = 256) -> float:
    """Multiply-adds per input pixel of the checkpoint's U-Net (convolutions only), counted with hooks."""
    model = build_model(ckpt, "cpu")
    total = [0]

    def hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        total[0] += out.numel() * k

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    with torch.inference_mode():
        model(torch.zeros(1, 4, tile, tile))
    for h in hs:
        h.remove()
    return total[0] / tile**2


def geojson_rings(path: Path) -> list[np.ndarray]:
    feats = json.loads(path.read_text())["features"]
    feats.sort(key=lambda f: (f["properties"]["centroid_lat"], f["properties"]["centroid_lon"]))
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    return [np.column_stack(to_utm.transform(*shapely.get_coordinates(shape(f["geometry"])).T)) for f in feats]


def max_vertex_gap(a: Path, b: Path) -> float:
    """Largest vertex distance (m) between two detection GeoJSONs; inf if they differ in shape."""
    ra, rb = geojson_rings(a), geojson_rings(b)
    if len(ra) != len(rb) or any(x.shape != y.shape for x, y in zip(ra, rb, strict=True)):
        return float("inf")
    return max((float(np.abs(x - y).max()) for x, y in zip(ra, rb, strict=True)), default=0.0)


def run(args: list[str], out: Path, threads: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run(DCLABEL + args + ["--output-dir", str(out)], capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"batch-detect failed:\n{res.stderr[-3000:]}")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="scene side in px")
    ap.add_argument("--scenes", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--fast", action="store_true", help="also time the DDP run on the fast path")
    ap.add_argument("--gpu-tflops", type=float, default=25.0,
                    help="assumed sustained GPU rate for the projection (e.g. an A10G/L4 in bf16 at ~20-40%% of peak)")
    ap.add_argument("--gpus", type=int, default=8, help="N of the N-GPU projection")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt_path = a.checkpoint if a.checkpoint and a.checkpoint.exists() else random_checkpoint(OUT / "bench_random_base32.pt")
    ckpt = load_checkpoint(ckpt_path)
    folder = OUT / f"scale_scenes_{a.size}"
    folder.mkdir(exist_ok=True)
    for i in range(a.scenes):
        dst = folder / f"s{i}.tif"
        if not dst.exists():
            shutil.copy(synthetic_scene(a.size, seed=10 + i), dst)
    km2 = a.scenes * a.size**2 * 0.36 / 1e6
    cores = os.cpu_count() or 1
    common = ["--checkpoint", str(ckpt_path), "--input-dir", str(folder)]
    print(f"{a.scenes} scenes of {a.size}x{a.size} px ({km2:.2f} km^2), checkpoint {ckpt_path.name} "
          f"(U-Net base {ckpt.unet.base_channels}, depth {ckpt.unet.depth}), {cores} CPU cores, load {os.getloadavg()[0]:.1f}")
    t1 = run(common, OUT / "scale_one", cores)
    print(f"1 process ({cores} threads)        : {t1:7.1f} s, {t1 / km2:7.1f} s/km^2", flush=True)
    ddp = common + ["--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    t2 = run(ddp, OUT / "scale_ddp", max(1, cores // 2))
    gap = max(max_vertex_gap(OUT / "scale_one" / f"s{i}.geojson", OUT / "scale_ddp" / f"s{i}.geojson")
              for i in range(a.scenes))
    print(f"DDP, 2 processes ({max(1, cores // 2)} thread each): {t2:7.1f} s, {t2 / km2:7.1f} s/km^2 | "
          f"1-process / DDP wall time {t1 / t2:.2f}x | GeoJSON max vertex gap {gap:.2e} m "
          f"({'equal' if gap < 1e-6 else 'DIFFERENT'})", flush=True)
    t_fast = None
    if a.fast:
        t_fast = run(ddp + ["--fast"], OUT / "scale_ddp_fast", max(1, cores // 2))
        print(f"DDP, 2 processes, --fast          : {t_fast:7.1f} s, {t_fast / km2:7.1f} s/km^2 "
              f"({t1 / t_fast:.2f}x the 1-process exact run)", flush=True)

    # Projection of Virginia.
    macs = unet_macs_per_px(ckpt)
    px_per_km2 = 1e6 / 0.36 * (256 / 224) ** 2  # tiles overlap by 32 px: 1.31 forward px per scene px
    flop_per_km2 = 2 * macs * px_per_km2
    best_cpu = min(t1, t2, t_fast or float("inf")) / km2
    cpu_tflops = flop_per_km2 / (t1 / km2) / 1e12
    print(f"\nU-Net: {macs / 1e3:.1f} kMAC per input px, {flop_per_km2 / 1e12:.2f} TFLOP per km^2 "
          f"(with tile overlap); this CPU sustains {cpu_tflops * 1e3:.0f} GFLOP/s end to end")
    print(f"Virginia ({VIRGINIA_KM2:,.0f} km^2 of NAIP at 0.6 m = {VIRGINIA_KM2 * 1e6 / 0.36 / 1e9:.0f} Gpx, "
          f"{VIRGINIA_KM2 * 1e6 / 0.36 * 4 / 1e12:.1f} TB of 4-band uint8):")
    print(f"  this {cores}-core CPU machine, exact      : {VIRGINIA_KM2 * t1 / km2 / 86400:8.1f} days (measured {t1 / km2:.1f} s/km^2)")
    if best_cpu < t1 / km2:
        print(f"  this CPU machine, best measured  : {VIRGINIA_KM2 * best_cpu / 86400:8.1f} days ({best_cpu:.1f} s/km^2)")
    if torch.cuda.is_available():
        print("  a CUDA GPU is present: run `dclabel batch-detect --accelerator gpu --devices N --strategy ddp` "
              "on a sample to measure instead of projecting")
    gpu_s_km2 = flop_per_km2 / (a.gpu_tflops * 1e12)
    io_s_km2 = 1e6 / 0.36 * 4 / 400e6  # reading + decoding ~400 MB/s of imagery per GPU host (assumed)
    per_gpu = max(gpu_s_km2, io_s_km2)
    print(f"  1 GPU (PROJECTION, assumed {a.gpu_tflops:g} TFLOP/s sustained; reading at ~400 MB/s assumed): "
          f"{VIRGINIA_KM2 * per_gpu / 3600:8.1f} h ({per_gpu:.3f} s/km^2, "
          f"{'compute' if gpu_s_km2 >= io_s_km2 else 'I/O'}-bound)")
    print(f"  {a.gpus} GPUs (PROJECTION, linear DDP scaling over tiles, I/O per host assumed to scale): "
          f"{VIRGINIA_KM2 * per_gpu / a.gpus / 3600:8.1f} h, plus blend + vectorize (spread over ranks by scene)")


if __name__ == "__main__":
    main()
