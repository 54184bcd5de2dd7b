#!/usr/bin/env python
"""Train a small triplanar NSM (bone only) on the pymskt femur meshes; save it in the published format.

    python tools/train_small_nsm.py --meshes ../shared/data/pymskt/femur_meshes --out Testing/fixtures/nsm_small

Data: the five right femurs (mm). Femur HOLDOUT (default 5) is left out for the tests. The others are
similarity-registered (our ICP) onto the first one, normalised (centroid at 0, max radius 0.8) and
augmented with small random rotations (<= 4 deg) and anisotropic scalings (+-6 % per axis), so the
latent learns shape variation beyond four examples. SDF samples: surface points with Gaussian noise
(sigma 0.004 and 0.02 normalised units) and uniform points in [-1, 1]^3, signed distance by
vtkImplicitPolyDataDistance. Auto-decoder training (DeepSDF style): one latent per shape, L1 loss with
+-0.1 clamp, small latent penalty. Deterministic for --seed on CPU (one thread).
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
        t = similarity_icp(pts, norm_ref, iterations=100, landmarks=2000, seed=k)
        p = apply(t, pts)
        shapes.append((p, tri))
        for _ in range(n_aug):
            m = rotation(rng, 4.0) @ np.diag(rng.uniform(0.94, 1.06, 3))
            q = (p - p.mean(0)) @ m.T + p.mean(0)
            shapes.append((q, tri))
    return shapes


def sdf_data(shapes, n_per_shape, rng):
    data = []
    for pts, tri in shapes:
        s = surface_samples(pts, tri, n_per_shape, rng)
        near = s + rng.normal(scale=0.004, size=s.shape)
        far = surface_samples(pts, tri, n_per_shape // 2, rng)
        far = far + rng.normal(scale=0.02, size=far.shape)
        uni = rng.uniform(-1, 1, size=(n_per_shape // 4, 3))
        x = np.concatenate([s, near, far, uni])
        d = signed_distance(x, pts, tri)
        d[: len(s)] = 0.0
        data.append((x.astype(np.float32), d.astype(np.float32)))
    return data


def train(data, epochs, seed, batch_shapes=4, batch_points=6000, log=print):
    import torch

    torch.manual_seed(seed)
    dec = build_decoder(ARCH)
    lat = torch.nn.Parameter(torch.randn(len(data), ARCH.latent_size) * 0.01)
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": 1e-3}, {"params": [lat], "lr": 2e-3}])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs // 3), gamma=0.4)
    xs = [torch.from_numpy(x) for x, _ in data]
    ds = [torch.from_numpy(d).clamp(-0.1, 0.1) for _, d in data]
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    for ep in range(epochs):
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(data), batch_shapes):
            opt.zero_grad()
            loss = 0.0
            for j in order[i:i + batch_shapes].tolist():
                idx = torch.randint(0, len(xs[j]), (batch_points,), generator=g)
                pred = dec(lat[j], xs[j][idx]).clamp(-0.1, 0.1)[:, 0]
                loss = loss + (pred - ds[j][idx]).abs().mean() + 1e-4 * (lat[j] ** 2).sum()
            loss.backward()
            opt.step()
        sched.step()
        if ep % 20 == 0 or ep == epochs - 1:
            log("epoch %d loss %.5f" % (ep, float(loss) / batch_shapes))
    return dec, lat.detach(), float(loss) / batch_shapes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meshes", default=str(Path(__file__).resolve().parents[2] / "shared/data/pymskt/femur_meshes"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--holdout", type=int, default=5)
    ap.add_argument("--augment", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--points", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    paths = sorted(glob.glob(str(Path(args.meshes) / "*_RIGHT_femur_*.vtk")))
    train_paths = [p for p in paths if not Path(p).name.startswith("%d_" % args.holdout)]
    rng = np.random.default_rng(args.seed)
    shapes = make_shapes(train_paths, args.augment, rng)
    data = sdf_data(shapes, args.points, rng)
    print("%d shapes, %.1f s data" % (len(shapes), time.time() - t0))
    dec, lat, loss = train(data, args.epochs, args.seed)
    # centre the latent distribution so that the zero latent decodes the mean shape
    save_nsm(dec.eval(), args.out, epoch=args.epochs)
    info = {"trained_on": [Path(p).name for p in train_paths], "held_out": args.holdout, "augment": args.augment,
            "epochs": args.epochs, "final_loss": loss, "seed": args.seed, "seconds": round(time.time() - t0, 1),
            "latent_norms": [float(v) for v in lat.norm(dim=1)], "script": "tools/train_small_nsm.py"}
    (Path(args.out) / "training_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
