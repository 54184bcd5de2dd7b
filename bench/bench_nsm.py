#!/usr/bin/env python
"""NSM speed and accuracy: the full-size published architecture (random weights) on a real femur mesh, and
complete fits of our small trained model (the ASSD of random weights means nothing).

Full size (model 647 layout: latent 512, 5 x 512 deconvs to 64x64, 3 x 128 plane features, MLP 3 x 512,
2 objects), for each thread count in --threads:

* ``parts``: one fitting step split into plane generator (forward + backward to the latent), feature gather
  (forward + backward) and SDF MLP (forward + backward to the features), each with its FLOPs and achieved
  GFLOP/s, fp32 and bf16;
* ``steps``: seconds per ``fit_latent`` step with the default settings (20 000 points per step split across
  the two surfaces: 10 000 each) after a warm-up, wall and CPU,
  for the previous plain-autograd path (``decoder.query``), the default fp32 path and bf16;
* ``query``: grid evaluation throughput (points/s) without gradients, plain vs buffered, fp32 / bf16;
* ``bf16_error``: SDF difference bf16 - fp32 on 100 000 points, and the latent gradient's relative error;
* ``meshes``: full-size mesh-extraction time at 256 and 128, measured by evaluating the full-size model on
  exactly the points the coarse-to-fine narrow band evaluates for a real femur (recorded from the small
  model's fit of femur 5) plus the contour; random weights have no femur surface of their own. The
  bone+cartilage band is somewhat larger than the bone band (cartilage lies on the bone), so this is a
  slight under-estimate for a bone+cartilage model.
* ``projection``: fit (2000 steps, and the small model's early-stopped step count as a typical fit) + mean
  shape (128) + meshes (256) + ICP and ASSD (small-model times: they do not depend on the decoder's size),
  per thread count and precision.

``--steps-only``: just the default step time of the full-size model (wall and CPU seconds, robust to other
jobs) and the fit time projected from ``--typical-iterations`` (writes bench/results/nsm_steps-<date>.json).

Small model (Testing/fixtures/nsm_small): full fits of the held-out femur 5 with the default settings (the
model config's, as the reference), seeds 0 and 1, fp32 and bf16:
iterations, ASSD, latent differences (bf16 vs fp32 against seed-to-seed), and the ASSD of the same latent
meshed at 128 instead of 256. Writes bench/results/nsm-<date>.json.

    python bench/bench_nsm.py [--threads 1,2] [--steps 5] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FEMUR = ROOT.parent / "shared/data/pymskt/femur_meshes/5_RIGHT_femur_Nov_02_2021.vtk"


def read(path):
    from KneePipelineLib.morphometry.mesh import read_mesh

    return read_mesh(path)


def best_of(f, n=2, sync=lambda: None):
    f()
    sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        sync()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def flops(arch, n_points):
    """Multiply-adds x 2 of the plane generator (forward) and the SDF MLP (forward) for n_points."""
    c, s = arch.conv_hidden_dims, arch.deep_image_size
    conv = arch.latent_size * c[0] * s * s
    cin = c[0]
    for ch in c:
        conv += cin * ch * 9 * s * s              # transposed conv: every input pixel x 3x3 x C_in x C_out
        s *= 2
        cin = ch
    conv += cin * 3 * arch.plane_features * 9 * s * s
    dims = [arch.mlp_in] + list(arch.sdf_hidden_dims) + [arch.n_objects]
    mlp = n_points * sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return 2.0 * conv, 2.0 * mlp


def default_steps(F, dec, surfaces, n, prec, sync):
    """(wall s, CPU s) per step of ``fit_latent`` with the default settings (20 000 points per step, split
    across the two surfaces), after a one-step warm-up; CPU seconds are robust to other jobs' load."""
    from KneePipelineLib.shape.recon import ReconSettings

    st = ReconSettings(convergence="num_iterations")
    F.fit_latent(dec, surfaces, settings=st.with_overrides(iterations=1), precision=prec)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    F.fit_latent(dec, surfaces, settings=st.with_overrides(iterations=n), precision=prec)
    sync()
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def steps_only(args, threads, dev, sync):
    """Seconds per default fitting step of the full-size architecture (random weights), and the fit time
    projected from --typical-iterations (the small model's default step count, bench_nsm_reference)."""
    import torch

    from KneePipelineLib.shape import fit as F
    from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder
    from KneePipelineLib.shape.meshing import polydata_arrays

    arch = NsmArchitecture(512, 2, (512,) * 5, 2, 128, (512,) * 3)
    torch.manual_seed(0)
    dec = build_decoder(arch).to(dev).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    pts, _ = polydata_arrays(read(args.femur))
    c = pts.mean(0)
    bone = (pts - c) * (0.8 / np.linalg.norm(pts - c, axis=1).max())
    surfaces = [F.SurfaceSamples("bone", bone, np.zeros((len(bone), 2))),
                F.SurfaceSamples("cartilage", bone * 1.02, np.zeros((len(bone), 2)))]
    out = {}
    for th in threads:
        torch.set_num_threads(th)
        row = {}
        for prec in ("fp32", "bf16"):
            w, cpu = default_steps(F, dec, surfaces, args.steps, prec, sync)
            row[prec] = {"wall_s_per_step": round(w, 3), "cpu_s_per_step": round(cpu, 3)}
            if args.typical_iterations:
                row[prec]["fit_typical_cpu_s"] = round(cpu * args.typical_iterations, 1)
                row[prec]["fit_2000_cpu_s"] = round(cpu * 2000, 1)
        out[str(th)] = row
        print("full size, %d thread(s), default step (20 000 points): %s" % (th, row), flush=True)
    return out


def full_size(args, threads, dev, sync):
    import torch

    from KneePipelineLib.shape import fit as F
    from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder
    from KneePipelineLib.shape.fast import FastEvaluator
    from KneePipelineLib.shape.meshing import polydata_arrays

    arch = NsmArchitecture(512, 2, (512,) * 5, 2, 128, (512,) * 3)
    torch.manual_seed(0)
    dec = build_decoder(arch).to(dev).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    pts, _ = polydata_arrays(read(args.femur))
    c = pts.mean(0)
    bone = (pts - c) * (0.8 / np.linalg.norm(pts - c, axis=1).max())
    cart = bone * 1.02                         # a stand-in second surface (timing only)
    surfaces = [F.SurfaceSamples("bone", bone, np.zeros((len(bone), 2))),
                F.SurfaceSamples("cartilage", cart, np.zeros((len(cart), 2)))]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.concatenate([bone[rng.choice(len(bone), 10000, replace=False)],
                                         cart[rng.choice(len(cart), 10000, replace=False)]]).astype(np.float32)).to(dev)
    f_conv, f_mlp = flops(arch, len(x))
    out = {"flops": {"plane_generator_forward_gflop": round(f_conv / 1e9, 2),
                     "mlp_forward_gflop_20000_points": round(f_mlp / 1e9, 2),
                     "step_gflop": round(2 * (f_conv + f_mlp) / 1e9, 2),
                     "note": "backward to the inputs only (frozen weights) costs the same as the forward"},
           "parts": {}, "steps": {}, "query": {}}
    z = (torch.randn(512, generator=torch.Generator().manual_seed(1)) * 0.01).to(dev)
    q = np.random.default_rng(0).uniform(-1, 1, (100000, 3)).astype(np.float32)
    for th in threads:
        torch.set_num_threads(th)
        parts = {}
        for prec in ("fp32", "bf16"):
            ev = FastEvaluator(dec, prec)
            idx, w = ev.corners(x)
            zz = z.clone().requires_grad_(True)

            def planes_fb():
                pl = ev.planes(zz)
                pl.backward(torch.ones_like(pl) * 1e-3)
            pl = ev.planes(z).detach()
            plg = pl.clone().requires_grad_(True)

            def gather_fb():
                from KneePipelineLib.shape.fast import gather_features
                f = gather_features(arch, plg, idx, w)
                f.backward(torch.ones_like(f))
            feat = ev.sdf(pl, idx, w, x).detach()       # warm the buffers
            from KneePipelineLib.shape.fast import gather_features
            feat = gather_features(arch, pl, idx, w).detach().requires_grad_(True)

            def mlp_fb():
                from KneePipelineLib.shape.fast import FrozenMlp
                y = FrozenMlp.apply(feat, x, ev)
                y.sum().backward()

            def step():
                pred = ev.sdf(ev.planes(zz), idx, w, x).clamp(-0.1, 0.1)
                pred.abs().sum(1).mean().backward()
            t = {"plane_generator_fwd_bwd": best_of(planes_fb, sync=sync),
                 "gather_fwd_bwd": best_of(gather_fb, sync=sync),
                 "mlp_fwd_bwd": best_of(mlp_fb, sync=sync), "step": best_of(step, sync=sync)}
            fl = {"plane_generator_fwd_bwd": 2 * f_conv, "gather_fwd_bwd": None, "mlp_fwd_bwd": 2 * f_mlp,
                  "step": 2 * (f_conv + f_mlp)}
            parts[prec] = {k: {"seconds": round(v, 4),
                               "gflop_per_s": round(fl[k] / v / 1e9, 1) if fl[k] else None} for k, v in t.items()}
        out["parts"][str(th)] = parts

        steps = {}

        def plain_steps(n):      # the previous implementation: autograd through decoder.query (grid_sample)
            zz = z.clone().requires_grad_(True)
            opt = torch.optim.Adam([zz], lr=0.005)
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                pred = dec.query(dec.planes(zz), x).clamp(-0.1, 0.1)
                pred.abs().sum(1).mean().backward()
                opt.step()
        plain_steps(1)
        sync()
        t0 = time.perf_counter()
        plain_steps(args.steps)
        sync()
        steps["plain_autograd_fp32"] = round((time.perf_counter() - t0) / args.steps, 3)
        for prec in ("fp32", "bf16"):
            w, c = default_steps(F, dec, surfaces, args.steps, prec, sync)
            steps[prec] = round(w, 3)
            steps[prec + "_cpu_s"] = round(c, 3)
        out["steps"][str(th)] = steps

        from KneePipelineLib.shape.meshing import evaluate_grid
        with torch.inference_mode():
            planes = dec.planes(z)
        qd = {}

        def plain_query():
            with torch.inference_mode():
                for i in range(0, len(q), 65536):
                    dec.query(planes, torch.from_numpy(q[i:i + 65536]).to(dev)).cpu()
        qd["plain_fp32"] = round(len(q) / best_of(plain_query, 1, sync))
        ref = evaluate_grid(dec, planes, q)
        qd["fp32"] = round(len(q) / best_of(lambda: evaluate_grid(dec, planes, q), 1, sync))
        qd["bf16"] = round(len(q) / best_of(lambda: evaluate_grid(dec, planes, q, precision="bf16"), 1, sync))
        out["query"][str(th)] = {"points_per_second": qd}
        print("full size, %d thread(s): s/step %s; parts %s; query pts/s %s" % (th, steps, {
            p: {k: v["seconds"] for k, v in d.items()} for p, d in parts.items()}, qd), flush=True)

    # bf16 error against fp32 (same random weights)
    b16 = evaluate_grid(dec, planes, q, precision="bf16")
    rng1 = np.random.default_rng(1)
    x1 = np.concatenate([bone[rng1.choice(len(bone), 10000, replace=False)],
                         cart[rng1.choice(len(cart), 10000, replace=False)]])
    x1 = torch.from_numpy(x1.astype(np.float32)).to(dev)
    grads = []
    for prec, xx in (("fp32", x), ("bf16", x), ("fp32", x1)):   # loss as in the fit, targets 0
        ev = FastEvaluator(dec, prec)
        idx, w = ev.corners(xx)
        zz = z.clone().requires_grad_(True)
        ev.sdf(ev.planes(zz), idx, w, xx).clamp(-0.1, 0.1).abs().sum(1).mean().backward()
        grads.append(zz.grad.cpu().numpy())
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
    d = b16 - ref
    out["bf16_error"] = {"sdf_max_abs": float(np.abs(d).max()), "sdf_rms": float(np.sqrt((d ** 2).mean())),
                         "fp32_sdf_std": float(ref.std()),
                         "latent_grad_relative_error": rel(grads[1], grads[0]),
                         "latent_grad_relative_change_fp32_other_10000_vertex_draw": rel(grads[2], grads[0]),
                         "note": "random weights; SDF in normalised units (tanh output); the second gradient "
                                 "figure is the sampling noise of the published procedure, for scale"}
    print("bf16 vs fp32 (full size, random weights): %s" % out["bf16_error"], flush=True)
    return dec, planes, out


def small_model(args, threads):
    import torch

    from KneePipelineLib.shape import fit as F
    from KneePipelineLib.shape import load_nsm, meshing
    from KneePipelineLib.shape.meshing import polydata_arrays
    from KneePipelineLib.shape.prepare import prepare_bone, transform_arrays

    torch.set_num_threads(1)
    m = load_nsm(ROOT / "Testing/fixtures/nsm_small", device=args.device)
    femur = read(args.femur)
    fits, out = {}, {"fits": {}}
    for prec in ("fp32", "bf16"):
        for seed in (0, 1):
            t0 = time.perf_counter()
            f = m.fit(femur, laterality="right", seed=seed, iterations=args.small_iterations,
                      mesh_resolution=args.resolution, precision=prec)
            fits[(prec, seed)] = f
            out["fits"]["%s_seed%d" % (prec, seed)] = {
                "iterations": f.iterations, "assd_mm": round(f.assd_mm["bone"], 4), "best_loss": f.best_loss,
                "seconds_total": round(time.perf_counter() - t0, 2), "timings_s": f.report.get("timings_s"),
                "seconds_per_step": round(f.report["timings_s"]["fit_s"] / f.iterations, 4)}
            print("small model %s seed %d: %s" % (prec, seed, out["fits"]["%s_seed%d" % (prec, seed)]), flush=True)
    n = lambda a, b: float(np.linalg.norm(fits[a].latent - fits[b].latent))  # noqa: E731
    out["latent"] = {"norm_fp32_seed0": float(np.linalg.norm(fits[("fp32", 0)].latent)),
                     "bf16_vs_fp32_seed0": n(("bf16", 0), ("fp32", 0)),
                     "bf16_vs_fp32_seed1": n(("bf16", 1), ("fp32", 1)),
                     "fp32_seed0_vs_seed1": n(("fp32", 0), ("fp32", 1))}
    out["assd_bf16_minus_fp32_mm"] = [round(fits[("bf16", s)].assd_mm["bone"] - fits[("fp32", s)].assd_mm["bone"], 5)
                                      for s in (0, 1)]
    # the same fp32 latent meshed at 128 and at --resolution: ASSD and the points the narrow band evaluates
    f0 = fits[("fp32", 0)]
    bone_r, bone_tri, mirror, rep = prepare_bone(femur, "right")
    recorded = {}
    orig = meshing.evaluate_grid
    res_list = sorted({args.resolution, 128}, reverse=True)
    for res in res_list:
        pts_log = []

        def rec(decoder, planes, pts, chunk=16384, precision="fp32", _log=pts_log):
            _log.append(np.asarray(pts, np.float32))
            return orig(decoder, planes, pts, chunk, precision)
        meshing.evaluate_grid = rec
        try:
            t0 = time.perf_counter()
            stats = {}
            vols = meshing.sdf_volumes(m.decoder, m.planes(f0.latent), resolution=res, stats=stats)
            t_eval = time.perf_counter() - t0
        finally:
            meshing.evaluate_grid = orig
        t0 = time.perf_counter()
        meshing.contour(vols[0])
        t_contour = time.perf_counter() - t0
        mesh = m.mesh(f0.latent, resolution=res, transform=f0.transform)["bone"]
        rp, rt = transform_arrays(mirror, *polydata_arrays(mesh))
        a, _ = F.clipped_assd(bone_r, bone_tri, rp, rt, rep.get("clip_plane_mm"))
        recorded[res] = {"points": np.concatenate(pts_log), "contour_s": t_contour}
        out.setdefault("mesh_resolution", {})[str(res)] = {
            "assd_mm": round(a, 4), "points_evaluated": stats["points_evaluated"], "levels": stats["levels"],
            "fraction_of_full_grid": round(stats["fraction_of_full_grid"], 4),
            "small_model_eval_s": round(t_eval, 2), "contour_s": round(t_contour, 2)}
    print("small model meshes of one latent: %s" % out["mesh_resolution"], flush=True)
    return out, recorded


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts for the full-size model")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--small-iterations", type=int, default=None, help="default: the model config's")
    ap.add_argument("--steps-only", action="store_true",
                    help="only the full-size default step time (wall and CPU), and the projected fit time")
    ap.add_argument("--typical-iterations", type=int, help="default-fit step count for the projection")
    ap.add_argument("--femur", default=str(FEMUR))
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from KneePipelineLib.benchinfo import write_result

    threads = [int(t) for t in args.threads.split(",")]
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    figs = {"threads": threads, "device": str(dev), "resolution": args.resolution,
            "cpu_flags": {k: (k in flags) for k in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
            "torch": torch.__version__, "load_average_start": os.getloadavg(),
            "note": "wall-clock; see load_average for other jobs on the machine"}
    t_all = time.perf_counter()
    if args.steps_only:
        figs["steps_only"] = steps_only(args, threads, dev, sync)
        figs["typical_iterations"] = args.typical_iterations
        figs["bench_seconds"] = round(time.perf_counter() - t_all, 1)
        figs["load_average_end"] = os.getloadavg()
        write_result("nsm_steps", figs)
        return
    small, recorded = (None, {})
    if not args.skip_small and (ROOT / "Testing/fixtures/nsm_small").is_dir():
        small, recorded = small_model(args, threads)
        figs["small_model"] = small
    if not args.skip_full:
        from KneePipelineLib.shape.meshing import evaluate_grid

        dec, planes, full = full_size(args, threads, dev, sync)
        if recorded:
            full["meshes"] = {}
            for th in threads:
                torch.set_num_threads(th)
                mt = {}
                for res, r in recorded.items():
                    t0 = time.perf_counter()
                    evaluate_grid(dec, planes, r["points"])
                    sync()
                    mt[str(res)] = round(time.perf_counter() - t0 + 2 * r["contour_s"], 2)
                full["meshes"][str(th)] = {"seconds_bone_cartilage_meshes_by_resolution": mt,
                                           "points_by_resolution": {str(k): len(v["points"])
                                                                    for k, v in recorded.items()}}
            typical = int(np.mean([small["fits"]["fp32_seed%d" % s]["iterations"] for s in (0, 1)]))
            proj = {"typical_iterations": typical,
                    "includes": "fit + mean shape (128 band) + meshes at --resolution + ICP + ASSD of two surfaces",
                    "typical_iterations_basis": "mean early-stopped step count of the small model's fp32 fits "
                                                "(published procedure); the full-size model's is unknown here"}
            for th in threads:
                mesh = full["meshes"][str(th)]["seconds_bone_cartilage_meshes_by_resolution"]
                tm = small["fits"]["fp32_seed0"]["timings_s"]
                other = tm["icp_s"] + 2 * tm["assd_s"]          # ICP + ASSD of two surfaces (model-size independent)
                extra = mesh.get(str(args.resolution), float("nan")) + mesh.get("128", 0.0) + other
                for prec in ("fp32", "bf16"):
                    s = full["steps"][str(th)][prec]
                    proj["%d_threads_%s" % (th, prec)] = {
                        "fit_2000_steps_plus_meshes_s": round(2000 * s + extra, 1),
                        "fit_typical_plus_meshes_s": round(typical * s + extra, 1)}
            full["projection"] = proj
            print("projection (fit + mean shape + meshes): %s" % proj, flush=True)
        figs["full_size"] = full
    figs["bench_seconds"] = round(time.perf_counter() - t_all, 1)
    write_result("nsm", figs)


if __name__ == "__main__":
    main()
