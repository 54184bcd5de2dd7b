"""The subchondral bone area (tAB) of each plate on a bone mesh: holes, vertex status, subregions, and the
Euclidean thickness from the cartilage surface to it.

tAB of a plate = the bone vertices whose thickness ray meets the plate's cartilage (a valid thickness,
or cartilage voxels on the ray where the ray failed) plus the *enclosed* bone surface without cartilage:
the connected patches (on the mesh) of the other vertices that do not reach the rest of the bone. An
enclosed patch takes the region of its nearest plate vertex. Bone beside a plate's outer rim is not
tAB: without a segmented bone interface, bare bone at a plate's edge cannot be told from bone that never
carried cartilage (a denuded area reaching the rim is therefore under-counted; see docs/MEASURES.md).

Measures are sums over quadrature points (:class:`Samples`), so the subregion borders, fitted on them
(:class:`PlateRule`), cut triangles instead of moving rows of vertices. The points lie on the fan of the
mesh's marching-cubes cell polygons (:mod:`.cell_polygons`), not on its own triangles, and the patches are
connected by the polygons' borders: the case table's choice of diagonals is not mirror-symmetric, and on
the sample knee it moved per-subregion thickness, volume and areas of a mirrored (left) copy by up to
1.2 %; on the fan they agree to 0.001 % (Testing/test_chondrometrics.py).

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
from .cell_polygons import FanMesh, fan_mesh


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
    """Quadrature points of the fan triangles touching tAB (9 per triangle, :func:`quadrature`): each carries
    its share of the triangle's area, the status and region of the nearer of the triangle's two mesh vertices
    and the thickness interpolated from its covered corners. Measures sum over these, so subregion borders
    cut triangles at sub-vertex resolution instead of moving whole rows of vertices."""
    points: np.ndarray
    area_mm2: np.ndarray
    thickness_mm: np.ndarray
    status: np.ndarray
    tab_region: np.ndarray
    subregion: np.ndarray
    vertex: Optional[np.ndarray] = None      # the mesh vertex whose status / region each sample carries


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
    grid: Optional[object] = None     # the label map (io.Volume) whose voxel axes the meshes were contoured on

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
               tab_region: np.ndarray, n: int = 3, fan: Optional[FanMesh] = None) -> Samples:
    """Quadrature points of the fan triangles (:mod:`.cell_polygons`) with a tAB vertex (see :class:`Samples`).

    A fan triangle (centroid g, a, b) gets n² points; each takes the status and region of the nearer of a and
    b (a point on the median from g, equally near both, counts half to each: no orientation decides), and
    the thickness interpolated from g, a and b over those with a thickness (at g: the mean of the polygon's
    covered vertices). Without ``fan`` every triangle is its own polygon.
    """
    fan = fan if fan is not None else fan_mesh(points, triangles)
    th = np.asarray(thickness_mm, dtype=float)
    e = fan.edges
    ok = np.isfinite(th)
    n_pol = int(fan.polygon.max()) + 1 if len(fan.polygon) else 0
    cnt = np.bincount(fan.polygon, weights=ok[e[:, 0]].astype(float), minlength=n_pol)
    tot = np.bincount(fan.polygon, weights=np.where(ok, th, 0.0)[e[:, 0]], minlength=n_pol)
    th_g = np.where(cnt > 0, tot / np.where(cnt > 0, cnt, 1.0), np.nan)
    keep = np.flatnonzero(np.any(tab_region[e] > 0, axis=1))
    tri, pol = fan.triangles[keep], fan.polygon[keep]
    bc = _subtriangle_barycentrics(n)                              # (s, 3) weights of g, a, b
    s = len(bc)
    # the nearer of a and b; ties (on the median from g) split into two half-weight points
    tie = np.flatnonzero(bc[:, 1] == bc[:, 2])
    bc_all = np.concatenate([bc, bc[tie]])
    near_col = np.concatenate([np.where(bc[:, 2] > bc[:, 1], 2, 1), np.full(len(tie), 2)])
    share = np.ones(len(bc_all))
    share[tie] = share[s:] = 0.5
    p = np.einsum("sc,tcd->tsd", bc_all, fan.points[tri]).reshape(-1, 3)
    pt = fan.points[tri]
    a = 0.5 * np.linalg.norm(np.cross(pt[:, 1] - pt[:, 0], pt[:, 2] - pt[:, 0]), axis=1)
    w = (a[:, None] * share[None, :] / s).reshape(-1)
    nearest = tri[:, near_col].reshape(-1)
    t3 = np.stack([th_g[pol], th[tri[:, 1]], th[tri[:, 2]]], axis=1)          # (t, 3)
    fin = np.isfinite(t3)
    lam = bc_all[None, :, :] * fin[:, None, :]
    den = lam.sum(2)
    t_int = np.where(den > 0, (lam * np.nan_to_num(t3)[:, None, :]).sum(2) / np.where(den > 0, den, 1), np.nan)
    st = status[nearest]
    t_int = np.where(st == C.COVERED, t_int.reshape(-1), np.nan)
    reg = tab_region[nearest]
    return Samples(p, np.where(reg > 0, w, 0.0), t_int, st, reg, reg.copy(), nearest)


def _components(edges: np.ndarray, n: int, keep: np.ndarray) -> Tuple[int, np.ndarray]:
    """Connected components of the vertices ``keep`` (the ``edges`` (m, 2) between two kept vertices)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    e = np.asarray(edges, dtype=np.int64)
    e = e[keep[e[:, 0]] & keep[e[:, 1]]]
    g = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    nc, lab = connected_components(g, directed=False)
    return nc, lab


def enclosed_patches(edges: np.ndarray, n: int, plate: np.ndarray, area_mm2: np.ndarray,
                     max_fraction: float = 0.5) -> np.ndarray:
    """Boolean mask of the non-plate vertices in patches that do not reach the rest of the bone (connected
    by ``edges``: the cell polygons' border edges, :attr:`.cell_polygons.FanMesh.edges`).

    The largest non-plate component (by area) is the rest of the bone; every other one is enclosed,
    unless its area exceeds ``max_fraction`` × the plate area (then it is not a hole but, e.g., a second
    bare part of the bone cut off by the plates).
    """
    other = ~plate
    if not plate.any() or not other.any():
        return np.zeros(n, dtype=bool)
    nc, lab = _components(edges, n, other)
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
    superior axis (:class:`.regions.FemurRegionInfo`). The mesh is expected on a grid whose axes are the label
    map's voxel axes (any step or anchor); ``area_mm2`` (per vertex) is used only for a mesh without that cell
    structure, otherwise the fan's vertex areas are.
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

    # the cell polygons' fan (mirror-symmetric; see .cell_polygons): its border edges connect the patches,
    # its areas weigh them, and the quadrature points lie on its triangles
    fan = fan_mesh(points, triangles, labels.lps_to_ijk(points))
    if fan.is_cells:
        area_mm2 = fan.vertex_areas()
    fin = np.isfinite(th)
    ray_cartilage(np.flatnonzero((region > 0) & ~fin))
    plate = (region > 0) & (fin | (np.nan_to_num(seg) > 0))
    holes = enclosed_patches(fan.edges, n, plate, area_mm2)
    tab_region = np.where(plate, region, 0).astype(np.int32)
    n_holes = 0
    if holes.any():
        from scipy.spatial import cKDTree

        hi = np.flatnonzero(holes)
        pi = np.flatnonzero(plate)
        _, nearest = cKDTree(points[pi]).query(points[hi])
        tab_region[hi] = region[pi[nearest]]
        ray_cartilage(hi)
        n_holes = _components(fan.edges, n, holes)[0] - int((~holes).sum())
    status = C.vertex_status(th, np.nan_to_num(seg), tab_region > 0)
    samples = quadrature(points, triangles, th, status, tab_region, fan=fan)
    bi = BoneInterface(tab_region, status, tab_region.copy(), seg, samples, {}, max(n_holes, 0), grid=labels)
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

    m = len(cart_points)
    dist = np.full(m, np.nan)
    reg = np.zeros(m, dtype=np.int32)
    sub = np.zeros(m, dtype=np.int32)
    q = bi.samples
    cov = np.flatnonzero(q.status == C.COVERED) if q is not None else np.zeros(0, np.int64)
    if m == 0 or len(cov) == 0:
        return dist, reg, sub
    # the side (normal) and region come from the nearest covered bone vertex: a point of the fan on the
    # median between two vertices is a quadrature point twice, once for each, and which copy a tree search
    # returns would depend on the vertex order
    cv = np.flatnonzero(bi.status == C.COVERED)
    near = cv[cKDTree(bone_points[cv]).query(cart_points)[1]]
    # normals of the cartilage's cell polygons' fan: the same for a knee and its mirror image
    cn = fan_mesh(cart_points, cart_triangles,
                  bi.grid.lps_to_ijk(cart_points) if bi.grid is not None else None).vertex_normals()
    articular = np.einsum("ij,ij->i", cn, bone_normals[near]) > 0
    # the interface surface as its covered quadrature points (9 per fan triangle, about 0.3 mm apart: at 2 mm
    # from the surface the distance is overestimated by about 0.01 mm); exact nearest distances
    tree = cKDTree(q.points[cov], balanced_tree=False, compact_nodes=False)
    dist[articular] = tree.query(cart_points[articular])[0]
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


def surface_vertex_areas(points: np.ndarray, triangles: np.ndarray, bi: Optional[BoneInterface] = None) -> np.ndarray:
    """Area per vertex (mm²) of a contour mesh from its cell polygons' fan (:mod:`.cell_polygons`): the weights
    of AC and ThCAC, the same for a knee and its mirror image (the triangle-based
    :func:`.mesh.vertex_areas` moves area between the ends of each arbitrary diagonal)."""
    idx = bi.grid.lps_to_ijk(points) if (bi is not None and bi.grid is not None) else None
    return fan_mesh(points, triangles, idx).vertex_areas()
