"""The subchondral bone area (tAB) of each plate on a bone mesh: holes, vertex status, subregions, and the
Euclidean thickness from the cartilage surface to it.

tAB of a plate = the bone vertices whose thickness ray meets the plate's cartilage (a valid thickness,
or cartilage voxels on the ray where the ray failed) plus the *enclosed* bone surface without cartilage:
the connected patches (on the mesh) of the other vertices that do not reach the rest of the bone. An
enclosed patch takes the region of its nearest plate vertex. Bone beside a plate's outer rim is not
tAB: without a segmented bone interface, bare bone at a plate's edge cannot be told from bone that never
carried cartilage (a denuded area reaching the rim is therefore under-counted; see docs/MEASURES.md).

Measures are sums over quadrature points (16 per bone triangle touching tAB; :class:`Samples`), so the
subregion borders, fitted on them (:class:`PlateRule`), cut triangles instead of moving rows of vertices.

Euclidean thickness (ThCAC): for every vertex of the cartilage's articular surface, the distance to the
nearest point of the bone-cartilage interface (the covered quadrature points). Articular vertices are
those whose outward normal faces away from the bone (positive dot product with the normal of the
nearest interface vertex); the deep face of the cartilage, lying on the bone, faces it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .. import labels as L
from . import chondrometrics as C


@dataclass
class PlateRule:
    """A fitted subdivision of one region (tibial plate or weight-bearing condyle), in LPS."""
    parent: int
    rule: object                  # chondrometrics.TibialRule | FemoralRule
    frame: object                 # regions.KneeFrame
    rotation_rad: float           # femoral frame about e_sup
    medial: bool

    def assign(self, points_lps: np.ndarray) -> np.ndarray:
        c = self.frame.coords(points_lps)
        ml, ap = c[:, 0], c[:, 1]
        sign = 1.0 if self.medial else -1.0
        if isinstance(self.rule, C.TibialRule):
            return self.rule.assign(sign * ml, ap)
        return self.rule.assign(sign * (np.cos(self.rotation_rad) * ml + np.sin(self.rotation_rad) * ap))


@dataclass
class Samples:
    """Quadrature points of the bone triangles touching tAB (16 per triangle): each carries 1/16 of its
    triangle's area, the status and region of the triangle's nearest vertex and the thickness interpolated
    from the triangle's covered vertices. Measures sum over these, so subregion borders cut triangles at
    sub-vertex resolution instead of moving whole rows of vertices."""
    points: np.ndarray
    area_mm2: np.ndarray
    thickness_mm: np.ndarray
    status: np.ndarray
    tab_region: np.ndarray
    subregion: np.ndarray
    vertex: Optional[np.ndarray] = None      # the triangle's nearest vertex of each sample


@dataclass
class BoneInterface:
    tab_region: np.ndarray        # (n,) region code of the tAB vertex (0 = not tAB)
    status: np.ndarray            # (n,) C.OUTSIDE / COVERED / DENUDED / MISS
    subregion: np.ndarray         # (n,) subregion code (C.SUBREGIONS), else the region code, 0 outside tAB
    cartilage_on_ray_mm: np.ndarray   # (n,) NaN where not computed (finite thickness or far from plates)
    samples: Optional[Samples] = None
    rules: Dict[int, PlateRule] = field(default_factory=dict)
    n_holes: int = 0
    voxel_counts: Dict[int, int] = field(default_factory=dict)   # cartilage voxels per subregion code

    def subregion_of(self, points_lps: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Subregion code of arbitrary points given their region code (the region code where undivided)."""
        out = np.asarray(region, dtype=np.int32).copy()
        for parent, rule in self.rules.items():
            sel = out == parent
            if sel.any():
                out[sel] = rule.assign(points_lps[sel])
        return out


def _subtriangle_barycentrics(n: int = 4) -> np.ndarray:
    """Barycentric centroids of the n² congruent sub-triangles of a triangle."""
    out = []
    for i in range(n):
        for j in range(n - i):
            out.append(((i + 1 / 3) / n, (j + 1 / 3) / n))
            if i + j <= n - 2:
                out.append(((i + 2 / 3) / n, (j + 2 / 3) / n))
    uv = np.array(out)
    return np.stack([1 - uv.sum(1), uv[:, 0], uv[:, 1]], 1)


def quadrature(points: np.ndarray, triangles: np.ndarray, thickness_mm: np.ndarray, status: np.ndarray,
               tab_region: np.ndarray, n: int = 4) -> Samples:
    """Quadrature points of the triangles with a tAB vertex (see :class:`Samples`)."""
    tri = triangles[np.any(tab_region[triangles] > 0, axis=1)]
    bc = _subtriangle_barycentrics(n)                              # (s, 3)
    s = len(bc)
    p = np.einsum("sc,tcd->tsd", bc, points[tri]).reshape(-1, 3)
    a = np.linalg.norm(np.cross(points[tri[:, 1]] - points[tri[:, 0]], points[tri[:, 2]] - points[tri[:, 0]]), axis=1)
    w = np.repeat(0.5 * a / s, s)
    nearest = tri[:, np.argmax(bc, axis=1)].reshape(-1)           # vertex with the largest weight
    th = thickness_mm[tri]                                        # (t, 3)
    ok = np.isfinite(th)
    lam = bc[None, :, :] * ok[:, None, :]                         # (t, s, 3)
    den = lam.sum(2)
    t_int = np.where(den > 0, (lam * np.nan_to_num(th)[:, None, :]).sum(2) / np.where(den > 0, den, 1), np.nan)
    st = status[nearest]
    t_int = np.where(st == C.COVERED, t_int.reshape(-1), np.nan)
    reg = tab_region[nearest]
    return Samples(p, np.where(reg > 0, w, 0.0), t_int, st, reg, reg.copy(), nearest)


def _components(triangles: np.ndarray, n: int, keep: np.ndarray) -> Tuple[int, np.ndarray]:
    """Connected components of the vertices ``keep`` (edges of triangles between two kept vertices)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    e = e[keep[e[:, 0]] & keep[e[:, 1]]]
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    nc, lab = connected_components(g, directed=False)
    return nc, lab


def enclosed_patches(triangles: np.ndarray, n: int, plate: np.ndarray, area_mm2: np.ndarray,
                     max_fraction: float = 0.5) -> np.ndarray:
    """Boolean mask of the non-plate vertices in patches that do not reach the rest of the bone.

    The largest non-plate component (by area) is the rest of the bone; every other one is enclosed,
    unless its area exceeds ``max_fraction`` × the plate area (then it is not a hole but, e.g., a second
    bare part of the bone cut off by the plates).
    """
    other = ~plate
    if not plate.any() or not other.any():
        return np.zeros(n, dtype=bool)
    nc, lab = _components(triangles, n, other)
    comp_area = np.bincount(lab[other], weights=area_mm2[other], minlength=nc)
    outside = int(np.argmax(comp_area))
    small = comp_area <= max_fraction * float(area_mm2[plate].sum())
    small[outside] = False
    return other & small[lab]


def bone_interface(points: np.ndarray, triangles: np.ndarray, normals: np.ndarray, thickness_mm: np.ndarray,
                   region: np.ndarray, area_mm2: np.ndarray, labels, cartilage_codes: Sequence[int],
                   frame=None, femur_rotation_deg: float = 0.0, inner_mm: float = 2.5, outer_mm: float = 10.0
                   ) -> BoneInterface:
    """tAB, vertex status, quadrature samples and subregions of one bone (see the module docstring).

    ``region``: the region code per vertex from the ray pass; ``labels``: the canonical label map (the
    cartilage voxels decide denuded vs miss); ``frame``: the knee frame (:class:`.regions.KneeFrame`) for
    the subregions (None: no subregions); ``femur_rotation_deg``: the femoral frame's rotation about the
    superior axis (:class:`.regions.FemurRegionInfo`).
    """
    from .raycast import cartilage_length_on_rays

    n = len(points)
    th = np.asarray(thickness_mm, dtype=float)
    seg = np.full(n, np.nan)

    def ray_cartilage(idx):
        todo = idx[np.isnan(seg[idx])]
        if len(todo):
            seg[todo] = cartilage_length_on_rays(labels, cartilage_codes, points[todo] - inner_mm * normals[todo],
                                                 normals[todo], inner_mm + outer_mm)

    fin = np.isfinite(th)
    ray_cartilage(np.flatnonzero((region > 0) & ~fin))
    plate = (region > 0) & (fin | (np.nan_to_num(seg) > 0))
    holes = enclosed_patches(triangles, n, plate, area_mm2)
    tab_region = np.where(plate, region, 0).astype(np.int32)
    n_holes = 0
    if holes.any():
        from scipy.spatial import cKDTree

        hi = np.flatnonzero(holes)
        pi = np.flatnonzero(plate)
        _, nearest = cKDTree(points[pi]).query(points[hi])
        tab_region[hi] = region[pi[nearest]]
        ray_cartilage(hi)
        n_holes = _components(triangles, n, holes)[0] - int((~holes).sum())
    status = C.vertex_status(th, np.nan_to_num(seg), tab_region > 0)
    samples = quadrature(points, triangles, th, status, tab_region)
    bi = BoneInterface(tab_region, status, tab_region.copy(), seg, samples, {}, max(n_holes, 0))
    if frame is not None:
        rot = float(np.radians(femur_rotation_deg))
        for parent in sorted({s.parent for s in C.SUBREGIONS}):
            subs = [s for s in C.SUBREGIONS if s.parent == parent]
            sel = samples.tab_region == parent
            if not sel.any():
                continue
            medial = parent in (L.MEDIAL_TIBIAL_CARTILAGE, 12)
            c = frame.coords(samples.points[sel])
            sign = 1.0 if medial else -1.0
            codes = [s.code for s in subs]
            if subs[0].name.endswith("T"):
                rule = C.fit_tibial(sign * c[:, 0], c[:, 1], samples.area_mm2[sel], codes)
            else:
                rule = C.fit_femoral(sign * (np.cos(rot) * c[:, 0] + np.sin(rot) * c[:, 1]), samples.area_mm2[sel],
                                     codes)
            bi.rules[parent] = PlateRule(parent, rule, frame, rot, medial)
        bi.subregion = bi.subregion_of(points, tab_region)
        samples.subregion = bi.subregion_of(samples.points, samples.tab_region)
    return bi


def euclidean_thickness(cart_points: np.ndarray, cart_triangles: np.ndarray, bone_points: np.ndarray,
                        bone_triangles: np.ndarray, bone_normals: np.ndarray, bi: BoneInterface):
    """Distance (mm) from each articular vertex of a cartilage mesh to the bone-cartilage interface (the
    covered bone surface).

    Returns (distance per cartilage vertex, NaN on the deep face and where no interface is near;
    the interface vertex's region and subregion codes per cartilage vertex, 0 where NaN).
    """
    from scipy.spatial import cKDTree

    from .mesh import vertex_normals

    m = len(cart_points)
    dist = np.full(m, np.nan)
    reg = np.zeros(m, dtype=np.int32)
    sub = np.zeros(m, dtype=np.int32)
    q = bi.samples
    cov = np.flatnonzero(q.status == C.COVERED) if q is not None else np.zeros(0, np.int64)
    if m == 0 or len(cov) == 0:
        return dist, reg, sub
    # the interface surface as its covered quadrature points (16 per triangle, about a quarter of an edge
    # apart: at 2 mm from the surface the distance is overestimated by less than 0.01 mm)
    d, k = cKDTree(q.points[cov]).query(cart_points)
    near = q.vertex[cov[k]]
    cn = vertex_normals(cart_points, cart_triangles)
    articular = np.einsum("ij,ij->i", cn, bone_normals[near]) > 0
    dist[articular] = d[articular]
    reg[articular] = bi.tab_region[near[articular]]
    sub[articular] = bi.subregion_of(cart_points[articular], reg[articular])
    return dist, reg, sub


def label_subregion_voxels(regions_volume, bi: BoneInterface, out: np.ndarray) -> None:
    """Write the subregion code of every voxel of a subdivided region (regions label map) into ``out`` (a copy
    of the regions array): the fitted rule applied at the voxel's own position, so the subregion volumes add
    up to the region's."""
    for parent, rule in bi.rules.items():
        k, j, i = np.nonzero(regions_volume.array == parent)
        if len(k):
            out[k, j, i] = rule.assign(regions_volume.ijk_to_lps(np.stack([i, j, k], axis=1).astype(float)))
