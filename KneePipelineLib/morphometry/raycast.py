"""Cartilage thickness on a bone surface by normal ray casting, vectorised, in one pass.

For every bone vertex p with outward unit normal n, the segment p − inner·n … p + outer·n
(reference: 2.5 mm and 10 mm) is intersected with the cartilage surface. The intersection is exact
(Möller–Trumbore ray/triangle tests) and vectorised: the cartilage triangles are binned into a uniform
grid, every ray is sampled at the grid step, and the (ray, triangle) candidate pairs met on the way are
tested all at once with numpy. Hits are classified as *entry* or *exit* by the sign of ray · face
normal (cartilage normals point outward). Thickness = distance from the first entry to the hit right
after it, which must be an exit; anything else (no hit, a lone hit, the ray starting inside cartilage)
is a miss and gives NaN, never 0.

With the smoothed cartilage field (what the pipeline uses) the rays sample the field instead and the
thickness is the distance between its 0.5 crossings. ``thickness_rule="integral"`` measures the field's
integral over the first layer instead (:func:`field_layers`): a Gaussian-smoothed indicator keeps its
integral across a layer, so thin layers read their thickness (the crossing width of a smoothed thin layer
falls off steeply below ~4 sigma and vanishes at ~1.35 sigma), at the price of lower readings within
~sigma of a layer's lateral edge (docs/ACCURACY.md). A ray counts only where the layer reaches 0.5.

The same pass yields the region of each vertex: the sub-region label map is sampled at five points
between the entry and the exit, and the most frequent non-zero label wins. Vertices without a valid
thickness still get a region when a cartilage voxel of an allowed region lies within
``region_max_distance_mm`` of them, so that *coverage* (area with a valid thickness / area of the
bone surface under the region's cartilage) measures the rays that failed.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from .mesh import face_normals, polydata_arrays, vertex_normals


def _as_mesh_arrays(meshes) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(meshes, (list, tuple)):
        meshes = [meshes]
    pts, tris, n = [], [], 0
    for m in meshes:
        if m is None:
            continue
        p, t = polydata_arrays(m)
        pts.append(p)
        tris.append(t + n)
        n += len(p)
    if not pts:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(pts), np.concatenate(tris)


class _TriangleGrid:
    """Triangles binned into cubic cells; each triangle is listed in every cell its box (+pad) touches."""

    def __init__(self, points: np.ndarray, triangles: np.ndarray, cell_mm: float, pad_mm: float):
        self.cell = float(cell_mm)
        tri_pts = points[triangles]
        tmin = tri_pts.min(axis=1) - pad_mm
        tmax = tri_pts.max(axis=1) + pad_mm
        self.origin = tmin.min(axis=0) - self.cell
        lo = np.floor((tmin - self.origin) / self.cell).astype(np.int64)
        hi = np.floor((tmax - self.origin) / self.cell).astype(np.int64)
        self.dims = hi.max(axis=0) + 2
        ext = hi - lo + 1
        counts = ext.prod(axis=1)
        tri_id = np.repeat(np.arange(len(triangles), dtype=np.int64), counts)
        start = np.repeat(np.cumsum(counts) - counts, counts)
        r = np.arange(len(tri_id), dtype=np.int64) - start
        e = ext[tri_id]
        dx = r % e[:, 0]
        dy = (r // e[:, 0]) % e[:, 1]
        dz = r // (e[:, 0] * e[:, 1])
        l = lo[tri_id]
        keys = self._key(l[:, 0] + dx, l[:, 1] + dy, l[:, 2] + dz)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        self.tri = tri_id[order]
        self.keys, self.start, self.count = np.unique(keys, return_index=True, return_counts=True)

    def _key(self, x, y, z):
        return (z * self.dims[1] + y) * self.dims[0] + x

    def lookup(self, pts: np.ndarray):
        """For points (n,3): (index into self.start/count or -1)."""
        c = np.floor((pts - self.origin) / self.cell).astype(np.int64)
        inside = np.all((c >= 0) & (c < self.dims), axis=1)
        keys = self._key(c[:, 0], c[:, 1], c[:, 2])
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        found = inside & (self.keys[pos] == keys)
        return np.where(found, pos, -1)


def ray_hits(origins: np.ndarray, directions: np.ndarray, length_mm: float, points: np.ndarray,
             triangles: np.ndarray, cell_mm: Optional[float] = None, chunk: int = 20000):
    """All intersections of segments origin + t·dir (0 ≤ t ≤ length, unit dirs) with a triangle mesh.

    Returns (ray index, t, side) sorted by ray then t, with side = -1 entry, +1 exit (relative to the
    mesh's face normals). Duplicate hits on shared edges/vertices are merged.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8))
    if len(triangles) == 0 or len(origins) == 0:
        return empty
    a = points[triangles[:, 0]]
    e1 = points[triangles[:, 1]] - a
    e2 = points[triangles[:, 2]] - a
    fn = face_normals(points, triangles)
    if cell_mm is None:
        edge = np.median(np.linalg.norm(e1, axis=1))
        cell_mm = float(np.clip(2.0 * edge, 0.3, 2.0))
    step = cell_mm
    grid = _TriangleGrid(points, triangles, cell_mm, pad_mm=0.5 * step + 1e-6)
    ts = np.arange(0.0, length_mm + step, step)
    out_r, out_t, out_s = [], [], []
    for c0 in range(0, len(origins), chunk):
        o = origins[c0:c0 + chunk]
        d = directions[c0:c0 + chunk]
        samples = o[:, None, :] + ts[None, :, None] * d[:, None, :]
        cell = grid.lookup(samples.reshape(-1, 3))
        hit = np.flatnonzero(cell >= 0)
        if len(hit) == 0:
            continue
        ray_local = hit // len(ts)
        cell = cell[hit]
        cnt = grid.count[cell]
        ray_pair = np.repeat(ray_local, cnt)
        st = np.repeat(grid.start[cell] - (np.cumsum(cnt) - cnt), cnt)
        tri = grid.tri[np.arange(len(ray_pair), dtype=np.int64) + st]
        # unique (ray, triangle) pairs
        key = np.sort(ray_pair * len(triangles) + tri)
        if len(key) > 1:
            key = key[np.concatenate(([True], key[1:] != key[:-1]))]
        ray_pair = key // len(triangles)
        tri = key % len(triangles)
        # Moller-Trumbore
        dd = d[ray_pair]
        E1, E2 = e1[tri], e2[tri]
        pvec = np.cross(dd, E2)
        det = np.einsum("ij,ij->i", E1, pvec)
        ok = np.abs(det) > 1e-12
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tvec = o[ray_pair] - a[tri]
        u = np.einsum("ij,ij->i", tvec, pvec) * inv
        qvec = np.cross(tvec, E1)
        v = np.einsum("ij,ij->i", dd, qvec) * inv
        t = np.einsum("ij,ij->i", E2, qvec) * inv
        eps = 1e-9
        ok &= (u >= -eps) & (v >= -eps) & (u + v <= 1 + eps) & (t >= 0) & (t <= length_mm)
        sel = np.flatnonzero(ok)
        side = np.sign(np.einsum("ij,ij->i", dd[sel], fn[tri[sel]])).astype(np.int8)
        out_r.append(ray_pair[sel] + c0)
        out_t.append(t[sel])
        out_s.append(side)
    if not out_r:
        return empty
    r = np.concatenate(out_r)
    t = np.concatenate(out_t)
    s = np.concatenate(out_s)
    order = np.lexsort((t, r))
    r, t, s = r[order], t[order], s[order]
    dup = np.zeros(len(r), dtype=bool)
    dup[1:] = (r[1:] == r[:-1]) & (s[1:] == s[:-1]) & (np.abs(t[1:] - t[:-1]) < 1e-6)
    keep = ~dup
    return r[keep], t[keep], s[keep]


def field_hits(origins: np.ndarray, directions: np.ndarray, length_mm: float, field, step_mm: float = 0.1,
               level: float = 0.5, chunk: int = 20000):
    """Crossings of the ``level`` set of a scalar field (Volume, trilinear) along segments.

    Same return convention as :func:`ray_hits`: (ray, t, side) with side -1 entering (value rising
    through ``level``) and +1 leaving, sorted by ray then t. Only the first entry and the first exit
    after it are reported per ray (that is all the thickness rule uses).
    """
    from scipy import ndimage

    n_s = int(np.ceil(length_mm / step_mm)) + 1
    ts = np.linspace(0.0, length_mm, n_s)
    arr = np.asarray(field.array, dtype=np.float32)
    m_inv = np.linalg.inv(field.direction @ np.diag(field.spacing_mm))
    out_r, out_t, out_s = [], [], []
    # coarse pass (0.4 mm): the smoothed field rises well above 0.05 within 0.2 mm of any 0.5 crossing,
    # so rays that never exceed 0.05 cannot cross the surface and skip the fine pass.
    ts_c = np.linspace(0.0, length_mm, int(np.ceil(length_mm / 0.4)) + 1)
    o_all = (origins - field.origin_mm) @ m_inv.T
    d_all = directions @ m_inv.T
    cand = []
    for c0 in range(0, len(origins), chunk):
        pc = o_all[c0:c0 + chunk, None, :] + ts_c[None, :, None] * d_all[c0:c0 + chunk, None, :]
        vc = ndimage.map_coordinates(arr, pc.reshape(-1, 3)[:, ::-1].T, order=1, mode="constant", cval=0.0,
                                     prefilter=False).reshape(len(pc), len(ts_c))
        cand.append(np.flatnonzero(vc.max(axis=1) > 0.05) + c0)
    cand = np.concatenate(cand) if cand else np.zeros(0, np.int64)
    for c0 in range(0, len(cand), chunk):
        rows_global = cand[c0:c0 + chunk]
        o_ijk = o_all[rows_global]
        d_ijk = d_all[rows_global]
        o = o_ijk
        pts = o_ijk[:, None, :] + ts[None, :, None] * d_ijk[:, None, :]      # (n, s, 3) as i, j, k
        coords = pts.reshape(-1, 3)[:, ::-1].T                                  # k, j, i
        vals = ndimage.map_coordinates(arr, coords, order=1, mode="constant", cval=0.0,
                                       prefilter=False).reshape(len(o), n_s)
        inside = vals >= level
        rise = ~inside[:, :-1] & inside[:, 1:]
        has_in = rise.any(axis=1)
        e = np.argmax(rise, axis=1)                       # entry between samples e and e+1
        idx = np.arange(n_s - 1)[None, :]
        fall = inside[:, :-1] & ~inside[:, 1:] & (idx > e[:, None])
        has_out = fall.any(axis=1) & has_in
        x = np.argmax(fall, axis=1)
        rows = np.arange(len(o))

        def cross(k):
            v0, v1 = vals[rows, k], vals[rows, k + 1]
            frac = (level - v0) / np.where(v1 != v0, v1 - v0, 1.0)
            return ts[k] + np.clip(frac, 0.0, 1.0) * (ts[k + 1] - ts[k])

        t_in, t_out = cross(e), cross(x)
        sel_in = np.flatnonzero(has_in)
        sel_out = np.flatnonzero(has_out)
        out_r += [rows_global[sel_in], rows_global[sel_out]]
        out_t += [t_in[sel_in], t_out[sel_out]]
        out_s += [np.full(len(sel_in), -1, np.int8), np.full(len(sel_out), 1, np.int8)]
    if not out_r:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int8)
    r = np.concatenate(out_r)
    t = np.concatenate(out_t)
    s = np.concatenate(out_s)
    order = np.lexsort((s, t, r))
    return r[order], t[order], s[order]


def field_layers(origins: np.ndarray, directions: np.ndarray, length_mm: float, field, step_mm: float = 0.1,
                 level: float = 0.5, chunk: int = 20000, with_peaks: bool = False):
    """The first layer of a smoothed cartilage field along each segment: (t_in, t_out, integral_mm).

    ``t_in`` / ``t_out``: the first ``level`` crossing upward and the next downward (linear interpolation;
    NaN when the ray meets no layer). ``integral_mm``: the integral of the field along the ray over that
    layer's whole bump (from the valley before the entry to the valley after the exit; a valley is a local
    minimum or a value below 0.02). A Gaussian-smoothed indicator keeps its integral across a layer, so
    this is the layer's thickness with partial volume accounted for: exact for a flat layer of any
    thickness, while the crossing width under-reads layers thinner than ~4 sigma and loses those thinner
    than ~1.35 sigma at once (the cartilage's thin edges, which made regional means depend on the voxel
    grid).

    ``with_peaks=True`` adds two arrays: ``peak`` = the field's maximum along each segment (0 where it stays
    below 0.05) and ``bump_mm`` = the integral over the bump around that maximum for the rays that meet
    no layer (0 where the field stays below 0.05; NaN for the rays with a layer). Both vary continuously
    over the bone surface, so a layer's edge can be located between vertices (``peak`` = ``level``) and
    the thin partial layer just beyond it has a thickness (:func:`.mesh.covered_area_integrals`).
    """
    from scipy import ndimage

    n = len(origins)
    t_in = np.full(n, np.nan)
    t_out = np.full(n, np.nan)
    integral = np.full(n, np.nan)
    peak = np.zeros(n)
    bump = np.zeros(n)
    if n == 0:
        return (t_in, t_out, integral, peak, bump) if with_peaks else (t_in, t_out, integral)
    n_s = int(np.ceil(length_mm / step_mm)) + 1
    ts = np.linspace(0.0, length_mm, n_s)
    dt = ts[1] - ts[0]
    arr = np.asarray(field.array, dtype=np.float32)
    m_inv = np.linalg.inv(field.direction @ np.diag(field.spacing_mm))
    o_all = (origins - field.origin_mm) @ m_inv.T
    d_all = directions @ m_inv.T
    # coarse pass (0.4 mm) as in field_hits: rays that never exceed 0.05 cannot cross the level
    ts_c = np.linspace(0.0, length_mm, int(np.ceil(length_mm / 0.4)) + 1)
    cand = []
    for c0 in range(0, n, chunk):
        pc = o_all[c0:c0 + chunk, None, :] + ts_c[None, :, None] * d_all[c0:c0 + chunk, None, :]
        vc = ndimage.map_coordinates(arr, pc.reshape(-1, 3)[:, ::-1].T, order=1, mode="constant", cval=0.0,
                                     prefilter=False).reshape(len(pc), len(ts_c))
        cand.append(np.flatnonzero(vc.max(axis=1) > 0.05) + c0)
    cand = np.concatenate(cand)
    idx = np.arange(n_s - 1)[None, :]
    for c0 in range(0, len(cand), chunk):
        rows_g = cand[c0:c0 + chunk]
        pts = o_all[rows_g][:, None, :] + ts[None, :, None] * d_all[rows_g][:, None, :]
        vals = ndimage.map_coordinates(arr, pts.reshape(-1, 3)[:, ::-1].T, order=1, mode="constant", cval=0.0,
                                       prefilter=False).reshape(len(rows_g), n_s)
        inside = vals >= level
        rise = ~inside[:, :-1] & inside[:, 1:]
        has = rise.any(axis=1)
        e = np.argmax(rise, axis=1)
        fall = inside[:, :-1] & ~inside[:, 1:] & (idx > e[:, None])
        has &= fall.any(axis=1)
        x = np.argmax(fall, axis=1)
        rows = np.arange(len(rows_g))
        if with_peaks:      # rays without a layer: the bump around their maximum
            top = np.argmax(vals, axis=1)
            peak[rows_g] = vals[rows, top]
            e_b, x_b = np.where(has, e, top), np.where(has, x, np.minimum(top, n_s - 2))
        else:
            e_b, x_b = e, x

        def cross(k):
            v0, v1 = vals[rows, k], vals[rows, k + 1]
            frac = (level - v0) / np.where(v1 != v0, v1 - v0, 1.0)
            return ts[k] + np.clip(frac, 0.0, 1.0) * (ts[k + 1] - ts[k])

        # valleys: local minima or near-zero samples (the ends count as valleys)
        valley = np.zeros(vals.shape, dtype=bool)
        valley[:, 1:-1] = (vals[:, 1:-1] <= vals[:, :-2]) & (vals[:, 1:-1] <= vals[:, 2:])
        valley |= vals < 0.02
        valley[:, 0] = valley[:, -1] = True
        k_all = np.arange(n_s)[None, :]
        start = np.max(np.where(valley & (k_all <= e_b[:, None]), k_all, 0), axis=1)
        end = np.min(np.where(valley & (k_all >= x_b[:, None] + 1), k_all, n_s - 1), axis=1)
        in_bump = (k_all >= start[:, None]) & (k_all <= end[:, None])
        w = np.where(in_bump, vals, 0.0)
        # trapezoid over the bump (its end samples are valleys, counted half)
        integ = (w.sum(axis=1) - 0.5 * (vals[rows, start] + vals[rows, end])) * dt
        sel = np.flatnonzero(has)
        t_in[rows_g[sel]] = cross(e)[sel]
        t_out[rows_g[sel]] = cross(x)[sel]
        integral[rows_g[sel]] = integ[sel]
        if with_peaks:
            bump[rows_g] = np.where(has, np.nan, integ)
    if with_peaks:
        bump[np.isfinite(t_in)] = np.nan
        return t_in, t_out, integral, peak, bump
    return t_in, t_out, integral


def _sample_labels(volume, pts: np.ndarray) -> np.ndarray:
    ijk = np.rint(volume.lps_to_ijk(pts)).astype(np.int64)
    shape = volume.shape_ijk
    inside = np.all((ijk >= 0) & (ijk < np.array(shape)), axis=1)
    out = np.zeros(len(pts), dtype=np.int64)
    i, j, k = ijk[inside].T
    out[inside] = volume.array[k, j, i]
    return out


def thickness_on_surface(bone, cartilage, region_volume=None, *, inner_mm: float = 2.5, outer_mm: float = 10.0,
                         region_codes: Optional[Iterable[int]] = None, region_max_distance_mm: float = 1.0,
                         normals: Optional[np.ndarray] = None, cell_mm: Optional[float] = None,
                         cartilage_field=None, step_mm: float = 0.1, thickness_rule: str = "crossings",
                         details: Optional[dict] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Thickness (mm, NaN = miss) and region code (0 = none) for every vertex of ``bone``.

    ``cartilage``: one vtkPolyData or a list of them (e.g. medial + lateral tibial plates), closed,
    outward normals. ``region_volume``: optional sub-region label map (Volume) sampled along each hit
    segment; ``region_codes`` restricts which labels count (default: all non-zero).
    ``normals``: outward unit normals of the bone vertices (default: area-weighted from the faces).
    ``cartilage_field``: optional Volume holding the smoothed cartilage field whose 0.5 level set *is*
    the cartilage mesh (what :func:`mesh_from_mask` contours). When given, the rays sample it every
    ``step_mm`` (trilinear) and the 0.5 crossings are found by linear interpolation - the same surface,
    several times faster than exact triangle tests; ``cartilage`` is then not used.
    ``thickness_rule`` (with a field): ``"crossings"`` (default) = the distance between the 0.5 crossings;
    ``"integral"`` = the field's integral over the first layer (:func:`field_layers`: partial volume
    counted, so thin layers read their thickness - 0.897 instead of 0.563 mm for a 0.9 mm layer - but a
    layer's lateral edges read less, within ~sigma of the edge). A ray counts (and its region is sampled
    between the crossings) only where the layer reaches 0.5 either way.
    ``details`` (with a field): a dict that receives ``peak`` (the field's maximum on each ray) and
    ``bump_mm`` (the partial layer's integral on the rays without a layer) - what
    :func:`.mesh.covered_area_integrals` needs to place the edge of the covered area between vertices.
    """
    bpts, btris = polydata_arrays(bone)
    n = len(bpts)
    thickness = np.full(n, np.nan)
    region = np.zeros(n, dtype=np.int32)
    if n == 0:
        return thickness, region
    if normals is None:
        normals = vertex_normals(bpts, btris)
    normals = np.asarray(normals, dtype=float)
    length = inner_mm + outer_mm
    origins = bpts - inner_mm * normals
    if cartilage_field is not None:
        if thickness_rule not in ("integral", "crossings"):
            raise ValueError("thickness_rule must be 'integral' or 'crossings'")
        t_in_all, t_out_all, integ, peak, bump = field_layers(origins, normals, length, cartilage_field,
                                                               step_mm=step_mm, with_peaks=True)
        if details is not None:
            details["peak"], details["bump_mm"] = peak, bump
        rv = np.flatnonzero(np.isfinite(t_in_all))
        t_in, t_out = t_in_all[rv], t_out_all[rv]
        thickness[rv] = integ[rv] if thickness_rule == "integral" else t_out - t_in
        _regions_between(region, region_volume, region_codes, origins, normals, rv, t_in, t_out)
        r = np.zeros(0, np.int64)
    else:
        cpts, ctris = _as_mesh_arrays(cartilage)
        r, t, s = ray_hits(origins, normals, length, cpts, ctris, cell_mm=cell_mm)
    if cartilage_field is None and len(r):
        first = np.ones(len(r), dtype=bool)
        first[1:] = r[1:] != r[:-1]
        # first entry per ray
        is_entry = s < 0
        entry_idx = np.flatnonzero(is_entry)
        rays_e, pos = np.unique(r[entry_idx], return_index=True)
        ei = entry_idx[pos]
        nxt = ei + 1
        valid = nxt < len(r)
        nxt = np.where(valid, nxt, 0)
        valid &= (r[nxt] == rays_e) & (s[nxt] > 0)
        rv, t_in, t_out = rays_e[valid], t[ei[valid]], t[nxt[valid]]
        thickness[rv] = t_out - t_in
        _regions_between(region, region_volume, region_codes, origins, normals, rv, t_in, t_out)
    if region_volume is not None and region_max_distance_mm > 0:
        todo = np.flatnonzero(region == 0)
        if len(todo):
            region[todo] = nearest_region(region_volume, bpts[todo], region_codes, region_max_distance_mm)
    return thickness, region


def _regions_between(region, region_volume, region_codes, origins, normals, rv, t_in, t_out) -> None:
    """Region of rays ``rv``: the most frequent allowed label at five points between entry and exit."""
    if region_volume is None or not len(rv):
        return
    fr = (np.arange(5) + 0.5) / 5.0
    tt = t_in[:, None] + fr[None, :] * (t_out - t_in)[:, None]
    p = origins[rv][:, None, :] + tt[:, :, None] * normals[rv][:, None, :]
    lab = _sample_labels(region_volume, p.reshape(-1, 3)).reshape(len(rv), 5)
    codes = np.array(sorted(region_codes)) if region_codes is not None else np.unique(lab[lab > 0])
    if len(codes):
        counts = np.stack([(lab == c).sum(axis=1) for c in codes], axis=1)
        best = codes[np.argmax(counts, axis=1)]
        region[rv] = np.where(counts.max(axis=1) > 0, best, 0)


def cartilage_length_on_rays(labels, codes: Sequence[int], origins: np.ndarray, directions: np.ndarray,
                             length_mm: float) -> np.ndarray:
    """Length (mm) of each segment origin + t·dir, 0 ≤ t ≤ length, lying in voxels with one of ``codes``.

    Nearest-voxel sampling at a quarter of the smallest voxel spacing: a diagnosis of what the
    segmentation holds where a ray found no thickness (a hole, a layer thinner than the smoothing
    resolves, or something else).
    """
    step = 0.25 * float(np.min(labels.spacing_mm))
    ts = np.arange(0.0, length_mm + 1e-9, step)
    out = np.zeros(len(origins))
    for c0 in range(0, len(origins), 5000):
        p = origins[c0:c0 + 5000, None, :] + ts[None, :, None] * directions[c0:c0 + 5000, None, :]
        lab = _sample_labels(labels, p.reshape(-1, 3)).reshape(len(p), len(ts))
        out[c0:c0 + 5000] = np.isin(lab, list(codes)).sum(axis=1) * step
    return out


def nearest_region(region_volume, pts: np.ndarray, region_codes: Optional[Iterable[int]], max_distance_mm: float):
    """Label of the nearest voxel (centre) with an allowed region code within ``max_distance_mm``, else 0."""
    from scipy.spatial import cKDTree

    # only the array box around the points
    lo = pts.min(axis=0) - max_distance_mm - 1
    hi = pts.max(axis=0) + max_distance_mm + 1
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cijk = region_volume.lps_to_ijk(corners)
    shape = np.array(region_volume.shape_ijk)
    b0 = np.clip(np.floor(cijk.min(axis=0)).astype(int), 0, shape)
    b1 = np.clip(np.ceil(cijk.max(axis=0)).astype(int) + 1, 0, shape)
    sub = region_volume.array[b0[2]:b1[2], b0[1]:b1[1], b0[0]:b1[0]]
    mask = np.isin(sub, list(region_codes)) if region_codes is not None else sub > 0
    k, j, i = np.nonzero(mask)
    if len(i) == 0:
        return np.zeros(len(pts), dtype=np.int32)
    labs_sub = sub[k, j, i]
    k, j, i = k + b0[2], j + b0[1], i + b0[0]
    arr = region_volume.array
    centres = region_volume.ijk_to_lps(np.stack([i, j, k], axis=1))
    near = np.all((centres >= lo) & (centres <= hi), axis=1)
    if not near.any():
        return np.zeros(len(pts), dtype=np.int32)
    tree = cKDTree(centres[near])
    dist, idx = tree.query(pts, k=1, distance_upper_bound=max_distance_mm)
    labs = arr[k[near], j[near], i[near]]
    out = np.zeros(len(pts), dtype=np.int32)
    ok = np.isfinite(dist)
    out[ok] = labs[idx[ok]]
    return out
