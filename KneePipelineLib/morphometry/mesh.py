"""Surface meshes from binary masks, in physical LPS mm, deterministic; mesh helpers and writers.

A mask is smoothed with a Gaussian whose variance is given in mm² (sigma per array axis =
sqrt(var) / spacing of that axis, so the smoothing is physical and isotropic whatever the voxel size),
contoured at 0.5 with flying edges in *index* space, and the points are then mapped to LPS with the
volume's full affine (origin + direction · spacing). Faces are oriented so normals point outward even
when the direction matrix has a negative determinant. No random clustering, no threads that change
the result: the same mask gives the same mesh, bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import InvalidInputError


# -- numpy <-> vtk ------------------------------------------------------------------------------
def polydata_arrays(poly) -> Tuple[np.ndarray, np.ndarray]:
    """(points (n,3) float64, triangles (m,3) int64) of a triangle-only vtkPolyData."""
    from vtk.util.numpy_support import vtk_to_numpy

    pts = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64) if poly.GetNumberOfPoints() else np.zeros((0, 3))
    polys = poly.GetPolys()
    if polys is None or polys.GetNumberOfCells() == 0:
        return pts, np.zeros((0, 3), dtype=np.int64)
    conn = vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
    offs = vtk_to_numpy(polys.GetOffsetsArray()).astype(np.int64)
    if not np.all(np.diff(offs) == 3):
        raise InvalidInputError("The mesh has non-triangle cells.", hint="Triangulate it first (vtkTriangleFilter).")
    return pts, conn.reshape(-1, 3)


def make_polydata(points: np.ndarray, triangles: np.ndarray, normals: Optional[np.ndarray] = None):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

    poly = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True))
    poly.SetPoints(vpts)
    tris = np.ascontiguousarray(triangles, dtype=np.int64)
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * len(tris) + 1, 3, dtype=np.int64)
    cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True), numpy_to_vtkIdTypeArray(tris.ravel(), deep=True))
    poly.SetPolys(cells)
    if normals is not None:
        arr = numpy_to_vtk(np.ascontiguousarray(normals, dtype=np.float32), deep=True)
        arr.SetName("Normals")
        poly.GetPointData().SetNormals(arr)
    return poly


def set_point_array(poly, name: str, values: np.ndarray) -> None:
    from vtk.util.numpy_support import numpy_to_vtk

    arr = numpy_to_vtk(np.ascontiguousarray(values), deep=True)
    arr.SetName(name)
    poly.GetPointData().AddArray(arr)


def get_point_array(poly, name: str) -> Optional[np.ndarray]:
    from vtk.util.numpy_support import vtk_to_numpy

    arr = poly.GetPointData().GetArray(name)
    return None if arr is None else vtk_to_numpy(arr)


# -- geometry on triangle meshes ----------------------------------------------------------------
def face_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Un-normalised face normals (length = 2 × triangle area)."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return np.cross(b - a, c - a)


def vertex_normals(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    fn = face_normals(points, triangles)
    vn = np.zeros_like(points)
    for c in range(3):
        np.add.at(vn, triangles[:, c], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return vn / np.where(norm > 0, norm, 1.0)


def vertex_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area per vertex: one third of the area of each adjacent triangle (mm²); sums to the mesh area."""
    area = 0.5 * np.linalg.norm(face_normals(points, triangles), axis=1)
    out = np.zeros(len(points))
    for c in range(3):
        out += np.bincount(triangles[:, c], weights=area / 3.0, minlength=len(points))
    return out


def covered_pieces(points: np.ndarray, triangles: np.ndarray, level: np.ndarray, values: np.ndarray,
                   boundary_value: Optional[float] = None):
    """The covered part of each triangle as triangular pieces (see :func:`covered_area_integrals`):
    (parent triangle index (p,), corners in the parent's barycentric coordinates (p, 3 corners, 3),
    the value at each corner (p, 3; linear on the piece), the piece's area (p,)). ``level`` >= 0 is
    covered; inside each triangle level and value are linear and the triangle is clipped at level 0."""
    empty = (np.zeros(0, dtype=np.int64), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0))
    if len(triangles) == 0:
        return empty
    area = 0.5 * np.linalg.norm(face_normals(points, triangles), axis=1)
    f = np.asarray(level, dtype=float)[triangles]
    t = np.asarray(values, dtype=float)[triangles]
    pos = f >= 0
    npos = pos.sum(axis=1)
    eye = np.eye(3)
    out = []
    full = np.flatnonzero(npos == 3)
    if len(full):
        out.append((full, np.broadcast_to(eye, (len(full), 3, 3)), t[full], area[full]))
    for count in (1, 2):
        sel = np.flatnonzero(npos == count)
        if not len(sel):
            continue
        # the odd vertex first: the covered one (count 1) or the uncovered one (count 2)
        k = np.argmax(pos[sel], axis=1) if count == 1 else np.argmin(pos[sel], axis=1)
        order = (k[:, None] + np.arange(3)[None, :]) % 3
        rows = sel[:, None]
        fr, tr, a = f[rows, order], t[rows, order], area[sel]
        ex = eye[order]                                 # the reordered corners in the parent's coordinates
        s1 = fr[:, 0] / (fr[:, 0] - fr[:, 1])          # edge 0-1 crosses level 0 at s1 from vertex 0
        s2 = fr[:, 0] / (fr[:, 0] - fr[:, 2])
        x1 = (1 - s1)[:, None] * ex[:, 0] + s1[:, None] * ex[:, 1]
        x2 = (1 - s2)[:, None] * ex[:, 0] + s2[:, None] * ex[:, 2]
        if boundary_value is None:
            t1 = (1 - s1) * tr[:, 0] + s1 * tr[:, 1]
            t2 = (1 - s2) * tr[:, 0] + s2 * tr[:, 2]
        else:
            t1 = t2 = np.full(len(sel), float(boundary_value))
        if count == 1:      # the corner (0, x1, x2)
            out.append((sel, np.stack([ex[:, 0], x1, x2], axis=1), np.stack([tr[:, 0], t1, t2], axis=1), a * s1 * s2))
        else:               # the quadrilateral (1, 2, x2, x1) as two triangles (1, 2, x2) + (1, x2, x1)
            a_a = a * (1 - s2)
            a_b = a * (1 - s1 * s2) - a_a
            out.append((sel, np.stack([ex[:, 1], ex[:, 2], x2], axis=1),
                        np.stack([tr[:, 1], tr[:, 2], t2], axis=1), a_a))
            out.append((sel, np.stack([ex[:, 1], x2, x1], axis=1), np.stack([tr[:, 1], t2, t1], axis=1), a_b))
    if not out:
        return empty
    return tuple(np.concatenate([o[i] for o in out]) for i in range(4))


def covered_area_integrals(points: np.ndarray, triangles: np.ndarray, level: np.ndarray, values: np.ndarray,
                           boundary_value: Optional[float] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per vertex: the covered area it stands for and the integral of the value over it, (alpha, tau).

    ``level`` (per vertex) varies continuously over the surface and is >= 0 where it is covered (e.g. the
    cartilage field's maximum on the vertex's ray - 0.5). Inside each triangle the level and ``values``
    are interpolated linearly, the triangle is clipped to level >= 0 (its covered part), and the covered
    part's area and integral of the value are shared among the triangle's vertices by their barycentric
    weight: alpha_v = sum over triangles of the integral of lambda_v over the covered part, tau_v = the same
    of lambda_v * value. A fully covered surface gives alpha = :func:`vertex_areas` (one third of each
    triangle) and sum(tau) = the exact integral of the piecewise-linear value. So the covered area and a
    regional mean (sum tau / sum alpha) no longer jump by a whole vertex area when one vertex's ray
    changes status: the edge of the covered area moves continuously between vertices, as the anatomy
    does. ``boundary_value``: the value on the edge itself (level = 0); None = interpolated between the
    two vertices (then ``values`` must hold a value for uncovered vertices too).
    """
    n = len(points)
    alpha = np.zeros(n)
    tau = np.zeros(n)
    tri, bary, tc, a = covered_pieces(points, triangles, level, values, boundary_value)
    if not len(tri):
        return alpha, tau
    # over a triangle piece with corners x_c (parent weights) and linear value t: the integral of
    # lambda_v is a * mean_c x_cv, of lambda_v * t is a / 12 * (sum_c x_cv t_c + sum_c x_cv * sum_c t_c)
    la = a[:, None] * bary.mean(axis=1)
    lt = a[:, None] / 12.0 * (np.einsum("mcv,mc->mv", bary, tc) + bary.sum(axis=1) * tc.sum(axis=1)[:, None])
    ids = triangles[tri]
    for v in range(3):
        alpha += np.bincount(ids[:, v], weights=la[:, v], minlength=n)
        tau += np.bincount(ids[:, v], weights=lt[:, v], minlength=n)
    return alpha, tau


def _subdivision(n: int) -> np.ndarray:
    """The n² sub-triangles of a triangle cut into n parts per edge, as barycentric corners (n², 3, 3)."""
    out = []
    for i in range(n):
        for j in range(n - i):
            out.append([(i, j), (i + 1, j), (i, j + 1)])
            if i + j <= n - 2:
                out.append([(i + 1, j), (i + 1, j + 1), (i, j + 1)])
    ij = np.asarray(out, dtype=float) / n
    return np.concatenate([ij, 1.0 - ij.sum(axis=2, keepdims=True)], axis=2)


def region_area_integrals(points: np.ndarray, triangles: np.ndarray, level: np.ndarray, values: np.ndarray,
                          boundary_value: Optional[float], member: np.ndarray, region_points: np.ndarray,
                          region_of_points, codes, subdivisions: int = 4):
    """Per region code: (covered area, integral of the value over it, whole area), with the regions'
    boundaries placed *between* vertices, as :func:`covered_area_integrals` places the covered edge.

    The covered pieces of each triangle (:func:`covered_pieces`) and the whole triangles are cut into
    ``subdivisions``² sub-triangles; each takes the region ``region_of_points`` gives at the point
    ``region_points`` (per vertex, interpolated linearly) takes at its centroid, so a region's boundary
    moves with the anatomy in steps of 1/``subdivisions`` of a triangle instead of whole vertex areas.
    ``member`` (per vertex, 0-1, interpolated linearly) restricts the integrals to a part of the surface
    (e.g. the vertices of a plate): summed over the codes they equal sum(member * alpha) and
    sum(member * tau) of :func:`covered_area_integrals` when every sub-triangle falls into one of them.
    Triangles whose three corners lie in one region are not cut (the region is then taken as whole)."""
    codes = list(codes)
    res = {c: [0.0, 0.0, 0.0] for c in codes}
    member = np.asarray(member, dtype=float)
    keep = np.flatnonzero(member[triangles].max(axis=1) > 0)
    if not len(keep):
        return {c: tuple(v) for c, v in res.items()}
    tris = triangles[keep]
    corner_region = region_of_points(region_points[tris].reshape(-1, 3)).reshape(-1, 3)
    one = (corner_region == corner_region[:, :1]).all(axis=1)
    sub = _subdivision(int(subdivisions))

    def accumulate(tri, bary, tc, a, col_cov):
        """Pieces in parent triangles ``tri`` (indices into tris): bary (p,3,3), values tc (p,3), areas a."""
        m = np.einsum("pcv,pv->pc", bary, member[tris[tri]])
        whole = one[tri]
        parts = []
        if whole.any():     # not cut: one region for the piece
            w = np.flatnonzero(whole)
            parts.append((corner_region[tri[w], 0], m[w], tc[w], a[w]))
        cut = np.flatnonzero(~whole)
        if len(cut):
            k = len(sub)
            sb = np.einsum("scd,pdv->pscv", sub, bary[cut])            # sub-triangle corners, parent weights
            sm = np.einsum("scd,pd->psc", sub, m[cut]).reshape(-1, 3)
            st = np.einsum("scd,pd->psc", sub, tc[cut]).reshape(-1, 3)
            cen = sb.mean(axis=2)                                        # (p, s, 3) centroids
            rp = np.einsum("psv,pvx->psx", cen, region_points[tris[tri[cut]]]).reshape(-1, 3)
            parts.append((np.asarray(region_of_points(rp)), sm, st, np.repeat(a[cut] / k, k)))
        for r, mm, tt, aa in parts:
            am = aa * mm.mean(axis=1)
            at = aa / 12.0 * ((mm * tt).sum(axis=1) + mm.sum(axis=1) * tt.sum(axis=1))
            for c in codes:
                s = r == c
                if col_cov:
                    res[c][0] += float(am[s].sum())
                    res[c][1] += float(at[s].sum())
                else:
                    res[c][2] += float(am[s].sum())

    tri, bary, tc, a = covered_pieces(points, tris, level, values, boundary_value)
    if len(tri):
        accumulate(tri, bary, tc, a, True)
    area = 0.5 * np.linalg.norm(face_normals(points, tris), axis=1)
    allt = np.arange(len(tris))
    accumulate(allt, np.broadcast_to(np.eye(3), (len(tris), 3, 3)), np.zeros((len(tris), 3)), area, False)
    return {c: tuple(v) for c, v in res.items()}


def signed_volume(points: np.ndarray, triangles: np.ndarray) -> float:
    """Enclosed volume (mm³) of a closed mesh; positive when normals point outward."""
    a, b, c = points[triangles[:, 0]], points[triangles[:, 1]], points[triangles[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


# -- meshing ------------------------------------------------------------------------------------
def _bbox(mask: np.ndarray) -> Optional[Tuple[slice, ...]]:
    sl = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        if len(nz) == 0:
            return None
        sl.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(sl)


def smoothed_crop(mask: np.ndarray, spacing_mm: np.ndarray, smooth_var_mm2: float):
    """Crop a boolean [k,j,i] mask to its bounding box plus a margin, zero-pad and Gaussian-smooth it.

    Returns (field float32, offset_kji) where field[0,0,0] is voxel ``offset_kji`` of the input; the
    margin is wide enough (4 sigma + 2 voxels) that the 0.5 level set is closed inside the crop.
    """
    from scipy import ndimage

    box = _bbox(mask)
    if box is None:
        return None, None
    spacing_kji = np.asarray(spacing_mm, dtype=float)[::-1]
    sigma_kji = (np.sqrt(smooth_var_mm2) / spacing_kji) if smooth_var_mm2 > 0 else np.zeros(3)
    margin = np.ceil(4.0 * sigma_kji).astype(int) + 2
    lo = np.array([b[0] for b in box]) - margin
    hi = np.array([b[1] for b in box]) + margin
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, mask.shape)
    field = np.zeros(tuple(hi - lo), dtype=np.float32)
    dst = tuple(slice(int(a - l), int(b - l)) for a, b, l in zip(src_lo, src_hi, lo))
    field[dst] = mask[tuple(slice(int(a), int(b)) for a, b in zip(src_lo, src_hi))]
    if smooth_var_mm2 > 0:
        field = ndimage.gaussian_filter(field, sigma=sigma_kji, mode="constant", cval=0.0, truncate=4.0)
    return field, lo


def resample_field(field: np.ndarray, offset_kji, spacing_mm: np.ndarray, step_mm: float
                   ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample a float [k,j,i] crop (voxel ``offset_kji`` of the volume, voxel ``spacing_mm`` in i, j, k
    order) on a grid of ``step_mm`` anchored at the volume's voxel 0 (so that a slightly different crop
    gives the same grid points), trilinear, separable.

    Returns (field, start_kji, index_scale): new sample n (k, j, i) lies at volume index
    start_kji + n × scale (``index_scale`` in i, j, k order, for :func:`mesh_from_field`).
    """
    scale_kji = float(step_mm) / np.asarray(spacing_mm, dtype=float)[::-1]
    off = np.asarray(offset_kji, dtype=float)
    m0 = np.ceil(off / scale_kji - 1e-9)
    m1 = np.floor((off + np.array(field.shape) - 1) / scale_kji + 1e-9)
    out = np.asarray(field, dtype=np.float32)
    for ax in range(3):       # one linear pass per axis
        x = np.arange(m0[ax], m1[ax] + 1) * scale_kji[ax] - off[ax]
        i0 = np.clip(np.floor(x).astype(np.int64), 0, out.shape[ax] - 2)
        w = (x - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[ax] = -1
        w = w.reshape(shape)
        out = np.take(out, i0, axis=ax) * (1.0 - w) + np.take(out, i0 + 1, axis=ax) * w
    return np.ascontiguousarray(out, dtype=np.float32), m0 * scale_kji, scale_kji[::-1].copy()


def mesh_from_field_target_points(field: np.ndarray, offset_kji: np.ndarray, volume_geometry, target_points: int,
                                  level: float = 0.5, first_step_mm: float = 1.0):
    """Mesh of the ``level`` set with about ``target_points`` vertices: contour on a coarser isotropic grid.

    Deterministic and uniform (every vertex stands for a similar area, so per-vertex statistics are not
    biased toward curved parts): the field is resampled to an isotropic step, contoured, and the step is
    corrected once from the vertex count (marching-cubes vertex counts scale as area / step²). When the
    target exceeds what the native grid gives, the native grid is used.
    """
    spacing = np.asarray(volume_geometry.spacing_mm, dtype=float)
    coarse, start, scale = resample_field(field, offset_kji, spacing, first_step_mm)
    n1 = mesh_from_field(coarse, start, volume_geometry, level, index_scale=scale).GetNumberOfPoints()
    if n1 == 0:
        return mesh_from_field(field, offset_kji, volume_geometry, level)
    # the step is rounded to 0.01 mm so that tiny changes of the count (another crop) keep the same grid
    step = round(first_step_mm * np.sqrt(n1 / float(target_points)), 2)
    if step <= spacing.min():
        return mesh_from_field(field, offset_kji, volume_geometry, level)
    coarse, start, scale = resample_field(field, offset_kji, spacing, step)
    return mesh_from_field(coarse, start, volume_geometry, level, index_scale=scale)


def marching_cubes(field_kji: np.ndarray, level: float, origin_xyz=(0.0, 0.0, 0.0), spacing_xyz=(1.0, 1.0, 1.0)
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """The one marching-cubes wrapper (vtkFlyingEdges3D) for every field we contour.

    ``field_kji`` is indexed [k, j, i] (i fastest: x, y, z = i, j, k); returns (points (N, 3) as
    origin + (i, j, k) * spacing, triangles (M, 3)). Used for index-space label fields here and for the
    NSM's [-1, 1]^3 SDF grid (``shape.meshing.contour``).
    """
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    nk, nj, ni = field_kji.shape
    img = vtk.vtkImageData()
    img.SetDimensions(ni, nj, nk)
    img.SetOrigin(*[float(v) for v in origin_xyz])
    img.SetSpacing(*[float(v) for v in spacing_xyz])
    scal = numpy_to_vtk(np.ascontiguousarray(field_kji).ravel(), deep=True)
    scal.SetName("f")
    img.GetPointData().SetScalars(scal)
    fe = vtk.vtkFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, level)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    fe.InterpolateAttributesOff()
    fe.Update()
    return polydata_arrays(fe.GetOutput())


def mesh_from_field(field: np.ndarray, offset_kji: np.ndarray, volume_geometry, level: float = 0.5,
                    index_scale: Optional[np.ndarray] = None):
    """Contour a float [k,j,i] field at ``level``; points in LPS mm, outward (toward lower values) normals.

    ``index_scale`` (i, j, k): the field's index step in voxels of ``volume_geometry`` (a resampled field).
    """
    pts_ijk, tris = marching_cubes(field, level)
    if len(tris) == 0:
        return make_polydata(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    # drop unused points (flying edges does not emit any, but stay safe) - keep order deterministic
    if index_scale is not None:
        pts_ijk = pts_ijk * np.asarray(index_scale, dtype=float)
    ijk = pts_ijk + np.asarray(offset_kji, dtype=float)[::-1]
    pts = volume_geometry.ijk_to_lps(ijk)
    if signed_volume(pts, tris) < 0:
        tris = tris[:, [0, 2, 1]]
    return make_polydata(pts, tris, vertex_normals(pts, tris))


def field_normals(field: np.ndarray, offset_kji, volume_geometry, points: np.ndarray, level_step_vox: float = 0.5
                  ) -> np.ndarray:
    """Outward unit normals at LPS ``points`` from the gradient of a smoothed [k,j,i] crop field.

    Central differences of the trilinearly interpolated field (± ``level_step_vox`` voxels along each
    array axis), mapped to LPS by the inverse transpose of the voxel affine; outward = toward lower
    values. Unlike face-averaged normals they do not depend on the triangulation (which changes with
    the array's axis order), and they are the level set's own normals.
    """
    from scipy import ndimage

    m = volume_geometry.direction @ np.diag(volume_geometry.spacing_mm)
    ijk = volume_geometry.lps_to_ijk(points) - np.asarray(offset_kji, dtype=float)[::-1]
    kji = ijk[:, ::-1]
    g = np.zeros_like(kji)
    for ax in range(3):
        d = np.zeros(3)
        d[ax] = level_step_vox
        hi = ndimage.map_coordinates(field, (kji + d).T, order=1, mode="nearest", prefilter=False)
        lo = ndimage.map_coordinates(field, (kji - d).T, order=1, mode="nearest", prefilter=False)
        g[:, ax] = (hi - lo) / (2 * level_step_vox)
    g_ijk = g[:, ::-1]
    grad = g_ijk @ np.linalg.inv(m)          # d f / d LPS = (M^-T g)^T
    n = -grad
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm > 0, norm, 1.0)


def set_normals(poly, normals: np.ndarray) -> None:
    from vtk.util.numpy_support import numpy_to_vtk

    arr = numpy_to_vtk(np.ascontiguousarray(normals, dtype=np.float32), deep=True)
    arr.SetName("Normals")
    poly.GetPointData().SetNormals(arr)


def mesh_from_mask(mask: np.ndarray, volume_geometry, smooth_var_mm2: float):
    """Closed triangle mesh of a boolean [k,j,i] mask, in LPS mm with outward normals.

    ``volume_geometry`` is a :class:`~KneePipelineLib.io.Volume` whose spacing/origin/direction place
    the mask (its array is not used). Gaussian variance in mm²; contour at 0.5.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume_geometry.array.shape:
        raise InvalidInputError("Mask shape %s does not match the volume %s." % (mask.shape, volume_geometry.array.shape))
    field, offset = smoothed_crop(mask, volume_geometry.spacing_mm, smooth_var_mm2)
    if field is None:
        raise InvalidInputError("Cannot mesh an empty mask.")
    return mesh_from_field(field, offset, volume_geometry)


# -- writing ------------------------------------------------------------------------------------
def write_mesh(poly, path, fmt: str = "vtp") -> Path:
    """Write binary VTP (default) or legacy binary VTK through the one writer layer (free space checked
    before VTK starts, temp file in the folder, verified, then renamed)."""
    from ..io.writers import write_mesh as _write

    return Path(_write(poly, path, fmt))


def read_mesh(path):
    """Read a VTP or legacy VTK polydata file."""
    import vtk

    path = Path(path)
    reader = vtk.vtkXMLPolyDataReader() if path.suffix.lower() == ".vtp" else vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()
