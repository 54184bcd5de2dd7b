"""Anatomical knee frame, bone cropping and cartilage sub-regions, all in physical LPS mm.

Frame (from the bones, never from array axes)
---------------------------------------------
* medial axis ``e_med``: from the centroid of the lateral tibial cartilage (+ lateral meniscus) to the
  centroid of the medial tibial cartilage (+ medial meniscus);
* superior axis ``e_sup``: the femoral shaft axis - a line fitted through the centroids of 3 mm slabs of
  the femur more than 0.55 × its medio-lateral width above its distal end, leaving out slabs that touch
  the edge of the field of view (needs ≥ 15 mm of shaft and 5 whole slabs); otherwise the tibia → femur centroid direction. ``e_med`` is then made
  orthogonal to it. The cut end of the shaft is found wherever it lies, not only on the array's edge
  (a label map moved or cropped by one voxel ends one slice inside): slabs where > 3 % of the voxels have
  no femur above them, every slab above, and one below, are left out (a one-voxel move tilted the axis
  by 6.8° before);
* anterior axis ``e_ant`` = ∓ e_sup × e_med (right / left knee; laterality from
  :func:`KneePipelineLib.labels.detect_laterality`), which makes the frame a proper rotation of the
  patient axes for both knees. The patella, when present, must lie anterior to the femur (else a
  warning).

Bone crop: femur and tibia are kept up to 0.8 × their medio-lateral width from the joint end, measured
along ``e_sup`` (reference: the same factor, in image axes).

Femoral cartilage sub-regions (codes of :mod:`KneePipelineLib.labels`)
----------------------------------------------------------------------
Voxel centres of the femoral cartilage are expressed as (ml, ap, si) in the frame.

1. Femoral frame: the knee frame's medio-lateral axis comes from the tibial plates; the femur may be
   rotated on the tibia (and the reference's frame is its template knee's scanner frame). The frame is
   turned about ``e_sup`` until the posterior condylar line (through the most posterior 0.5 % of the
   cartilage of each condyle) is medio-lateral - the femur's own rotational reference. Skipped (with a
   warning) if it would turn more than 25°.
2. Notch on the axial projection: per 1 mm medio-lateral column the most posterior cartilage; in the
   central 30-70 % of the medio-lateral extent, the column whose most posterior cartilage is the most
   anterior is the intercondylar notch (only the trochlea carries cartilage there). ``ap_notch`` = that
   edge (mean of 3 neighbouring columns: an average of three voxel extremes rather than one); ``ml_notch``
   = centre of the columns within 1 mm of it (the notch roof), ends interpolated.
   Fallback: halfway between the tibial plates, and 60 % of the AP extent.
3. ``ap_post`` = 0.1st percentile of AP (posterior end of the condyles); D = ap_notch − ap_post.
4. trochlea (11): ap > ap_notch; weight-bearing (12 medial / 13 lateral): ap_notch − 0.6·D ≤ ap ≤
   ap_notch; posterior (14 / 15): behind that. Medial = ml > ml_notch.
5. Posterior condyle curling over the weight-bearing band: per 1 mm AP slab (anchored at the frame's
   AP 0), weight-bearing cartilage above 0.67·(mean SI of the slab's femoral cartilage) + 0.33·(top SI of
   all femoral cartilage, 99.9th percentile) moves to posterior 14 / 15.

The landmarks are kept in :class:`FemurRegionInfo`, and :func:`femoral_region_of_points` applies the
same rule to any point's continuous coordinates: the bone vertices get their femoral region from the
middle of their cartilage segment (:mod:`.analysis`), not from the voxel map, whose boundaries are voxel
staircases that change with the grid.

Precision (``bench/bench_region_stability.py``, 10 variants: the sample knee shifted by a voxel or
rotated 3-5°, nearest neighbour onto the same grid): the frame's axes do not turn under shifts (6.97°
before the cut-aware shaft axis) and turn <= 1.26° under rotations; the landmarks, measured in the
original frame moved with the anatomy, move <= 0.12 mm (ap_post 0.10, ap_notch 0.12 - 0.46 with one
column's extreme voxel -, weight-bearing/posterior boundary 0.06; ml_notch 0.40); <= 0.34 % of the
femoral cartilage voxels change region (1.21 % before; what remains are voxel staircases on the
boundaries, which the bone vertices do not see). Tested in ``Testing/test_region_stability.py``.

This is the reference's rule (notch from the axial projection, 60 % weight-bearing, the 0.67/0.33
superior line) in the subject's own physical frame: no similarity registration to a template knee and
no flipping of left knees, so any acquisition orientation (sagittal, axial, oblique direction
matrices) and either side give the same regions. On the sample knee and on pymskt's template knee it
labels 98 % of the femoral cartilage voxels as pymskt 0.1.22 does (before step 1 and the column notch
rule: 74 % / 73 %; the tibial-plate frame alone: 93 %), measured before the precision changes above,
which relabel 0.46 % of the sample knee's voxels (so >= 97.5 % agreement; pymskt's template knee was not
available to re-measure).

Tibial cartilage keeps the segmentation's medial (3) / lateral (4) split: the plates are anatomically
separate (split by the intercondylar eminence, which carries no cartilage), every model we use labels
them separately, and the reference's re-split at the tibia's centre can only move voxels that a
segmentation deliberately labelled otherwise. Patellar cartilage is one region (1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

from .. import labels as L
from ..errors import MissingStructuresError


@dataclass
class KneeFrame:
    origin: np.ndarray          # LPS mm (femoral cartilage / femur centroid)
    e_med: np.ndarray           # unit, toward medial
    e_ant: np.ndarray           # unit, toward anterior
    e_sup: np.ndarray           # unit, toward superior (femoral shaft)
    shaft_axis_found: bool
    warnings: List[str] = field(default_factory=list)

    def coords(self, pts: np.ndarray) -> np.ndarray:
        """(n,3) LPS → (n,3) (ml toward medial, ap toward anterior, si toward superior)."""
        q = np.asarray(pts, dtype=float) - self.origin
        return np.stack([q @ self.e_med, q @ self.e_ant, q @ self.e_sup], axis=1)


def mask_points(volume, mask: np.ndarray) -> np.ndarray:
    """LPS centres of all voxels of a [k,j,i] mask (no subsampling: a subsample in array order would
    depend on the array's axis order and break the orientation independence)."""
    k, j, i = np.nonzero(mask)
    return volume.ijk_to_lps(np.stack([i, j, k], axis=1).astype(float))


def mask_centroid(volume, mask: np.ndarray) -> np.ndarray:
    """LPS centroid of a [k,j,i] mask (the affine map commutes with the mean)."""
    k, j, i = np.nonzero(mask)
    return volume.ijk_to_lps(np.array([[i.mean(), j.mean(), k.mean()]]))[0]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(np.linalg.norm(v), 1e-12)


def knee_frame(labels, side: str) -> KneeFrame:
    """Anatomical frame of a canonical label map (see module docstring)."""
    arr = labels.array
    warnings: List[str] = []
    med = np.isin(arr, (L.MEDIAL_TIBIAL_CARTILAGE, L.MEDIAL_MENISCUS))
    lat = np.isin(arr, (L.LATERAL_TIBIAL_CARTILAGE, L.LATERAL_MENISCUS))
    if not med.any() or not lat.any():
        raise MissingStructuresError("The label map needs medial and lateral tibial cartilage (or menisci) "
                                     "to set up the knee's medio-lateral axis.")
    e_med0 = _unit(mask_centroid(labels, med) - mask_centroid(labels, lat))
    fem = arr == L.FEMUR
    tib = arr == L.TIBIA
    if not fem.any():
        raise MissingStructuresError("The label map has no femur, which the knee frame needs.")
    fk, fj, fi = np.nonzero(fem)
    fem_pts = labels.ijk_to_lps(np.stack([fi, fj, fk], axis=1).astype(float))
    sh = arr.shape
    fem_at_fov_edge = ((fk == 0) | (fk == sh[0] - 1) | (fj == 0) | (fj == sh[1] - 1) | (fi == 0) | (fi == sh[2] - 1))
    c_fem = fem_pts.mean(0)
    if tib.any():
        c_low = mask_centroid(labels, tib)
    else:
        c_low = mask_centroid(labels, med | lat)
    sup0 = c_fem - c_low
    sup0 = _unit(sup0 - (sup0 @ e_med0) * e_med0)
    # femoral shaft axis
    shaft = False
    e_sup = sup0
    s = fem_pts @ sup0
    ml = fem_pts @ e_med0
    width = float(np.percentile(ml, 99.5) - np.percentile(ml, 0.5))
    s0 = float(np.percentile(s, 0.1))
    sel = s > s0 + 0.55 * width
    if sel.any() and (s[sel].max() - s[sel].min()) >= 15.0:
        ss = s[sel]
        ps = fem_pts[sel]
        cut = fem_at_fov_edge[sel]
        slab = np.floor((ss - ss.min()) / 3.0).astype(np.int64)
        n_sl = int(slab.max()) + 1
        cnt = np.bincount(slab, minlength=n_sl)
        n_cut = np.bincount(slab, weights=cut, minlength=n_sl)
        n_cap = np.bincount(slab, weights=_top_cap(fem, labels.direction, sup0)[fk, fj, fi][sel], minlength=n_sl)
        sums = np.stack([np.bincount(slab, weights=ps[:, a], minlength=n_sl) for a in range(3)], axis=1)
        # a slab cut by the field of view has a biased centroid (tilts the axis by up to 10°). The cut is
        # not always on the array's edge (a label map cropped or moved by a voxel ends one slice inside):
        # slabs where > 3 % of the voxels have no femur above them (the shaft's own taper: <= 2 %), all
        # slabs above the lowest of them and one slab below it are left out too
        trunc = np.flatnonzero((n_cut > 0) | (n_cap > 0.03 * np.maximum(cnt, 1)))
        ok = cnt >= 50
        if len(trunc):
            ok[max(int(trunc.min()) - 1, 0):] = False
        cents = sums[ok] / cnt[ok, None]
        if len(cents) >= 5:
            u, sv, vt = np.linalg.svd(cents - cents.mean(0))
            axis = vt[0] * np.sign(vt[0] @ sup0)
            angle = np.degrees(np.arccos(np.clip(axis @ sup0, -1, 1)))
            if angle < 35:
                e_sup, shaft = _unit(axis), True
            else:
                warnings.append("Femoral shaft axis deviates %.0f° from the tibia→femur direction; using the "
                                "latter." % angle)
    if not shaft and not warnings:
        warnings.append("Too little femoral shaft in the field of view: superior axis from the tibia→femur "
                        "centroids.")
    e_med = _unit(e_med0 - (e_med0 @ e_sup) * e_sup)
    e_ant = -np.cross(e_sup, e_med) if side == "right" else np.cross(e_sup, e_med)
    pat = arr == L.PATELLA
    if pat.any():
        if (mask_centroid(labels, pat) - c_fem) @ e_ant <= 0:
            warnings.append("The patella is not anterior to the femur in the anatomical frame: check laterality "
                            "and labels.")
    return KneeFrame(c_fem, e_med, e_ant, _unit(e_sup), shaft, warnings)


def _top_cap(mask: np.ndarray, direction: np.ndarray, sup: np.ndarray) -> np.ndarray:
    """Voxels of a [k,j,i] mask with no mask voxel next to them along the array axis nearest to ``sup``,
    on its superior side (the array's edge counts as outside): the top caps of the mask."""
    d = np.asarray(sup, float) @ np.asarray(direction, float)        # sup along i, j, k
    a = int(np.argmax(np.abs(d)))
    ax = 2 - a                                                       # numpy axis of array axis a
    step = 1 if d[a] > 0 else -1
    above = np.zeros_like(mask)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    src[ax], dst[ax] = (slice(1, None), slice(0, -1)) if step > 0 else (slice(0, -1), slice(1, None))
    above[tuple(dst)] = mask[tuple(src)]
    return mask & ~above


def axis_field(volume, box: Tuple[slice, slice, slice], axis: np.ndarray) -> np.ndarray:
    """Projection of voxel centres on ``axis`` (LPS, mm) over an array box [k, j, i], by broadcasting."""
    m = volume.direction @ np.diag(volume.spacing_mm)
    w = axis @ m                                     # d(projection)/d(i, j, k)
    k = np.arange(box[0].start, box[0].stop)[:, None, None]
    j = np.arange(box[1].start, box[1].stop)[None, :, None]
    i = np.arange(box[2].start, box[2].stop)[None, None, :]
    return (axis @ volume.origin_mm) + w[0] * i + w[1] * j + w[2] * k


def crop_bone(volume, mask: np.ndarray, frame: KneeFrame, joint_end: str, factor: float = 0.8) -> np.ndarray:
    """Keep a long bone up to ``factor`` × its medio-lateral width from the joint end, along ``e_sup``."""
    pts = mask_points(volume, mask)
    ml = pts @ frame.e_med
    width = float(np.percentile(ml, 99.5) - np.percentile(ml, 0.5))
    si = pts @ frame.e_sup
    from .mesh import _bbox

    b = _bbox(mask)
    box = tuple(slice(lo, hi) for lo, hi in b)
    proj = axis_field(volume, box, frame.e_sup)
    out = np.zeros_like(mask)
    sub = mask[box]
    if joint_end == "low":            # femur: joint at its distal (low SI) end
        keep = proj <= float(np.percentile(si, 0.05)) + factor * width
    else:                             # tibia: joint at its proximal end
        keep = proj >= float(np.percentile(si, 99.95)) - factor * width
    out[box] = sub & keep
    return out


@dataclass
class FemurRegionInfo:
    ml_notch: float                 # medio-lateral split (frame mm)
    ap_notch: float                 # anterior / weight-bearing boundary (frame mm)
    ap_post: float                  # posterior end of the condyles
    ap_wb_post: float               # weight-bearing / posterior boundary
    notch_found: bool
    n_moved_to_posterior: int       # weight-bearing voxels above the superior line
    condylar_rotation_deg: float = 0.0   # femoral frame's rotation about e_sup from the knee frame
    top_si: float = float("nan")        # superior line's top (99.9th percentile of SI)
    superior_cut_si: Optional[np.ndarray] = None  # superior line per 1 mm AP slab [floor(ap) - slab_ap0]
    slab_ap0: int = 0


def _posterior_condylar_rotation(ml: np.ndarray, ap: np.ndarray, ml_split: float, iterations: int = 2,
                                 max_deg: float = 25.0) -> Tuple[Optional[float], np.ndarray, np.ndarray]:
    """Rotation (rad, about the superior axis) that makes the posterior condylar line medio-lateral.

    The most posterior 0.5 % of the cartilage of each condyle (more than 5 mm from ``ml_split``) gives
    one point per condyle; the angle of the line through them is removed, twice (the extreme points
    move a little with the rotation). Returns (angle, ml', ap'); angle None (and the input coordinates)
    when a side is empty or the angle exceeds ``max_deg``.
    """
    total = 0.0
    m, a = ml, ap
    for _ in range(iterations):
        pts = []
        for side in (m > ml_split + 5.0, m < ml_split - 5.0):
            if side.sum() < 50:
                return None, ml, ap
            q = np.percentile(a[side], 0.5)
            sel = side & (a <= q)
            pts.append((m[sel].mean(), a[sel].mean()))
        (m1, a1), (m2, a2) = pts
        th = float(np.arctan2(a1 - a2, m1 - m2))
        total += th
        if abs(np.degrees(total)) > max_deg:
            return None, ml, ap
        m, a = np.cos(total) * ml + np.sin(total) * ap, -np.sin(total) * ml + np.cos(total) * ap
    return total, m, a


def _notch(ml: np.ndarray, ap: np.ndarray, bin_mm: float = 1.0):
    """Intercondylar notch on the axial projection: (ml_notch, ap_notch) or None.

    Per 1 mm medio-lateral column, the most posterior cartilage (min AP); in the central 30-70 % of
    the medio-lateral extent the column whose most posterior cartilage is the most *anterior* is the
    notch (there only the trochlea carries cartilage; the condyles reach far back on both sides).
    ``ap_notch`` = that column's posterior cartilage edge (mean of 3 neighbouring columns); ``ml_notch`` =
    the centre of the contiguous run of columns within 1 mm of it (the notch roof), its ends interpolated.
    """
    b = np.floor(ml / bin_mm).astype(np.int64)
    b0 = int(b.min())
    b -= b0
    nb = int(b.max()) + 1
    if nb < 10:
        return None
    mn = np.full(nb, np.inf)
    np.minimum.at(mn, b, ap)
    cen = (np.arange(nb) + b0 + 0.5) * bin_mm
    lo, hi = np.percentile(ml, [0.5, 99.5])
    win = (cen > lo + 0.3 * (hi - lo)) & (cen < lo + 0.7 * (hi - lo)) & np.isfinite(mn)
    if win.sum() < 3:
        return None
    pad = np.concatenate(([mn[0]], mn, [mn[-1]]))
    # mean (not median) of 3 columns: the edge is then an average of three voxel extremes, not one, and
    # moves 0.12 instead of 0.38 mm when the knee is re-voxelised (bench/bench_region_stability.py)
    sm = np.mean(np.stack([pad[:-2], pad[1:-1], pad[2:]]), axis=0)
    sm = np.where(win & np.isfinite(sm), sm, -np.inf)
    a = int(np.argmax(sm))
    top = sm[a]
    near = sm >= top - 1.0
    l, r = a, a
    while l - 1 >= 0 and near[l - 1]:
        l -= 1
    while r + 1 < nb and near[r + 1]:
        r += 1

    def end(i_in: int, i_out: int) -> float:
        """Where the profile crosses top - 1 mm between a column inside the run and its outer neighbour
        (linear; the inner column's centre where the neighbour is missing): ``ml_notch`` is continuous."""
        if i_out < 0 or i_out >= nb or not np.isfinite(sm[i_out]):
            return float(cen[i_in])
        f = (sm[i_in] - (top - 1.0)) / max(float(sm[i_in] - sm[i_out]), 1e-9)
        return float(cen[i_in] + min(f, 1.0) * (cen[i_out] - cen[i_in]))
    return 0.5 * (end(l, l - 1) + end(r, r + 1)), float(top)


def femoral_subregions(labels, frame: KneeFrame, wb_fraction: float = 0.6, superior_ratio: float = 0.33,
                       ) -> Tuple[np.ndarray, Optional[FemurRegionInfo], List[str]]:
    """Regions label map: femoral cartilage → 11..15, every other voxel keeps its tissue code."""
    arr = labels.array
    out = arr.astype(np.uint8, copy=True)
    warnings: List[str] = []
    fc = arr == L.FEMORAL_CARTILAGE
    if not fc.any():
        return out, None, warnings
    k, j, i = np.nonzero(fc)
    pts = labels.ijk_to_lps(np.stack([i, j, k], axis=1))
    c = frame.coords(pts)
    ml, ap, si = c[:, 0], c[:, 1], c[:, 2]
    # 1. femoral frame: the knee frame rotated about e_sup onto the posterior condylar line
    found = _notch(ml, ap) if len(ml) > 100 else None
    rot = 0.0
    if found is not None:
        rot, ml, ap = _posterior_condylar_rotation(ml, ap, found[0])
        if rot is None:             # not found (an exactly symmetric knee gives a true 0.0)
            rot = 0.0
            warnings.append("Posterior condylar line not found (or rotated > 25° from the tibial plates): "
                            "femoral sub-regions use the knee frame's medio-lateral axis.")
    ap_post = float(np.percentile(ap, 0.1))
    ap_ant = float(np.percentile(ap, 99.9))
    # 2. notch on the axial projection, in the femoral frame
    found = _notch(ml, ap) if len(ml) > 100 else None
    if found is not None and ap_post < found[1] < ap_ant:
        ml_notch, ap_notch = found
    else:
        cm = frame.coords(mask_centroid(labels, arr == L.MEDIAL_TIBIAL_CARTILAGE)[None])[0]
        cl = frame.coords(mask_centroid(labels, arr == L.LATERAL_TIBIAL_CARTILAGE)[None])[0]
        mid = 0.5 * (cm + cl)
        ml_notch = float(np.cos(rot) * mid[0] + np.sin(rot) * mid[1])
        ap_notch = ap_post + 0.6 * (ap_ant - ap_post)
        found = None
        warnings.append("Femoral notch not found: medio-lateral split halfway between the tibial plates, "
                        "trochlea boundary at 60 % of the femoral cartilage's AP extent.")
    # 3-4. anterior / weight-bearing / posterior along AP
    ap_wb_post = ap_notch - wb_fraction * (ap_notch - ap_post)
    medial = ml > ml_notch
    ant = ap > ap_notch
    wb = ~ant & (ap >= ap_wb_post)
    # 5. superior line per 1 mm AP slab: cartilage above (1-r)·mean SI of the slab + r·top SI is posterior
    # slabs anchored at the frame's AP 0 (the femur's centroid), not at the most anterior voxel
    ab = np.floor(ap).astype(np.int64)
    slab_ap0 = int(ab.min())
    ab -= slab_ap0
    cnt = np.bincount(ab)
    mean_si = np.bincount(ab, weights=si) / np.maximum(cnt, 1)
    top = float(np.percentile(si, 99.9))
    cut = (1.0 - superior_ratio) * mean_si + superior_ratio * top
    upper = wb & (si > cut[ab])
    wb &= ~upper
    code = np.where(ant, 11, np.where(wb, np.where(medial, 12, 13), np.where(medial, 14, 15))).astype(np.uint8)
    out[k, j, i] = code
    return out, FemurRegionInfo(ml_notch, ap_notch, ap_post, ap_wb_post, found is not None,
                                int(upper.sum()), float(np.degrees(rot)), top, np.where(cnt > 0, cut, np.inf),
                                slab_ap0), warnings


def femoral_region_of_points(frame: KneeFrame, info: FemurRegionInfo, pts: np.ndarray) -> np.ndarray:
    """Femoral sub-region code (11-15) of any LPS points by the rule of :func:`femoral_subregions`, applied
    to their continuous coordinates (e.g. the middle of a bone vertex's cartilage segment): no voxel
    staircase on the boundaries. Points outside the superior line's slabs get no superior-line test."""
    c = frame.coords(np.atleast_2d(pts))
    rot = np.radians(info.condylar_rotation_deg)
    ml = np.cos(rot) * c[:, 0] + np.sin(rot) * c[:, 1]
    ap = -np.sin(rot) * c[:, 0] + np.cos(rot) * c[:, 1]
    medial = ml > info.ml_notch
    ant = ap > info.ap_notch
    wb = ~ant & (ap >= info.ap_wb_post)
    if info.superior_cut_si is not None and len(info.superior_cut_si):
        ab = np.floor(ap).astype(np.int64) - info.slab_ap0
        inside = (ab >= 0) & (ab < len(info.superior_cut_si))
        cut = np.where(inside, info.superior_cut_si[np.clip(ab, 0, len(info.superior_cut_si) - 1)], np.inf)
        wb &= ~(c[:, 2] > cut)
    return np.where(ant, 11, np.where(wb, np.where(medial, 12, 13), np.where(medial, 14, 15))).astype(np.uint8)
