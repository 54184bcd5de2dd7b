#!/usr/bin/env python
"""Train a small triplanar NSM (bone only) on the pymskt femur meshes; save it in the published format.

    python tools/train_small_nsm.py --meshes ../shared/data/pymskt/femur_meshes --out Testing/fixtures/nsm_small

Data: the five right femurs (mm). Femur HOLDOUT (default 5) is left out for the tests. The others are
similarity-registered (our ICP) onto the first one, normalised (centroid at 0, max radius 0.8) and
augmented with small random rotations (<= 4 deg) and anisotropic scalings (+-8 % per axis), so the
latent learns shape variation beyond four examples. SDF samples per shape (DeepSDF style): surface
points (target 0), Gaussian perturbations of surface points with sigma 0.003 / 0.01 / 0.03 / 0.08
normalised units, uniform points in the shape's bounding box (many of them inside: without them the
interior is barely constrained and the model learns SDF ~ 0 inside the bone, which gives spurious
internal zero crossings) and uniform points in [-1, 1]^3; signed distance by vtkImplicitPolyDataDistance.
Auto-decoder training: one latent per shape, L1 loss with +-0.1 clamp, small latent penalty, ``--steps``
Adam steps of ``--shapes-per-step`` shapes x ``--points`` points, learning rate decayed x0.3 at 60 % and
85 % of the steps. Afterwards the mean training latent is folded into the first Linear's bias so that
the zero latent decodes the mean shape (the fit registers to it). Deterministic for --seed on CPU with
one thread. The committed fixture's command line, time and losses are in its training_info.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder  # noqa: E402
from KneePipelineLib.shape.fit import signed_distance  # noqa: E402
from KneePipelineLib.shape.icp import apply, similarity_icp  # noqa: E402
from KneePipelineLib.shape.meshing import polydata_arrays  # noqa: E402
from KneePipelineLib.shape.model import save_nsm  # noqa: E402

ARCH = NsmArchitecture(latent_size=16, n_objects=1, conv_hidden_dims=(32, 32, 32, 32, 32), deep_image_size=2,
                       plane_features=16, sdf_hidden_dims=(128, 128, 128), object_names=("bone",))


def read(path):
    import vtk

    r = vtk.vtkPolyDataReader()
    r.SetFileName(str(path))
    r.Update()
    return polydata_arrays(r.GetOutput())


def rotation(rng, max_deg):
    ax = rng.normal(size=3)
    ax /= np.linalg.norm(ax)
    ang = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * k @ k


def surface_samples(pts, tri, n, rng):
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    area = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    f = rng.choice(len(tri), n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[f] + u[:, None] * (b[f] - a[f]) + v[:, None] * (c[f] - a[f])


def make_shapes(paths, n_aug, rng):
    base = [read(p) for p in paths]
    ref_pts = base[0][0]
    c0 = ref_pts.mean(0)
    s0 = 0.8 / np.linalg.norm(ref_pts - c0, axis=1).max()
    shapes = []
    for k, (pts, tri) in enumerate(base):
        norm_ref = (ref_pts - c0) * s0
        t = similarity_icp(pts, tri, norm_ref, base[0][1], iterations=100, landmarks=2000)
        p = apply(t, pts)
        shapes.append((p, tri))
        for _ in range(n_aug):
            m = rotation(rng, 4.0) @ np.diag(rng.uniform(0.92, 1.08, 3))
            q = (p - p.mean(0)) @ m.T + p.mean(0)
            shapes.append((q, tri))
    return shapes


def sdf_data(shapes, n_per_shape, rng):
    data = []
    for pts, tri in shapes:
        s = surface_samples(pts, tri, n_per_shape, rng)
        parts = [s]
        for sigma, frac in ((0.003, 1.0), (0.01, 1.0), (0.03, 0.5), (0.08, 0.25)):
            q = surface_samples(pts, tri, int(n_per_shape * frac), rng)
            parts.append(q + rng.normal(scale=sigma, size=q.shape))
        lo, hi = pts.min(0), pts.max(0)
        parts.append(rng.uniform(lo, hi, size=(n_per_shape // 2, 3)))
        parts.append(rng.uniform(-1, 1, size=(n_per_shape // 4, 3)))
        x = np.concatenate(parts)
        d = signed_distance(x, pts, tri)
        d[: len(s)] = 0.0
        data.append((x.astype(np.float32), d.astype(np.float32)))
    return data


def batched_planes(dec, lat):
    """(B, 3, F, R, R) planes of B latents in one pass (same layers as TriplanarDecoder.planes)."""
    import torch

    a = dec.arch
    x = dec.fc(lat).view(len(lat), a.conv_hidden_dims[0], a.deep_image_size, a.deep_image_size)
    for deconv, norm in zip(dec.deconvs, dec.norms):
        x = norm(deconv(x))
    x = torch.tanh(dec.final(x))
    return x.view(len(lat), 3, a.plane_features, x.shape[-2], x.shape[-1])


def train(data, steps, seed, shapes_per_step=4, points=6000, log=print):
    import torch

    torch.manual_seed(seed)
    dec = build_decoder(ARCH)
    lat = torch.nn.Parameter(torch.randn(len(data), ARCH.latent_size) * 0.01)
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": 1e-3}, {"params": [lat], "lr": 2e-3}])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.6 * steps), int(0.85 * steps)], gamma=0.3)
    xs = [torch.from_numpy(x) for x, _ in data]
    ds = [torch.from_numpy(d).clamp(-0.1, 0.1) for _, d in data]
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    run = []
    for step in range(steps):
        opt.zero_grad()
        js = torch.randint(0, len(data), (shapes_per_step,), generator=g).tolist()
        planes = batched_planes(dec, lat[js])                     # one generator pass for all shapes
        loss = 0.0
        for b, j in enumerate(js):
            idx = torch.randint(0, len(xs[j]), (points,), generator=g)
            pred = dec.query(planes[b], xs[j][idx]).clamp(-0.1, 0.1)[:, 0]
            loss = loss + (pred - ds[j][idx]).abs().mean() + 1e-4 * (lat[j] ** 2).sum()
        loss.backward()
        opt.step()
        sched.step()
        run.append(float(loss.detach()) / shapes_per_step)
        if step % 100 == 0 or step == steps - 1:
            log("step %d loss %.5f (%.0f s)" % (step, float(np.mean(run[-100:])), time.time() - t0), flush=True)
    return dec, lat.detach(), float(np.mean(run[-100:]))


def centre_latents(dec, lat):
    """Fold the mean latent into fc.bias (fc is linear in the latent): the zero latent then decodes the
    mean training latent's shape, and the returned latents are centred."""
    import torch

    mean = lat.mean(0)
    with torch.no_grad():
        dec.fc.bias += dec.fc.weight @ mean
    return lat - mean


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", default=str(Path(__file__).resolve().parents[2] / "shared/data/pymskt/femur_meshes"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--holdout", type=int, default=5)
    ap.add_argument("--augment", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--points", type=int, default=16000, help="surface samples per shape (plus perturbed ones)")
    ap.add_argument("--batch-points", type=int, default=6000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    paths = sorted(glob.glob(str(Path(args.meshes) / "*_RIGHT_femur_*.vtk")))
    train_paths = [p for p in paths if not Path(p).name.startswith("%d_" % args.holdout)]
    rng = np.random.default_rng(args.seed)
    shapes = make_shapes(train_paths, args.augment, rng)
    data = sdf_data(shapes, args.points, rng)
    t_data = time.time() - t0
    print("%d shapes, %.1f s data" % (len(shapes), t_data))
    dec, lat, loss = train(data, args.steps, args.seed, points=args.batch_points)
    lat = centre_latents(dec, lat)
    save_nsm(dec.eval(), args.out, epoch=args.steps)
    info = {"trained_on": [Path(p).name for p in train_paths], "held_out": args.holdout, "augment": args.augment,
            "steps": args.steps, "points": args.points, "batch_points": args.batch_points, "threads": args.threads,
            "final_loss": loss, "seed": args.seed, "seconds_data": round(t_data, 1),
            "seconds": round(time.time() - t0, 1), "latent_norms": [float(v) for v in lat.norm(dim=1)],
            "script": "tools/train_small_nsm.py"}
    (Path(args.out) / "training_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
