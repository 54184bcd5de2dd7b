"""Similarity ICP of a patient bone onto the NSM's mean surface, as the reference does it (deterministic).

The reference (pymskt ``meshRegistration.get_icp_transform``, called by NSM ``sdf_dataset``) runs VTK's
``vtkIterativeClosestPointTransform``: similarity landmark transform, start by matching centroids, at
most 1000 landmarks taken as every (N // 1000)-th source vertex, the closest point *on the target
surface* (a cell locator, not the nearest vertex), 100 iterations, no mean-distance stop. This module
calls the same VTK class with the same settings, so the same input gives the same transform whatever
the seed.
"""
from __future__ import annotations

import numpy as np


def apply(t: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ t[:3, :3].T + t[:3, 3]


def vtk_icp(source_pd, target_pd, iterations: int = 100, landmarks: int = 1000) -> np.ndarray:
    """4x4 similarity mapping ``source_pd`` (vtkPolyData) onto the surface ``target_pd`` (VTK ICP)."""
    import vtk

    icp = vtk.vtkIterativeClosestPointTransform()
    icp.SetSource(source_pd)
    icp.SetTarget(target_pd)
    icp.GetLandmarkTransform().SetModeToSimilarity()
    icp.SetMaximumNumberOfIterations(int(iterations))
    icp.StartByMatchingCentroidsOn()
    icp.SetMaximumNumberOfLandmarks(int(landmarks))
    icp.Modified()
    icp.Update()
    m = icp.GetMatrix()
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=np.float64)


def similarity_icp(source_pts: np.ndarray, source_tri: np.ndarray, target_pts: np.ndarray, target_tri: np.ndarray,
                   iterations: int = 100, landmarks: int = 1000) -> np.ndarray:
    """:func:`vtk_icp` on (points, triangles) arrays."""
    from .meshing import polydata_from_arrays

    return vtk_icp(polydata_from_arrays(source_pts, source_tri), polydata_from_arrays(target_pts, target_tri),
                   iterations, landmarks)
