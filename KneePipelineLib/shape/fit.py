"""Latent fitting (REFERENCE §7, seeded) and surface distances.

Loss = mean over sampled points of sum over objects |clamp(pred, ±0.1) - clamp(target, ±0.1)|; Adam,
lr 0.005 divided by 1.1 every 20 steps; z0 ~ N(0, 0.01^2); each step draws ``samples`` vertices per
surface; early stop after ``patience`` steps without a lower loss; the best latent is kept.

Speed: the decoder's weights never need gradients, so they are frozen (requires_grad False) and the
backward pass only computes gradients with respect to the features and the latent; the three planes
are computed once per step (one latent) and every sample point is queried against them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

CLAMP = 0.1
LR = 0.005
LR_FACTOR = 1.1
LR_EVERY = 20
Z0_STD = 0.01


@dataclass
class SurfaceSamples:
    """Fitting samples of one surface: points in model space and their target SDF per object."""
    name: str
    points: np.ndarray      # (N, 3)
    targets: np.ndarray     # (N, n_objects)


@dataclass
class LatentFit:
    latent: np.ndarray
    loss_history: List[float] = field(default_factory=list)
    iterations: int = 0
    best_loss: float = float("nan")
    seeds: List[int] = field(default_factory=list)


def signed_distance(points: np.ndarray, surface_pts: np.ndarray, surface_tri: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside, outward-normal convention) from points to a triangle surface."""
    import vtk
    from vtk.util import numpy_support as ns

    from .meshing import polydata_from_arrays

    pd = polydata_from_arrays(surface_pts, surface_tri)
    f = vtk.vtkImplicitPolyDataDistance()
    f.SetInput(pd)
    inp = ns.numpy_to_vtk(np.ascontiguousarray(points, np.float64), deep=True)
    out = vtk.vtkDoubleArray()
    f.FunctionValue(inp, out)
    return ns.vtk_to_numpy(out).astype(np.float64).copy()


def point_to_surface(points: np.ndarray, surface_pts: np.ndarray, surface_tri: np.ndarray) -> np.ndarray:
    return np.abs(signed_distance(points, surface_pts, surface_tri))


def assd(a_pts, a_tri, b_pts, b_tri) -> float:
    """Average symmetric surface distance: mean of vertex-to-surface distances both ways (units of input)."""
    if len(a_pts) == 0 or len(b_pts) == 0:
        return float("nan")
    d1 = point_to_surface(a_pts, b_pts, b_tri)
    d2 = point_to_surface(b_pts, a_pts, a_tri)
    return float((d1.sum() + d2.sum()) / (len(d1) + len(d2)))


def fit_latent(decoder, surfaces: Sequence[SurfaceSamples], seed: int = 0, iterations: int = 2000,
               samples: int = 10000, patience: int = 50, device=None,
               progress: Optional[Callable[[float, str], None]] = None) -> LatentFit:
    """Adam on one latent; deterministic for a seed on a given device and thread count."""
    import torch

    dev = device or next(decoder.parameters()).device
    for p in decoder.parameters():
        p.requires_grad_(False)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    latent = (torch.randn(decoder.arch.latent_size, generator=gen, dtype=torch.float32) * Z0_STD).to(dev)
    latent.requires_grad_(True)
    opt = torch.optim.Adam([latent], lr=LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=LR_EVERY, gamma=1.0 / LR_FACTOR)
    pts = [torch.from_numpy(np.ascontiguousarray(s.points, np.float32)).to(dev) for s in surfaces]
    tgt = [torch.from_numpy(np.ascontiguousarray(s.targets, np.float32)).clamp(-CLAMP, CLAMP).to(dev)
           for s in surfaces]
    best, best_z, since, hist, it = float("inf"), latent.detach().clone(), 0, [], 0
    for it in range(1, int(iterations) + 1):
        xs, ts = [], []
        for p, t in zip(pts, tgt):
            n = len(p)
            idx = rng.choice(n, samples, replace=False) if n > samples else np.arange(n)
            idx_t = torch.from_numpy(idx).to(dev)
            xs.append(p[idx_t])
            ts.append(t[idx_t])
        x, t = torch.cat(xs), torch.cat(ts)
        opt.zero_grad(set_to_none=True)
        pred = decoder.query(decoder.planes(latent), x).clamp(-CLAMP, CLAMP)
        loss = (pred - t).abs().sum(1).mean()
        loss.backward()
        val = float(loss.detach())
        hist.append(val)
        if val < best:
            best, best_z, since = val, latent.detach().clone(), 0
        else:
            since += 1
        opt.step()
        sched.step()
        if progress and (it % 10 == 0 or it == 1):
            progress(it / float(iterations), "step %d loss %.5f" % (it, val))
        if since >= patience:
            break
    return LatentFit(latent=best_z.cpu().numpy().astype(np.float64), loss_history=hist, iterations=it,
                     best_loss=best, seeds=[int(seed)])
