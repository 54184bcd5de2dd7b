#!/usr/bin/env python
"""NSM speed: the full-size published architecture (random weights) on a real femur mesh.

Prints seconds per fitting step (20 timed steps after 2 warm-up steps, 10 000 samples per surface,
bone + cartilage = 2 objects as in model 647, so 20 000 points per step), the extrapolation to 2000
steps (the maximum; early stopping usually ends sooner) and the mesh-extraction time (coarse 64^3 +
fine 2/255 band). Random weights make the ASSD of the full-size model meaningless, so the ASSD line
comes from a complete fit of the committed small model (Testing/fixtures/nsm_small) to the held-out
femur. Writes bench/results/nsm-<date>.json.

    python bench/bench_nsm.py [--threads 2] [--steps 20] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read(path):
    from KneePipelineLib.morphometry.mesh import read_mesh

    return read_mesh(path)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--femur", default=str(ROOT.parent / "shared/data/pymskt/femur_meshes/5_RIGHT_femur_Nov_02_2021.vtk"))
    ap.add_argument("--skip-small", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.shape import fit as F
    from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder
    from KneePipelineLib.shape.meshing import meshes_from_planes, polydata_arrays

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    arch = NsmArchitecture(512, 2, (512,) * 5, 2, 128, (512,) * 3)
    dec = build_decoder(arch).to(dev).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    pts, tri = polydata_arrays(read(args.femur))
    c = pts.mean(0)
    s = 0.8 / np.linalg.norm(pts - c, axis=1).max()
    bone = (pts - c) * s
    cart = bone * 1.02                         # a stand-in second surface (timing only)
    surfaces = [F.SurfaceSamples("bone", bone, np.zeros((len(bone), 2))),
                F.SurfaceSamples("cartilage", cart, np.zeros((len(cart), 2)))]
    figs = {"threads": args.threads, "device": str(dev), "points_per_step": 20000}
    F.fit_latent(dec, surfaces, iterations=2, samples=10000, patience=10 ** 9)        # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    F.fit_latent(dec, surfaces, iterations=args.steps, samples=10000, patience=10 ** 9)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    step = (time.perf_counter() - t0) / args.steps
    figs["seconds_per_step"] = round(step, 4)
    figs["seconds_2000_steps_extrapolated"] = round(step * 2000, 1)
    figs["steps_timed"] = args.steps
    with torch.inference_mode():
        t0 = time.perf_counter()
        planes = dec.planes(torch.zeros(512, device=dev) + 0.01)
        figs["seconds_planes_once"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    meshes = meshes_from_planes(dec, planes, resolution=256, coarse=64)
    figs["seconds_mesh_extraction_256"] = round(time.perf_counter() - t0, 2)
    figs["mesh_points_random_weights"] = {k: int(v.GetNumberOfPoints()) for k, v in meshes.items()}
    print("full-size model (random weights), %s, %d threads:" % (dev, args.threads))
    print("  %.3f s per fitting step (20 000 points), %d steps timed" % (step, args.steps))
    print("  2000 steps (maximum) extrapolated: %.0f s" % (step * 2000))
    print("  mesh extraction (64^3 coarse + 2/255 band): %.1f s" % figs["seconds_mesh_extraction_256"])
    small = ROOT / "Testing/fixtures/nsm_small"
    if not args.skip_small and small.is_dir():
        from KneePipelineLib.shape import load_nsm

        m = load_nsm(small, device=args.device)
        t0 = time.perf_counter()
        fit = m.fit(read(args.femur), laterality="right", seed=0, iterations=300, samples=10000)
        figs["small_model_fit"] = {"assd_mm": fit.assd_mm, "iterations": fit.iterations,
                                   "seconds": round(time.perf_counter() - t0, 2)}
        print("  small model, held-out femur: ASSD %s mm, %d steps, %.1f s"
              % ({k: round(v, 3) for k, v in fit.assd_mm.items()}, fit.iterations, time.perf_counter() - t0))
    write_result("nsm", figs)


if __name__ == "__main__":
    main()
