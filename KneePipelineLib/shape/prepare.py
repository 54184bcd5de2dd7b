"""Preparing patient meshes for the NSM: checks, mirroring of left knees, anatomical shaft clip, transforms.

Shaft clip rule (ours)
----------------------
The shaft axis is the first principal axis of the femur mesh (PCA of the vertices). It points away
from the wider end: for both ends we take the vertices in the last 15 % of the extent and measure their
RMS distance from their own centroid across the axis; the condyles are the wide end. Along that axis
the distal end is the lowest vertex; we keep the part within ``SHAFT_FACTOR x width`` of it, width
being the bone's largest extent across the shaft axis (the medio-lateral condylar width). A bone whose
first principal extent is below ELONGATION (1.15) x its width is already cropped near the joint (its
first principal axis is then not the shaft): it is not clipped, and the report says so. SHAFT_FACTOR = 0.8,
matching the 0.8 x width crop the reference applies when meshing (REFERENCE §4), so meshes made that
way lose nothing. It replaces the reference rule, which cuts along a fixed image/world axis and so
depends on how the knee lay in the scanner.

Mirroring: a left knee is mirrored to a right one by the reflection x -> -x (LPS x is left-right). A
reflection flips the orientation of every triangle, so the winding is reversed to keep normals
outward. The matrix is part of the returned transform (patient mm -> model space).
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np

from ..errors import NsmError
from .meshing import polydata_arrays, polydata_from_arrays

log = logging.getLogger(__name__)

SHAFT_FACTOR = 0.8
END_FRACTION = 0.15
ELONGATION = 1.15
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


def _end_spread(c: np.ndarray, a: np.ndarray) -> float:
    h = c @ a
    lo, hi = h.min(), h.max()
    sel = c[h >= hi - END_FRACTION * (hi - lo)]
    perp = sel - np.outer(sel @ a, a)
    return float(np.sqrt(((perp - perp.mean(0)) ** 2).sum(1).mean()))


def shaft_axis(pts: np.ndarray) -> Tuple[np.ndarray, float, bool]:
    """(unit vector up the shaft (distal -> proximal), width across it in mm, elongated?).

    The shaft axis is the first principal axis of the vertices; it points away from the wider end (the
    condyles). ``elongated`` is False when that axis is not clearly the longest extent (length <
    ELONGATION x the largest extent across it): such a bone is already cropped near the joint, the
    first principal axis is then not the shaft, and no clipping is done.
    """
    c = pts - pts.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    a = vt[0]
    if _end_spread(c, a) > _end_spread(c, -a):
        a = -a
    perp = c - np.outer(c @ a, a)
    width = float(max(np.ptp(perp @ v) for v in vt[1:]))
    length = float(np.ptp(c @ a))
    return a, width, length >= ELONGATION * width


def shaft_clip_plane(pts: np.ndarray, factor: float = SHAFT_FACTOR):
    """(origin, unit normal pointing up the shaft, rule text) of the clip plane, or (None, None, text) when
    the bone is not elongated (not clipped). Vertices with (p - origin) . normal > 0 are removed."""
    a, width, elongated = shaft_axis(pts)
    if not elongated:
        return None, None, "not clipped: bone not elongated (already cropped near the joint)"
    c = pts.mean(0)
    h = (pts - c) @ a
    origin = c + (h.min() + factor * width) * a
    rule = "clipped at %.3g x width (%.1f mm) from the distal end along the shaft axis" % (factor, factor * width)
    return origin, a, rule


def clip_shaft(pts: np.ndarray, tri: np.ndarray, factor: float = SHAFT_FACTOR):
    """Keep triangles whose vertices all lie within factor x width of the distal end along the shaft axis.

    Returns (pts, tri, removed vertex count, rule applied as text)."""
    origin, normal, rule = shaft_clip_plane(pts, factor)
    if origin is None:
        return pts, tri, 0, rule
    keep_v = (pts - origin) @ normal <= 1e-9
    if keep_v.all():
        return pts, tri, 0, rule
    keep_t = keep_v[tri].all(1)
    tri = tri[keep_t]
    used = np.unique(tri)
    remap = -np.ones(len(pts), np.int64)
    remap[used] = np.arange(len(used))
    return pts[used], remap[tri], int(len(pts) - len(used)), rule


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
    if clip:
        origin, normal, _ = shaft_clip_plane(pts)
        pts, tri, removed, rule = clip_shaft(pts, tri)
        report["shaft_vertices_removed"] = removed
        report["shaft_clip"] = rule
        if origin is not None and removed:
            # right-side patient mm; the ASSD leaves out reconstructed surface beyond this plane
            report["clip_plane_mm"] = {"origin": [float(v) for v in origin], "normal": [float(v) for v in normal]}
    return pts, tri, m, report


def prepare_cartilage(cart_pd, mirror: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    pts, tri = check_mesh(cart_pd, "femoral cartilage")
    return transform_arrays(mirror, pts, tri)
