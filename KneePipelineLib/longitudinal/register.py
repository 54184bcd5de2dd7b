"""Rigid registration of one bone surface onto the same bone at another visit (trimmed point-to-plane ICP).

The two surfaces come from the same knee scanned twice: same shape, another pose, possibly another field of
view (the femoral shaft or tibial metaphysis cut at another height) and another voxel size. So:

* start from the centroids (the pipeline crops both bones at 0.8 x their medio-lateral width from the joint, so
  the centroids are close) and, only when that start ends badly, from the principal-axis alignments;
* point-to-plane ICP (each moving vertex to the tangent plane of its nearest fixed vertex): converges in a few
  iterations and, unlike point-to-point, is not biased by the two meshes' different vertex positions;
* trimmed: each iteration uses only the pairs closer than the 90th distance percentile (and never farther than
  ``max_pair_mm``), so surface present at one visit only (another field of view) does not pull the fit.

Pure numpy/scipy, deterministic (no random sampling): the same inputs give the same transform.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np


@dataclass(frozen=True)
class RigidTransform:
    """x_fixed = rotation @ x_moving + translation_mm (LPS mm)."""

    rotation: np.ndarray
    translation_mm: np.ndarray

    def apply(self, points_mm: np.ndarray) -> np.ndarray:
        return np.asarray(points_mm, float) @ self.rotation.T + self.translation_mm

    def apply_to_vectors(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, float) @ self.rotation.T

    @property
    def matrix(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation_mm
        return m

    @property
    def rotation_deg(self) -> float:
        c = (np.trace(self.rotation) - 1.0) / 2.0
        return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))

    def compose(self, first: "RigidTransform") -> "RigidTransform":
        """This transform applied after ``first``."""
        return RigidTransform(self.rotation @ first.rotation, self.rotation @ first.translation_mm + self.translation_mm)


IDENTITY = RigidTransform(np.eye(3), np.zeros(3))


@dataclass(frozen=True)
class Registration:
    transform: RigidTransform
    rms_mm: float               # point-to-plane RMS over the inlier pairs at the end
    median_distance_mm: float   # median nearest-vertex distance of all moving vertices at the end
    inlier_fraction: float      # fraction of moving vertices used in the last iteration
    iterations: int
    converged: bool

    def to_json(self) -> dict:
        return {"rms_mm": round(self.rms_mm, 4), "median_distance_mm": round(self.median_distance_mm, 4),
                "inlier_fraction": round(self.inlier_fraction, 4), "iterations": self.iterations,
                "converged": self.converged, "rotation_deg": round(self.transform.rotation_deg, 3),
                "translation_mm": [round(float(v), 4) for v in self.transform.translation_mm],
                "matrix": [[float(v) for v in row] for row in self.transform.matrix]}


def _small_rotation(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``w`` (Rodrigues)."""
    theta = float(np.linalg.norm(w))
    if theta < 1e-12:
        return np.eye(3)
    k = w / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * (K @ K)


def _icp(moving: np.ndarray, fixed: np.ndarray, fixed_normals: np.ndarray, tree, start: RigidTransform,
         max_iterations: int, trim_percentile: float, max_pair_mm: float, tol_mm: float) -> Registration:
    T = start
    converged = False
    rms, inl, it = np.inf, 0.0, 0
    for it in range(1, max_iterations + 1):
        p = T.apply(moving)
        d, j = tree.query(p)
        cut = min(float(np.percentile(d, trim_percentile)), max_pair_mm)
        sel = d <= max(cut, 1e-9)
        if sel.sum() < 6:
            break
        ps, qs, ns = p[sel], fixed[j[sel]], fixed_normals[j[sel]]
        r = np.einsum("ij,ij->i", ps - qs, ns)            # signed point-to-plane residuals
        A = np.hstack([np.cross(ps, ns), ns])             # d r / d (w, t) for x -> x + w x x + t
        x, *_ = np.linalg.lstsq(A, -r, rcond=None)
        step = RigidTransform(_small_rotation(x[:3]), x[3:])
        T = step.compose(T)
        rms, inl = float(np.sqrt(np.mean(r ** 2))), float(sel.mean())
        # movement of the moving cloud's extent caused by this step
        ext = float(np.max(np.linalg.norm(ps - ps.mean(0), axis=1)))
        if np.linalg.norm(x[3:]) + np.linalg.norm(x[:3]) * ext < tol_mm:
            converged = True
            break
    d, _ = tree.query(T.apply(moving))
    return Registration(T, rms, float(np.median(d)), inl, it, converged)


def _pca_starts(moving: np.ndarray, fixed: np.ndarray) -> List[RigidTransform]:
    """The four proper rotations aligning the principal axes of ``moving`` with those of ``fixed``."""
    cm, cf = moving.mean(0), fixed.mean(0)
    _, _, vm = np.linalg.svd(moving - cm, full_matrices=False)
    _, _, vf = np.linalg.svd(fixed - cf, full_matrices=False)
    out = []
    for s in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)):
        R = vf.T @ np.diag(s) @ vm
        if np.linalg.det(R) < 0:
            continue
        out.append(RigidTransform(R, cf - R @ cm))
    return out


def register_surfaces(moving_points_mm: np.ndarray, fixed_points_mm: np.ndarray, fixed_normals: np.ndarray,
                      max_iterations: int = 80, trim_percentile: float = 90.0, max_pair_mm: float = 10.0,
                      tol_mm: float = 1e-4, good_median_mm: float = 0.5) -> Registration:
    """Rigidly register ``moving`` (follow-up vertices) onto ``fixed`` (baseline vertices with unit normals)."""
    from scipy.spatial import cKDTree

    moving = np.asarray(moving_points_mm, float)
    fixed = np.asarray(fixed_points_mm, float)
    normals = np.asarray(fixed_normals, float)
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    tree = cKDTree(fixed)
    start = RigidTransform(np.eye(3), fixed.mean(0) - moving.mean(0))
    best: Optional[Registration] = _icp(moving, fixed, normals, tree, start, max_iterations, trim_percentile,
                                        max_pair_mm, tol_mm)
    if best.median_distance_mm > good_median_mm:       # a large pose change: try the principal-axis starts
        for s in _pca_starts(moving, fixed):
            reg = _icp(moving, fixed, normals, tree, s, max_iterations, trim_percentile, max_pair_mm, tol_mm)
            if reg.median_distance_mm < best.median_distance_mm:
                best = reg
    return best
