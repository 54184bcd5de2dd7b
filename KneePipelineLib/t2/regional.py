"""Regional cartilage T2: per sub-region and deep/superficial halves, and T2 projected onto bone surfaces."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import labels as L
from ..errors import InvalidInputError
from ..io.volume import Volume
from .types import T2Maps

# Which cartilage codes (tissue or sub-region) lie on which bone.
PLATE_OF_BONE: Dict[int, Tuple[int, ...]] = {
    L.FEMUR: (L.FEMORAL_CARTILAGE, 11, 12, 13, 14, 15),
    L.TIBIA: (L.MEDIAL_TIBIAL_CARTILAGE, L.LATERAL_TIBIAL_CARTILAGE),
    L.PATELLA: (L.PATELLAR_CARTILAGE,),
}
CARTILAGE_CODES: Tuple[int, ...] = tuple(sorted({c for codes in PLATE_OF_BONE.values() for c in codes}))


def _base_code(code: int) -> Tuple[int, str]:
    if code >= L.SUPERFICIAL_OFFSET and (code - L.SUPERFICIAL_OFFSET) in CARTILAGE_CODES:
        return code - L.SUPERFICIAL_OFFSET, "superficial"
    if code >= L.DEEP_OFFSET and (code - L.DEEP_OFFSET) in CARTILAGE_CODES:
        return code - L.DEEP_OFFSET, "deep"
    return code, "all"


def _name(code: int) -> str:
    if code in L.REGION_BY_CODE and code not in (L.FEMORAL_CARTILAGE,):
        return L.REGION_BY_CODE[code].name
    return L.TISSUES.get(code, "label_%d" % code)


def _bbox(mask: np.ndarray, margin: int) -> Tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(a.min()) - margin, 0), min(int(a.max()) + margin + 1, n))
                 for a, n in zip(idx, mask.shape))


def cartilage_layers(regions: Volume) -> Tuple[np.ndarray, Dict[str, str]]:
    """Layer map: 1 = deep, 2 = superficial, 0 = not cartilage / undetermined.

    Per plate (femoral, tibial, patellar cartilage with its bone 7/8/9), in physical mm:
    d_bone = distance to the nearest bone voxel, d_articular = distance to the nearest voxel that is neither
    this plate's cartilage nor its bone; relative depth d_bone / (d_bone + d_articular) < 0.5 is deep.
    A voxel's distance is measured centre to centre (scipy's exact EDT with ``sampling`` = spacing).
    """
    from scipy import ndimage

    arr = np.asarray(regions.array)
    base = np.where(arr >= L.SUPERFICIAL_OFFSET, arr - L.SUPERFICIAL_OFFSET,
                    np.where(arr >= L.DEEP_OFFSET, arr - L.DEEP_OFFSET, arr))
    spacing = tuple(float(s) for s in regions.spacing_mm[::-1])   # array axes are (k, j, i)
    layer = np.zeros(arr.shape, dtype=np.uint8)
    notes: Dict[str, str] = {}
    for bone, codes in PLATE_OF_BONE.items():
        cart = np.isin(base, codes)
        if not cart.any():
            continue
        bone_mask = base == bone
        if not bone_mask.any():
            notes[L.TISSUES[bone]] = "no %s voxels in the label map: deep/superficial not computed" % L.TISSUES[bone]
            continue
        margin = 2 + int(np.ceil(10.0 / min(spacing)))
        sl = _bbox(cart, margin)
        c = cart[sl]
        b = bone_mask[sl]
        if not b.any():
            notes[L.TISSUES[bone]] = "the %s does not touch its cartilage: deep/superficial not computed" % L.TISSUES[bone]
            continue
        d_bone = ndimage.distance_transform_edt(~b, sampling=spacing)
        d_art = ndimage.distance_transform_edt(c | b, sampling=spacing)
        rel = d_bone / np.maximum(d_bone + d_art, 1e-9)
        sub = layer[sl]
        sub[c & (rel < 0.5)] = 1
        sub[c & (rel >= 0.5)] = 2
    return layer, notes


def _stats(values: np.ndarray) -> Dict[str, Any]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"t2_mean_ms": None, "t2_std_ms": None, "t2_median_ms": None, "n_voxels": 0}
    return {"t2_mean_ms": float(v.mean()), "t2_std_ms": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "t2_median_ms": float(np.median(v)), "n_voxels": int(v.size)}


# The reference's plausible-T2 window for regional statistics (OpenMSK steps/t2_mapping.py T2_MIN_VALID /
# T2_MAX_VALID): values <= 0 ms or >= 80 ms (failed fits, fluid, partial volume) are left out.
T2_STATS_RANGE_MS: Tuple[float, float] = (0.0, 80.0)


def stats_mask(t2_ms: np.ndarray, valid: Optional[np.ndarray],
               t2_range_ms: Optional[Sequence[float]] = T2_STATS_RANGE_MS) -> np.ndarray:
    """Voxels whose T2 counts in regional statistics: a valid fit with lo < T2 < hi (both ends excluded, as
    the reference); ``t2_range_ms`` None keeps every valid, finite value."""
    m = np.isfinite(t2_ms)
    if valid is not None:
        m &= np.asarray(valid, dtype=bool)
    if t2_range_ms is not None:
        lo, hi = float(t2_range_ms[0]), float(t2_range_ms[1])
        with np.errstate(invalid="ignore"):
            m &= (t2_ms > lo) & (t2_ms < hi)
    return m


def regional_t2(t2: T2Maps, regions: Volume, bone_meshes: Optional[Dict[str, Any]] = None,
                max_depth_mm: float = 8.0, t2_range_ms: Optional[Sequence[float]] = T2_STATS_RANGE_MS
                ) -> Tuple[List[Dict[str, Any]], Dict[str, np.ndarray]]:
    """Per-region T2 rows and per-bone ``t2_ms`` point arrays.

    Only voxels with a valid fit and ``t2_range_ms[0] < T2 < t2_range_ms[1]`` count (default 0-80 ms, both
    ends excluded, as the reference; None: every valid value), in the rows and on the surfaces alike.

    ``regions`` holds canonical codes: femoral sub-regions 11–15 (or tissue 2), tibial 3/4, patellar 1, and
    bones 7/8/9 for the deep/superficial split (codes +100/+200 already present are used as they are).
    When the T2 grid differs from ``regions`` the maps are resampled first (:func:`resample_to`).
    Rows: ``{region, code, layer ("all"|"deep"|"superficial"), t2_mean_ms, t2_std_ms, t2_median_ms,
    n_voxels}`` over voxels with a valid T2 (None where a region has none; strict-JSON friendly), plus
    one ``femoral_cartilage`` (code 2) row per layer for the whole femoral plate when it is sub-divided.
    Point arrays: for each bone mesh named femur / tibia / patella, the mean valid T2 of that bone's
    cartilage along the outward normal ray (0–``max_depth_mm``) of each point, NaN where the ray meets none.
    """
    from .resample import resample_to

    if not t2.t2_ms.same_geometry(regions, tol=1e-3):
        t2 = resample_to(t2, regions)
    arr = np.asarray(regions.array)
    if arr.shape != t2.t2_ms.array.shape:
        raise InvalidInputError("The region map and the T2 map have different shapes.")
    t2_arr = np.asarray(t2.t2_ms.array, dtype=np.float64)
    vals = np.where(stats_mask(t2_arr, None if t2.valid is None else t2.valid.array, t2_range_ms), t2_arr, np.nan)
    has_layers = bool(np.any(arr >= L.DEEP_OFFSET))
    if has_layers:
        base = np.where(arr >= L.SUPERFICIAL_OFFSET, arr - L.SUPERFICIAL_OFFSET,
                        np.where(arr >= L.DEEP_OFFSET, arr - L.DEEP_OFFSET, arr))
        layer = np.where(arr >= L.SUPERFICIAL_OFFSET, 2, np.where(arr >= L.DEEP_OFFSET, 1, 0)).astype(np.uint8)
        layer[~np.isin(base, CARTILAGE_CODES)] = 0
    else:
        base = arr
        layer, _notes = cartilage_layers(regions)
    rows: List[Dict[str, Any]] = []
    present = [int(c) for c in np.unique(base) if int(c) in CARTILAGE_CODES]
    order = [r.code for r in L.REGIONS] + [L.FEMORAL_CARTILAGE]
    present.sort(key=lambda c: order.index(c) if c in order else 99)
    groups: List[Tuple[str, int, np.ndarray]] = [(_name(c), c, base == c) for c in present]
    femoral_subs = [c for c in present if 11 <= c <= 15]
    if femoral_subs:
        groups = [g for g in groups if g[1] != L.FEMORAL_CARTILAGE]
        groups.append(("femoral_cartilage", L.FEMORAL_CARTILAGE, np.isin(base, (L.FEMORAL_CARTILAGE, 11, 12, 13, 14, 15))))
    for name, code, m in groups:
        rows.append(dict(region=name, code=code, layer="all", **_stats(vals[m])))
        if layer[m].any():
            rows.append(dict(region=name, code=code, layer="deep", **_stats(vals[m & (layer == 1)])))
            rows.append(dict(region=name, code=code, layer="superficial", **_stats(vals[m & (layer == 2)])))
    point_arrays: Dict[str, np.ndarray] = {}
    if bone_meshes:
        for name, poly in bone_meshes.items():
            bone = L.TISSUE_CODES.get(name)
            if bone not in PLATE_OF_BONE or poly is None:
                continue
            point_arrays[name] = project_to_surface(poly, vals, np.isin(base, PLATE_OF_BONE[bone]), regions,
                                                    max_depth_mm)
    return rows, point_arrays


def project_to_surface(poly: Any, values: np.ndarray, cartilage: np.ndarray, grid: Volume,
                       max_depth_mm: float = 8.0, step_mm: Optional[float] = None) -> np.ndarray:
    """Mean of ``values`` over ``cartilage`` voxels along each point's outward normal (nearest-voxel
    sampling from 1 mm inside the surface to ``max_depth_mm`` outside; the first run of cartilage only)."""
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    n_pts = poly.GetNumberOfPoints()
    if n_pts == 0:
        return np.zeros(0, dtype=np.float32)
    nf = vtk.vtkPolyDataNormals()
    nf.SetInputData(poly)
    nf.ComputePointNormalsOn()
    nf.ComputeCellNormalsOff()
    nf.SplittingOff()
    nf.ConsistencyOn()
    nf.AutoOrientNormalsOn()
    nf.Update()
    out = nf.GetOutput()
    pts = vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    normals = vtk_to_numpy(out.GetPointData().GetNormals()).astype(np.float64)
    if step_mm is None:
        step_mm = 0.5 * float(min(grid.spacing_mm))
    t = np.arange(-1.0, max_depth_mm + 1e-9, step_mm)
    result = np.full(len(pts), np.nan, dtype=np.float32)
    kmax = np.array(values.shape)
    for c0 in range(0, len(pts), 20000):
        p = pts[c0:c0 + 20000]
        n = normals[c0:c0 + 20000]
        samples = p[:, None, :] + t[None, :, None] * n[:, None, :]          # (P, T, 3) LPS
        ijk = np.rint(grid.lps_to_ijk(samples.reshape(-1, 3))).astype(np.int64)
        kji = ijk[:, ::-1]
        inside_grid = np.all((kji >= 0) & (kji < kmax), axis=1)
        kji = np.where(inside_grid[:, None], kji, 0)
        flat = np.ravel_multi_index(kji.T, values.shape)
        inc = (cartilage.ravel()[flat] & inside_grid).reshape(len(p), len(t))
        entered = np.cumsum(inc, axis=1) > 0
        left = entered & ~inc
        use = inc & ~(np.cumsum(left, axis=1) > 0)
        v = values.ravel()[flat].reshape(len(p), len(t))
        good = use & np.isfinite(v)
        cnt = good.sum(1)
        s = np.where(good, v, 0.0).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            result[c0:c0 + 20000] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return result
