"""Measuring on a marching-cubes mesh without its arbitrary diagonals: the cell polygons and their fan.

A contour mesh (flying edges / marching cubes) has its vertices on the edges of the sampling grid, where
the field crosses the level; *which* vertices form the surface inside one grid cell (the cell's polygon,
3-7 vertices) follows from the field alone, but how that polygon is cut into triangles (which diagonal
of a quad) comes from a case table that is not mirror-symmetric: the mirrored field gives the mirrored
vertices but, on the sample knee, only about 27 % of the mirrored triangles (docs/MEASURES.md). Vertex
areas, interpolation inside triangles and the triangles' connectivity then differ between a knee and its
mirror image (vertex areas by 17-23 % SD), and so do the measures summed over them.

:func:`fan_mesh` recovers the cell polygons and re-triangulates each one as a fan from the centroid of its
vertices, a triangulation fixed by the polygon itself: mirroring, or permuting the array axes, gives the
mirrored / permuted fan. Geometry only: no grid is needed. Each vertex lies on a grid edge along one
index axis (its *interpolated* axis, the one whose coordinate few other vertices share; the other two are
grid planes holding many vertices); an edge of the mesh lies on a cell face, so it is a polygon border,
when its two vertices share a grid plane (equal coordinate along an axis that is interpolated for
neither). The triangles joined by the other edges - the diagonals - form one polygon.

Meshes that are not contour meshes (no such structure: a "polygon" of more than ``MAX_TRIANGLES``) keep
their own triangles (each triangle its own polygon, fanned from its centroid: the same surface).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TRIANGLES = 12        # a marching-cubes cell polygon has at most 7 vertices (5 triangles)


@dataclass
class FanMesh:
    """The fan triangulation: ``points`` = the mesh's vertices followed by one centroid per polygon;
    ``triangles`` (centroid, a, b), one per polygon border edge a -> b (directed as in the mesh, so the
    normals keep their side); ``polygon``: the polygon of each fan triangle; ``is_cells``: whether the
    cell structure was found (False: every triangle is its own polygon)."""
    points: np.ndarray
    triangles: np.ndarray
    polygon: np.ndarray
    n_vertices: int
    is_cells: bool

    @property
    def edges(self) -> np.ndarray:
        """The polygon border edges (a, b): the mesh edges that lie on grid-cell faces."""
        return self.triangles[:, 1:]

    def triangle_areas(self) -> np.ndarray:
        p = self.points[self.triangles]
        return 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)

    def vertex_areas(self) -> np.ndarray:
        """Area per mesh vertex: half of each fan triangle it borders (the centroid's third shared equally
        between the triangle's two vertices); sums to the surface area."""
        a = self.triangle_areas()
        e = self.edges
        n = self.n_vertices
        return np.bincount(e[:, 0], a / 2, minlength=n) + np.bincount(e[:, 1], a / 2, minlength=n)

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit normals of the mesh vertices from the fan triangles around them."""
        p = self.points[self.triangles]
        fn = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
        e = self.edges
        vn = np.zeros((self.n_vertices, 3))
        for c in range(3):
            vn[:, c] = (np.bincount(e[:, 0], fn[:, c], minlength=self.n_vertices)
                        + np.bincount(e[:, 1], fn[:, c], minlength=self.n_vertices))
        norm = np.linalg.norm(vn, axis=1, keepdims=True)
        return vn / np.where(norm > 0, norm, 1.0)


def cell_polygons(points_index: np.ndarray, triangles: np.ndarray, tol: float = 1e-6):
    """(polygon id per triangle, (t, 3) bool: edge t0->t1, t1->t2, t2->t0 lies on a cell face), or None when
    the mesh has no cell structure. ``points_index``: the vertices in the sampling grid's index space (any
    affine image of it with the same axes, e.g. the label map's voxel indices)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t = np.asarray(triangles, dtype=np.int64)
    nt, nv = len(t), len(points_index)
    if nt == 0:
        return None
    u, v = t.reshape(-1), t[:, [1, 2, 0]].reshape(-1)
    share = np.abs(points_index[u] - points_index[v]) < tol                   # (3t, 3) same coordinate
    # the interpolated axis of each vertex: its coordinate is the least shared with other vertices
    count = np.zeros(points_index.shape)
    for ax in range(3):
        _, inv, c = np.unique(np.round(points_index[:, ax], 6), return_inverse=True, return_counts=True)
        count[:, ax] = c[inv.reshape(-1)]
    interp = np.argmin(count, axis=1)
    grid_axis = np.ones((3 * nt, 3), dtype=bool)
    rows = np.arange(3 * nt)
    grid_axis[rows, interp[u]] = False
    grid_axis[rows, interp[v]] = False
    face = (share & grid_axis).any(axis=1)
    # the two triangles on each diagonal belong to one polygon
    key = np.minimum(u, v) * (nv + 1) + np.maximum(u, v)
    tri_of = rows // 3
    order = np.argsort(key, kind="stable")
    ks = key[order]
    same = np.flatnonzero(ks[1:] == ks[:-1])
    a, b = order[same], order[same + 1]
    diag = ~face[a] & ~face[b]
    g = coo_matrix((np.ones(int(diag.sum())), (tri_of[a[diag]], tri_of[b[diag]])), shape=(nt, nt))
    n, lab = connected_components(g, directed=False)
    if np.bincount(lab, minlength=n).max() > MAX_TRIANGLES:
        return None
    return lab, face.reshape(-1, 3)


def fan_mesh(points: np.ndarray, triangles: np.ndarray, points_index: np.ndarray = None) -> FanMesh:
    """The cell polygons of a contour mesh fanned from their centroids (see the module docstring);
    ``points_index``: the vertices in grid index space (None: no cell structure is looked for)."""
    t = np.asarray(triangles, dtype=np.int64)
    p = np.asarray(points, dtype=float)
    found = cell_polygons(np.asarray(points_index, dtype=float), t) if points_index is not None else None
    if found is None:
        lab, face, is_cells = np.arange(len(t)), np.ones(t.shape, dtype=bool), False
    else:
        (lab, face), is_cells = found, True
    u, v = t.reshape(-1), t[:, [1, 2, 0]].reshape(-1)
    f = face.reshape(-1)
    pol, a, b = np.repeat(lab, 3)[f], u[f], v[f]
    n_pol = int(lab.max()) + 1 if len(lab) else 0
    # each polygon vertex starts exactly one border edge: the centroid of the starts is the vertex centroid
    cnt = np.maximum(np.bincount(pol, minlength=n_pol), 1).astype(float)
    cen = np.stack([np.bincount(pol, weights=p[a, c], minlength=n_pol) for c in range(3)], axis=1) / cnt[:, None]
    n = len(p)
    return FanMesh(np.concatenate([p, cen]), np.stack([n + pol, a, b], axis=1), pol, n, is_cells)
