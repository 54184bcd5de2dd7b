#!/usr/bin/env python
"""NSM speed: the full-size published architecture (random weights) on a real femur mesh, plus accuracy and
timings of a complete fit of our small trained model (the ASSD of random weights means nothing).

Full-size figures (model 647 layout: latent 512, 5 x 512 deconvs to 64x64, 3 x 128 plane features, MLP 3 x 512,
2 objects): seconds per fitting step with 10 000 samples per surface (bone + cartilage = 20 000 points), from
``--steps`` timed steps after one warm-up step, extrapolated to 2000 steps (the maximum; early stopping usually
ends sooner) and to 300 steps; query throughput (points/s, planes computed once); and the mesh-extraction
time estimated as (points the narrow-band grid evaluates for a real femur surface, counted with the small
model at the same resolution) / (full-size throughput) + the measured contour time. Random weights have no
femur surface to count the band on, hence the estimate; it is labelled as such in the JSON.

Small model (Testing/fixtures/nsm_small): a full fit of the held-out femur 5 with the published sampling
(10 000 vertices per step, patience 50, at most --small-iterations steps) and meshes at --resolution;
ASSD in mm and the time of each stage. Writes bench/results/nsm-<date>.json.

    python bench/bench_nsm.py [--threads 2] [--steps 5] [--device cpu|cuda] [--resolution 256]
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
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--small-iterations", type=int, default=300)
    ap.add_argument("--femur", default=str(ROOT.parent / "shared/data/pymskt/femur_meshes/5_RIGHT_femur_Nov_02_2021.vtk"))
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.shape import fit as F
    from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder
    from KneePipelineLib.shape.meshing import contour, evaluate_grid, polydata_arrays

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    figs = {"threads": args.threads, "device": str(dev), "resolution": args.resolution,
            "note": "wall-clock on a shared machine; other jobs were running (see load_average)"}
    try:
        import os
        figs["load_average_start"] = os.getloadavg()
    except OSError:
        pass
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    if not args.skip_full:
        arch = NsmArchitecture(512, 2, (512,) * 5, 2, 128, (512,) * 3)
        dec = build_decoder(arch).to(dev).eval()
        for p in dec.parameters():
            p.requires_grad_(False)
        pts, _ = polydata_arrays(read(args.femur))
        c = pts.mean(0)
        bone = (pts - c) * (0.8 / np.linalg.norm(pts - c, axis=1).max())
        cart = bone * 1.02                         # a stand-in second surface (timing only)
        surfaces = [F.SurfaceSamples("bone", bone, np.zeros((len(bone), 2))),
                    F.SurfaceSamples("cartilage", cart, np.zeros((len(cart), 2)))]
        F.fit_latent(dec, surfaces, iterations=1, samples=10000, patience=10 ** 9)        # warm-up
        sync()
        t0 = time.perf_counter()
        F.fit_latent(dec, surfaces, iterations=args.steps, samples=10000, patience=10 ** 9)
        sync()
        step = (time.perf_counter() - t0) / args.steps
        q = np.random.default_rng(0).uniform(-1, 1, (100000, 3)).astype(np.float32)
        with torch.inference_mode():
            t0 = time.perf_counter()
            planes = dec.planes(torch.zeros(512, device=dev) + 0.01)
            sync()
            t_planes = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate_grid(dec, planes, q)
        sync()
        rate = len(q) / (time.perf_counter() - t0)
        figs["full_size"] = {"seconds_per_step": round(step, 3), "steps_timed": args.steps,
                             "points_per_step": 20000, "seconds_2000_steps_extrapolated": round(step * 2000, 1),
                             "seconds_300_steps_extrapolated": round(step * 300, 1),
                             "seconds_planes_once": round(t_planes, 3), "query_points_per_second": round(rate)}
        print("full-size model (random weights), %s, %d threads:" % (dev, args.threads))
        print("  %.2f s per fitting step (20 000 points; %d steps timed)" % (step, args.steps))
        print("  2000 steps (maximum) extrapolated: %.0f s; 300 steps: %.0f s" % (step * 2000, step * 300))
        print("  query %.0f points/s (planes once: %.2f s)" % (rate, t_planes))
    small = ROOT / "Testing/fixtures/nsm_small"
    if not args.skip_small and small.is_dir():
        from KneePipelineLib.shape import load_nsm
        from KneePipelineLib.shape.meshing import sdf_volumes

        m = load_nsm(small, device=args.device)
        t0 = time.perf_counter()
        fit = m.fit(read(args.femur), laterality="right", seed=0, iterations=args.small_iterations, samples=10000,
                    patience=50, mesh_resolution=args.resolution)
        total = time.perf_counter() - t0
        stats = {}
        vol = sdf_volumes(m.decoder, m.planes(fit.latent), resolution=args.resolution, stats=stats)
        t0 = time.perf_counter()
        contour(vol[0])
        t_contour = time.perf_counter() - t0
        figs["small_model_fit"] = {"assd_mm": fit.assd_mm, "assd_parts": fit.report.get("assd_parts"),
                                   "iterations": fit.iterations, "seconds_total": round(total, 2),
                                   "timings_s": fit.report.get("timings_s"), "mesh_grid": stats,
                                   "seconds_per_step": round(fit.report["timings_s"]["fit_s"] / fit.iterations, 4)}
        print("small model, held-out femur: ASSD %s mm, %d steps, %.1f s total, stages %s"
              % ({k: round(v, 3) for k, v in fit.assd_mm.items()}, fit.iterations, total, fit.report.get("timings_s")))
        print("  mesh grid %s" % stats)
        if "full_size" in figs:
            est = stats["points_evaluated"] * 2 / figs["full_size"]["query_points_per_second"] + 2 * t_contour
            figs["full_size"]["seconds_meshes_estimated"] = round(est, 1)
            figs["full_size"]["meshes_estimate_basis"] = ("2 objects x points evaluated by the narrow band for the "
                                                          "small model's femur at this resolution / full-size "
                                                          "query rate + 2 x contour time")
            print("  full-size meshes (bone + cartilage) estimated: %.0f s" % est)
    write_result("nsm", figs)


if __name__ == "__main__":
    main()
