"""Resample T2 maps onto another grid (e.g. the segmentation's)."""
from __future__ import annotations

import numpy as np

from ..io.volume import Volume
from .types import T2Maps


def _resample(vol: Volume, target: Volume, linear: bool, default: float = 0.0) -> np.ndarray:
    import SimpleITK as sitk

    img = vol.to_sitk()
    ref = target.to_sitk()
    out = sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear if linear else sitk.sitkNearestNeighbor,
                        default, img.GetPixelID())
    return sitk.GetArrayFromImage(out)


def resample_to(t2: T2Maps, target: Volume) -> T2Maps:
    """T2 maps on ``target``'s grid, in physical (LPS) space.

    T2 is interpolated linearly over valid voxels only (T2·valid and valid are both interpolated linearly and
    divided, so invalid neighbours never leak in); a target voxel is valid where the nearest source voxel is
    valid and the valid weight is ≥ 0.5. S0 and R² are interpolated linearly; points outside the source
    grid are invalid. The method is recorded in ``params["resampled"]``.
    """
    valid = np.asarray(t2.valid.array, dtype=bool)
    t2v = np.where(valid, t2.t2_ms.array, 0.0).astype(np.float32)
    num = _resample(t2.t2_ms.with_array(t2v), target, True)
    wgt = _resample(t2.t2_ms.with_array(valid.astype(np.float32)), target, True)
    near = _resample(t2.valid.with_array(valid.astype(np.uint8)), target, False).astype(bool)
    ok = near & (wgt >= 0.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        t2_new = np.where(ok, num / np.maximum(wgt, 1e-6), np.nan).astype(np.float32)

    def lin(v: Volume) -> np.ndarray:
        a = np.asarray(v.array, dtype=np.float32)
        finite = np.isfinite(a)
        n = _resample(v.with_array(np.where(finite, a, 0.0).astype(np.float32)), target, True)
        w = _resample(v.with_array(finite.astype(np.float32)), target, True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(w >= 0.5, n / np.maximum(w, 1e-6), np.nan).astype(np.float32)

    geom = lambda a: Volume(a, target.spacing_mm.copy(), target.origin_mm.copy(), target.direction.copy())  # noqa
    params = dict(t2.params)
    params["resampled"] = {
        "t2": "linear over valid voxels (normalised by the interpolated valid fraction)",
        "valid": "nearest neighbour, and valid fraction >= 0.5",
        "s0_r2": "linear",
        "from_grid": {"size_ijk": list(t2.t2_ms.shape_ijk), "spacing_mm": [float(s) for s in t2.t2_ms.spacing_mm]},
        "to_grid": {"size_ijk": list(target.shape_ijk), "spacing_mm": [float(s) for s in target.spacing_mm]},
    }
    return T2Maps(t2_ms=geom(t2_new), s0=geom(lin(t2.s0)), r2=geom(lin(t2.r2)), valid=geom(ok),
                  method=t2.method, params=params)
