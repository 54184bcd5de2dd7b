"""Similarity ICP (rotation + translation + isotropic scale) between point sets, vectorised numpy."""
from __future__ import annotations

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """The 4x4 similarity T minimising sum |T(src) - dst|^2 (Umeyama 1991); proper rotation."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[2, 2] = -1.0
    r = u @ e @ vt
    scale = float(np.trace(np.diag(sig) @ e) / (s ** 2).sum(1).mean()) if with_scale else 1.0
    t = np.eye(4)
    t[:3, :3] = scale * r
    t[:3, 3] = mu_d - scale * r @ mu_s
    return t


def apply(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ t[:3, :3].T + t[:3, 3]


def similarity_icp(source: np.ndarray, target: np.ndarray, iterations: int = 100, landmarks: int = 1000,
                   seed: int = 0, tol: float = 1e-9) -> np.ndarray:
    """4x4 similarity mapping ``source`` onto ``target`` (closest-point ICP).

    Starts by matching centroids and RMS radii, then alternates closest points (``landmarks`` source
    points drawn once with a seeded generator) and a Umeyama similarity, for ``iterations`` rounds.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    src = np.asarray(source, float)
    if len(src) > landmarks:
        src = src[rng.choice(len(src), landmarks, replace=False)]
    tgt = np.asarray(target, float)
    tree = cKDTree(tgt)
    rs = np.sqrt(((src - src.mean(0)) ** 2).sum(1).mean())
    rt = np.sqrt(((tgt - tgt.mean(0)) ** 2).sum(1).mean())
    t = np.eye(4)
    t[:3, :3] *= rt / rs
    t[:3, 3] = tgt.mean(0) - (rt / rs) * src.mean(0)
    prev = np.inf
    for _ in range(int(iterations)):
        moved = apply(t, src)
        dist, idx = tree.query(moved)
        t = umeyama(src, tgt[idx])
        err = float(np.mean(dist ** 2))
        if abs(prev - err) < tol * max(err, 1e-30):
            break
        prev = err
    return t
