#!/usr/bin/env python
"""Peak memory (RSS) of an NSM fit, measured, next to the estimate the nsm step checks before it starts
(KneePipelineLib/shape/memory.py ``nsm_fit_bytes``).

Each figure is the peak resident set (``ru_maxrss``) of a fresh child process, on the CPU, one thread:

* ``base``: Python + torch + VTK + our shape code, the full-size published decoder built (latent 512, 5 x 512
  deconvolutions, 128 plane features, MLP 3 x 512, 2 objects: 20.8 M parameters, random weights) and a real
  femur mesh read -- what every fit carries;
* ``fit_<N>``: ``base`` + ``fit_latent`` of the full-size decoder on N points per step (the real femur's
  vertices, repeated / cut to N/2 per surface, two surfaces as a bone+cartilage fit), 2 steps;
* ``mesh_<R>``: our small trained NSM (Testing/fixtures/nsm_small) meshing its mean shape at R (the
  coarse-to-fine narrow band: the grids are n_objects x R^3 float32, independent of the decoder's size);
* ``whole_small``: a complete ``NSM.fit`` of the small model on the femur (ICP, 3 steps, meshes at 256, ASSD).

    python bench/bench_nsm_memory.py            # writes bench/results/nsm_memory-<date>.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEMUR = ROOT.parent / "shared/data/pymskt/femur_meshes/5_RIGHT_femur_Nov_02_2021.vtk"
SMALL = ROOT / "Testing/fixtures/nsm_small"
FULL = dict(latent_size=512, n_objects=2, conv_hidden_dims=(512,) * 5, deep_image_size=2, plane_features=128,
            sdf_hidden_dims=(512,) * 3)


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(kind: str, arg: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from KneePipelineLib.morphometry.mesh import read_mesh
    from KneePipelineLib.shape import fit as F
    from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder
    from KneePipelineLib.shape.meshing import polydata_arrays

    femur = read_mesh(FEMUR)
    pts, _ = polydata_arrays(femur)
    out = {"kind": kind, "arg": arg}
    if kind in ("base", "fit", "fit_bf16"):
        arch = NsmArchitecture(**FULL)
        torch.manual_seed(0)
        dec = build_decoder(arch).eval()
        for p in dec.parameters():
            p.requires_grad_(False)
        out["parameters"] = int(sum(p.numel() for p in dec.parameters()))
        if kind != "base":
            n = int(arg) // 2
            c = pts.mean(0)
            bone = (pts - c) * (0.8 / np.linalg.norm(pts - c, axis=1).max())
            bone = np.resize(bone, (n, 3))            # the real vertices, repeated / cut to n
            from KneePipelineLib.shape.recon import ReconSettings

            surfaces = [F.SurfaceSamples("bone", bone, np.zeros((n, 2))),
                        F.SurfaceSamples("cartilage", bone * 1.02, np.zeros((n, 2)))]
            st = ReconSettings(convergence="num_iterations").with_overrides(iterations=2, samples=2 * n)
            t0 = time.process_time()
            F.fit_latent(dec, surfaces, settings=st, precision="bf16" if kind == "fit_bf16" else "fp32")
            out["cpu_s"] = round(time.process_time() - t0, 2)
            out["points_per_step"] = 2 * n
    elif kind == "mesh":
        from KneePipelineLib.shape import load_nsm

        m = load_nsm(SMALL, device="cpu")
        m.mesh(np.zeros(m.latent_size), resolution=int(arg))
        out["n_objects"] = m.arch.n_objects
    elif kind == "whole_small":
        from KneePipelineLib.shape import load_nsm

        m = load_nsm(SMALL, device="cpu")
        fit = m.fit(femur, None, laterality="right", iterations=3, mesh_resolution=256, threads=1)
        out["fit_points"] = fit.report["fit_points"]
    out["peak_rss_mb"] = round(_peak_mb(), 1)
    return out


def run_child(kind: str, arg: str = "") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, __file__, "--child", kind, arg], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.shape.decoder import NsmArchitecture
    from KneePipelineLib.shape.memory import nsm_fit_bytes

    arch = NsmArchitecture(**FULL)
    figs = {"base": run_child("base")}
    print(figs["base"], flush=True)
    base = figs["base"]["peak_rss_mb"]
    for kind in ("fit",):   # bf16 not measured: its first steps took minutes here (oneDNN), see shape/memory.py
        for n in (10000, 20000, 40000):
            r = run_child(kind, str(n))
            r["above_base_mb"] = round(r["peak_rss_mb"] - base, 1)
            r["estimate_mb"] = round(nsm_fit_bytes(arch, [n // 2, n // 2], samples=n, mesh_resolution=0,
                                                   precision="bf16" if kind == "fit_bf16" else "fp32") / 2 ** 20, 1)
            figs["%s_%d" % (kind, n)] = r
            print(r, flush=True)
    for res in (128, 256):
        r = run_child("mesh", str(res))
        figs["mesh_%d" % res] = r
        print(r, flush=True)
    r = run_child("whole_small")
    figs["whole_small"] = r
    print(r, flush=True)
    write_result("nsm_memory", figs)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")))
    else:
        main()
