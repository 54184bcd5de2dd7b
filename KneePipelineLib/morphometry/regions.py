"""Anatomical knee frame, bone cropping and cartilage sub-regions, all in physical LPS mm.

Frame (from the bones, never from array axes)
---------------------------------------------
* medial axis ``e_med``: from the centroid of the lateral tibial cartilage (+ lateral meniscus) to the
  centroid of the medial tibial cartilage (+ medial meniscus);
* superior axis ``e_sup``: the femoral shaft axis - a line fitted through the centroids of 3 mm slabs of
  the femur more than 0.55 × its medio-lateral width above its distal end (needs ≥ 15 mm of shaft in
  the field of view); otherwise the tibia → femur centroid direction. ``e_med`` is then made
  orthogonal to it;
* anterior axis ``e_ant`` = ∓ e_sup × e_med (right / left knee; laterality from
  :func:`KneePipelineLib.labels.detect_laterality`), which makes the frame a proper rotation of the
  patient axes for both knees. The patella, when present, must lie anterior to the femur (else a
  warning).

Bone crop: femur and tibia are kept up to 0.8 × their medio-lateral width from the joint end, measured
along ``e_sup`` (reference: the same factor, in image axes).

Femoral cartilage sub-regions (codes of :mod:`KneePipelineLib.labels`)
----------------------------------------------------------------------
Voxel centres of the femoral cartilage are expressed as (ml, ap, si) in the frame.

1. Notch centre ``ml_notch``: minimum of the medio-lateral histogram (1 mm bins, 3-bin smoothing) of
   the condylar cartilage (the posterior 40 % of the cartilage's AP extent), searched in the central
   30-70 % of its range; fallback: halfway between the tibial plates.
2. Trochlear notch ``ap_notch``: in the 6 mm wide band around ``ml_notch`` the trochlear cartilage is
   met from the front; walking back, the first AP gap > 3 mm is the notch, and ``ap_notch`` is the AP
   of the last cartilage before it.
3. ``ap_post`` = 0.5th percentile of AP (posterior end of the condyles); D = ap_notch − ap_post.
4. trochlea (11): ap > ap_notch; weight-bearing (12 medial / 13 lateral): ap_notch − 0.6·D ≤ ap ≤
   ap_notch; posterior (14 / 15): behind that. Medial = ml > ml_notch.
5. Posterior condyle curling over the weight-bearing band: in each 1 mm × 1 mm (ml, ap) column of the
   weight-bearing band, the lowest contiguous run of cartilage (the distal, load-bearing surface) stays
   weight-bearing; cartilage above the first SI gap larger than 2 voxel diagonals belongs to the
   posterior surface and moves to 14 / 15.

Differences from the reference: no similarity registration to a template knee and no flipping of
left knees - the frame comes from the subject's own bones, so any acquisition orientation (sagittal,
axial, oblique direction matrices) and either side give the same regions; the notch is found on the
cartilage in physical mm rather than on an axial image projection; the 0.67·mean + 0.33·top SI
threshold of the reference (which also moves the upper part of a single thick layer) is replaced by the
gap rule of step 5, which only moves a separate, higher layer.

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


def mask_points(volume, mask: np.ndarray, max_points: Optional[int] = None) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    if max_points and len(i) > max_points:
        step = int(np.ceil(len(i) / max_points))
        k, j, i = k[::step], j[::step], i[::step]
    return volume.ijk_to_lps(np.stack([i, j, k], axis=1))


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
    e_med0 = _unit(mask_points(labels, med, 50000).mean(0) - mask_points(labels, lat, 50000).mean(0))
    fem = arr == L.FEMUR
    tib = arr == L.TIBIA
    if not fem.any():
        raise MissingStructuresError("The label map has no femur, which the knee frame needs.")
    fem_pts = mask_points(labels, fem, 200000)
    c_fem = fem_pts.mean(0)
    if tib.any():
        c_low = mask_points(labels, tib, 100000).mean(0)
    else:
        c_low = mask_points(labels, med | lat, 50000).mean(0)
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
        edges = np.arange(ss.min(), ss.max(), 3.0)
        cents = []
        for a in edges:
            m = (ss >= a) & (ss < a + 3.0)
            if m.sum() >= 50:
                cents.append(fem_pts[sel][m].mean(0))
        if len(cents) >= 5:
            cents = np.array(cents)
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
        if (mask_points(labels, pat, 20000).mean(0) - c_fem) @ e_ant <= 0:
            warnings.append("The patella is not anterior to the femur in the anatomical frame: check laterality "
                            "and labels.")
    return KneeFrame(c_fem, e_med, e_ant, _unit(e_sup), shaft, warnings)


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
    pts = mask_points(volume, mask, 200000)
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
    ml_notch: float
    ap_notch: float
    ap_post: float
    notch_from_histogram: bool
    n_moved_to_posterior: int


def femoral_subregions(labels, frame: KneeFrame) -> Tuple[np.ndarray, Optional[FemurRegionInfo], List[str]]:
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
    ap_post = float(np.percentile(ap, 0.5))
    ap_ant = float(np.percentile(ap, 99.5))
    # 1. notch centre on the condyles
    cond = ap < ap_post + 0.4 * (ap_ant - ap_post)
    ml_notch, from_hist = None, False
    if cond.sum() > 100:
        lo, hi = np.percentile(ml[cond], [5, 95])
        bins = np.arange(lo, hi + 1.0, 1.0)
        if len(bins) > 10:
            h, _ = np.histogram(ml[cond], bins=bins)
            h = np.convolve(h, np.ones(3) / 3, mode="same")
            a, b = int(0.3 * len(h)), int(0.7 * len(h)) + 1
            m = a + int(np.argmin(h[a:b]))
            ml_notch, from_hist = float(0.5 * (bins[m] + bins[m + 1])), True
    if ml_notch is None:
        cm = frame.coords(mask_points(labels, arr == L.MEDIAL_TIBIAL_CARTILAGE, 20000)).mean(0)
        cl = frame.coords(mask_points(labels, arr == L.LATERAL_TIBIAL_CARTILAGE, 20000)).mean(0)
        ml_notch = float(0.5 * (cm[0] + cl[0]))
        warnings.append("Femoral notch centre taken halfway between the tibial plates.")
    # 2. trochlear notch
    band = np.abs(ml - ml_notch) < 3.0
    ap_notch = None
    if band.sum() > 10:
        b_ap = np.sort(ap[band])[::-1]
        gaps = np.flatnonzero(-np.diff(b_ap) > 3.0)
        ap_notch = float(b_ap[gaps[0]]) if len(gaps) else float(b_ap[-1])
    if ap_notch is None or ap_notch <= ap_post:
        ap_notch = ap_post + 0.6 * (ap_ant - ap_post)
        warnings.append("Trochlear notch not found; placed at 60 % of the femoral cartilage's AP extent.")
    depth = ap_notch - ap_post
    medial = ml > ml_notch
    code = np.empty(len(ap), dtype=np.uint8)
    ant = ap > ap_notch
    wb = ~ant & (ap >= ap_notch - 0.6 * depth)
    code[ant] = 11
    code[wb] = np.where(medial[wb], 12, 13)
    post = ~ant & ~wb
    code[post] = np.where(medial[post], 14, 15)
    # 5. separate upper layers in weight-bearing columns move to posterior
    moved = 0
    idx = np.flatnonzero(wb)
    if len(idx):
        gap = 2.0 * float(np.linalg.norm(labels.spacing_mm))
        col = (np.floor(ml[idx]).astype(np.int64) * 100003 + np.floor(ap[idx]).astype(np.int64))
        order = np.lexsort((si[idx], col))
        cs, ss = col[order], si[idx][order]
        brk = np.zeros(len(order), dtype=np.int64)
        brk[1:] = ((cs[1:] == cs[:-1]) & (ss[1:] - ss[:-1] > gap)).astype(np.int64)
        cum = np.cumsum(brk)
        newcol = np.ones(len(order), dtype=bool)
        newcol[1:] = cs[1:] != cs[:-1]
        start_cum = np.maximum.accumulate(np.where(newcol, cum - brk, 0))
        upper = (cum - start_cum) > 0
        sel = idx[order[upper]]
        code[sel] = np.where(medial[sel], 14, 15)
        moved = int(upper.sum())
    out[k, j, i] = code
    return out, FemurRegionInfo(ml_notch, ap_notch, ap_post, from_hist, moved), warnings
