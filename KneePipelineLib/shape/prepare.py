"""Preparing patient meshes for the NSM: checks, mirroring of left knees, the reference's shaft clip, transforms.

Shaft clip (the reference's rule, gattia/OpenMSK ``utils.clip_femur_top``)
-------------------------------------------------------------------------
In patient coordinates (LPS mm: x left-right, y antero-posterior, z infero-superior), with the extents
dx, dy, dz of the femur's bounding box: when dz > 0.7 x dy the femur is cut at 0.7 x dx (the
medio-lateral width) above its most distal point, otherwise the top 5 % of its height is cut. The
reference makes that cut with pyvista ``clip("z", value)``, whose plane sits ``value`` above the
*bounding-box centre*, after having moved the vertex centroid to 0: its plane therefore lies
(bounding-box centre - vertex centroid) higher along z than "0.7 x width above the most distal point"
(1.4-3.2 mm on the five sample femurs). We cut where the reference cuts, with the same VTK filter
(``vtkClipPolyData``: triangles crossing the plane are cut at it), so the fitted vertices are the
reference's. The cut follows the scanner's z axis, as the reference's does (an earlier rule of ours
followed the bone's principal axis and never fired on a pipeline femur; it was dropped for the
reference's).

Mirroring: a left knee is mirrored to a right one by the reflection x -> -x (LPS x is left-right). A
reflection flips the orientation of every triangle, so the winding is reversed to keep normals
outward -- the reference mirrors the coordinates without reversing the winding, which turns its
left-knee meshes inside out (that matters for the signed distances between bone and cartilage); the
results record this difference. The matrix is part of the returned transform (patient mm -> model space).
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np

from ..errors import NsmError
from .meshing import polydata_arrays, polydata_from_arrays

log = logging.getLogger(__name__)

SHAFT_FACTOR = 0.7          # x medio-lateral width (dx), reference clip_femur_top
SHORT_FACTOR = 0.95         # fraction of the height kept when dz <= 0.7 x dy
MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])


def check_mesh(pd, name: str) -> Tuple[np.ndarray, np.ndarray]:
    """Vertices and triangles of a usable surface; empty -> NsmError; open -> a warning (clipped femurs
    are open at the shaft by construction, so openness cannot be an error)."""
    if pd is None or pd.GetNumberOfPoints() == 0:
        raise NsmError("The %s mesh is empty." % name,
                       hint="Check the %s segmentation: the label may be missing from the label map." % name)
    pts, tri = polydata_arrays(pd)
    if len(tri) == 0:
        raise NsmError("The %s mesh has no triangles." % name, hint="Give a triangulated surface mesh.")
    if not np.all(np.isfinite(pts)):
        raise NsmError("The %s mesh has non-finite coordinates." % name)
    if len(pts) < 100:
        raise NsmError("The %s mesh has only %d vertices; the shape fit needs a real surface." % (name, len(pts)))
    return pts, tri


def boundary_edge_fraction(tri: np.ndarray) -> float:
    """Fraction of edges used by exactly one triangle (0 for a closed surface)."""
    e = np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), 1)
    _, counts = np.unique(e, axis=0, return_counts=True)
    return float(np.mean(counts == 1)) if len(counts) else 0.0


def transform_arrays(t: np.ndarray, pts: np.ndarray, tri: np.ndarray):
    """Apply a 4x4 affine; reverse winding if it is a reflection (normals stay outward)."""
    p = pts @ t[:3, :3].T + t[:3, 3]
    if np.linalg.det(t[:3, :3]) < 0:
        tri = tri[:, ::-1]
    return p, np.ascontiguousarray(tri)


def transform_polydata(pd, t: np.ndarray):
    pts, tri = polydata_arrays(pd)
    return polydata_from_arrays(*transform_arrays(t, pts, tri))


def signed_volume(pts: np.ndarray, tri: np.ndarray) -> float:
    a, b, c = pts[tri[:, 0]], pts[tri[:, 1]], pts[tri[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def shaft_clip_plane(pts: np.ndarray, factor: float = SHAFT_FACTOR):
    """(origin, unit normal (0, 0, 1), rule text) of the reference's clip plane; vertices with
    (p - origin) . normal > 0 are removed. See the module docstring for the rule and its offset."""
    pts = np.asarray(pts, np.float64)
    c = pts.mean(0)
    q = pts - c
    lo, hi = q.min(0), q.max(0)
    dx, dy, dz = hi - lo
    if dz > 0.7 * dy:
        value = lo[2] + factor * abs(dx)
        rule = "clipped at %.3g x medio-lateral width (%.1f mm) above the distal end" % (factor, factor * abs(dx))
    else:
        value = lo[2] + SHORT_FACTOR * abs(dz)
        rule = "short femur (height <= 0.7 x antero-posterior depth): top %.0f %% of its height clipped" % (
            100 * (1 - SHORT_FACTOR))
    bbox_centre_z = 0.5 * (lo[2] + hi[2])            # pyvista measures ``value`` from the bounding-box centre
    z = c[2] + bbox_centre_z + value
    rule += " (as the reference: plane %.2f mm above the most distal point)" % (z - pts[:, 2].min())
    return np.array([c[0], c[1], z]), np.array([0.0, 0.0, 1.0]), rule


def clip_shaft(pts: np.ndarray, tri: np.ndarray, factor: float = SHAFT_FACTOR):
    """Cut the femur at the reference's plane with vtkClipPolyData (the filter pyvista's clip uses).

    Returns (pts, tri, removed vertex count, rule applied as text)."""
    import vtk

    origin, normal, rule = shaft_clip_plane(pts, factor)
    if np.all((np.asarray(pts) - origin) @ normal <= 0):
        return pts, tri, 0, rule
    plane = vtk.vtkPlane()
    plane.SetOrigin(*origin)
    plane.SetNormal(*normal)
    clip = vtk.vtkClipPolyData()
    clip.SetInputData(polydata_from_arrays(pts, tri))
    clip.SetClipFunction(plane)
    clip.SetValue(0.0)
    clip.SetInsideOut(True)          # keep where the plane function is below the value
    clip.Update()
    out_pts, out_tri = polydata_arrays(clip.GetOutput())
    removed = int(np.sum((np.asarray(pts) - origin) @ normal > 0))
    return out_pts, out_tri, removed, rule


def laterality_matrix(laterality: str) -> np.ndarray:
    lat = (laterality or "right").lower()
    if lat not in ("right", "left"):
        raise NsmError("Laterality must be 'right' or 'left', not %r." % laterality,
                       hint="Resolve 'auto' from the label map before fitting.")
    return MIRROR.copy() if lat == "left" else np.eye(4)


def make_polydata(pts, tri):
    return polydata_from_arrays(pts, tri)


def prepare_bone(bone_pd, laterality: str, clip: bool = True, warn=None):
    """(pts_right_mm, tri, mirror 4x4, report dict): checked, mirrored to right, shaft clipped."""
    pts, tri = check_mesh(bone_pd, "femur")
    frac = boundary_edge_fraction(tri)
    report = {"open_edge_fraction": frac}
    if frac > 0:
        msg = ("The femur mesh is open (%.2f %% boundary edges); the fit uses its vertices, but holes away from "
               "the shaft cut bias the surface distance." % (100 * frac))
        log.warning(msg)
        if warn:
            warn(msg)
    m = laterality_matrix(laterality)
    pts, tri = transform_arrays(m, pts, tri)
    if laterality_matrix(laterality)[0, 0] < 0:
        report["left_knee_winding"] = ("mirrored x -> -x with the triangle winding reversed (normals outward); "
                                       "the reference mirrors without reversing it")
    if clip:
        origin, normal, _ = shaft_clip_plane(pts)
        pts, tri, removed, rule = clip_shaft(pts, tri)
        report["shaft_vertices_removed"] = removed
        report["shaft_clip"] = rule
        if removed:
            # right-side patient mm; the ASSD leaves out reconstructed surface beyond this plane
            report["clip_plane_mm"] = {"origin": [float(v) for v in origin], "normal": [float(v) for v in normal]}
    return pts, tri, m, report


def prepare_cartilage(cart_pd, mirror: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    pts, tri = check_mesh(cart_pd, "femoral cartilage")
    return transform_arrays(mirror, pts, tri)
