"""The field's reporting standard for knee cartilage: Chondrometrics subregions and measures (pure functions).

References (what each definition follows; docs/MEASURES.md explains every measure):

* [W&E 2008] Wirth W, Eckstein F. A technique for regional analysis of femorotibial cartilage thickness
  based on quantitative magnetic resonance imaging. IEEE Trans Med Imaging 2008;27(6):737-744.
  doi:10.1109/TMI.2007.907323 - the 16 femorotibial subregions.
* [E 2006] Eckstein F, Ateshian G, Burgkart R, et al. Proposal for a nomenclature for magnetic resonance
  imaging based measures of articular cartilage in osteoarthritis. Osteoarthritis Cartilage
  2006;14(10):974-983. doi:10.1016/j.joca.2006.03.005 - the names tAB, cAB, dAB, AC, VC, ThCtAB, ThCcAB
  and the suffixes .aMe (mean), .Max, .SD.

Subregions, as implemented here (geometry on the bone surface, the "total subchondral bone area" tAB):

* Tibia (MT and LT separately): the plate's tAB is projected on the knee frame's axial plane
  (medio-lateral × antero-posterior). The central subregion cMT / cLT is an ellipse centred on the
  area centroid of tAB, its diameters proportional to the medio-lateral and antero-posterior extent
  of tAB (the 0.5-99.5 % area percentiles, robust to a stray vertex), scaled so that it holds 20 % of
  tAB (surface area, not projected area). The rest is split into anterior, posterior, external and
  internal subregions (aMT, pMT, eMT, iMT) by the straight lines from the ellipse centre to the four
  corners of the rectangle bounding tAB. For a rectangular or elliptical plate every one of the five
  subregions then holds 20 % of tAB.
* Femur: the weight-bearing condyles cMF and cLF (our regions 12 / 13: from the intercondylar notch
  back over 60 % of the notch-to-posterior distance, see :mod:`.regions`) are each split medio-laterally
  into three strips of a third of the condyle's medio-lateral width (0.5-99.5 % area percentiles, in
  the femoral frame of :mod:`.regions`): external ecMF / ecLF, central ccMF / ccLF, internal icMF / icLF.
* External / internal: *external* is away from the knee's midline (medial for the medial plates,
  lateral for the lateral ones), *internal* towards the intercondylar notch / tibial spines. The
  knee frame's medial axis points medially for both knees, so left and right knees mirror correctly.

Status of a bone vertex of tAB (the thickness ray: from 2.5 mm inside the bone to 10 mm outside it):
covered (finite thickness), denuded (no voxel of the bone's cartilage on the ray at all) or a miss
(cartilage voxels on the ray but no valid entry/exit of the cartilage surface: NaN thickness). Misses
are not denuded bone: they are left out of every mean and fraction and reported as mAB.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import labels as L

# per-vertex status of the bone surface (point array "cartilage_status" on the bone meshes)
OUTSIDE, COVERED, DENUDED, MISS = 0, 1, 2, 3
CENTRAL_FRACTION = 0.20                  # [W&E 2008]: the central tibial ellipse holds 20 % of tAB
EXTENT_PERCENTILES = (0.5, 99.5)         # robust extent of a plate (area-weighted percentiles)
THICKNESS_PERCENTILES = (5, 25, 50, 75, 95)


@dataclass(frozen=True)
class Subregion:
    code: int            # value in the "subregion" point array of the bone meshes
    name: str            # the Chondrometrics abbreviation (cMT, ecLF, ...), also our row name
    display: str
    parent: int          # region code it subdivides (L.REGIONS)
    part: str            # central | anterior | posterior | external | internal
    color: Tuple[int, int, int]


def region_color(code: int) -> Tuple[int, int, int]:
    """Colour of a region code in the regions label map as Slicer shows it (the golden-ratio hue rule of
    slicer_io.loader), so the results table's legend matches the label map."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((code * 0.618033988749895) % 1.0, 0.55, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _tibial(base: int, plate: str, parent: int) -> List[Subregion]:
    side = "Medial" if plate == "MT" else "Lateral"
    parts = ("central", "anterior", "posterior", "external", "internal")
    return [Subregion(base + i, p[0] + plate, "%s tibia, %s" % (side, p), parent, p, region_color(base + i))
            for i, p in enumerate(parts)]


def _femoral(base: int, plate: str, parent: int) -> List[Subregion]:
    side = "medial" if plate == "MF" else "lateral"
    parts = ("external", "central", "internal")
    return [Subregion(base + i, p[0] + "c" + plate, "Central (weight-bearing) %s femur, %s" % (side, p),
                      parent, p, region_color(base + i)) for i, p in enumerate(parts)]


# codes 51-55 / 61-65 / 71-73 / 81-83 (the "subregion" point array and subregions.nii.gz); colours follow
# the label-map rule so that Slicer's colour table and the results table's legend agree
SUBREGIONS: List[Subregion] = (_tibial(51, "MT", L.MEDIAL_TIBIAL_CARTILAGE)
                               + _tibial(61, "LT", L.LATERAL_TIBIAL_CARTILAGE)
                               + _femoral(71, "MF", 12) + _femoral(81, "LF", 13))
SUBREGION_BY_CODE: Dict[int, Subregion] = {s.code: s for s in SUBREGIONS}
SUBREGION_BY_NAME: Dict[str, Subregion] = {s.name: s for s in SUBREGIONS}

# units of every measure (results.json carries this map as "chondrometrics_units")
UNITS: Dict[str, str] = {
    "tAB": "mm2", "cAB": "mm2", "dAB": "mm2", "dAB%": "%", "mAB": "mm2", "mAB%": "%", "AC": "mm2", "VC": "mm3",
    "VCtAB": "mm", "ThCtAB.aMe": "mm", "ThCcAB.aMe": "mm", "ThCcAB.SD": "mm", "ThCtAB.Max": "mm",
    "ThCAC.aMe": "mm", "ThCAC.Max": "mm",
}
UNITS.update({"ThCtAB.P%02d" % _p: "mm" for _p in THICKNESS_PERCENTILES})
UNITS.update({"ThCAC.P%02d" % _p: "mm" for _p in THICKNESS_PERCENTILES})
MEASURE_NAMES: List[str] = list(UNITS)


def hex_color(rgb: Sequence[int]) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


# -- weighted statistics ----------------------------------------------------------------------------
def weighted_percentiles(values: np.ndarray, weights: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Area-weighted percentiles (q in 0..100): the value below which q % of the weight lies
    (midpoint rule, linear between sorted values)."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if len(v) == 0 or w.sum() <= 0:
        return np.full(len(q), np.nan)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = (np.cumsum(w) - 0.5 * w) / w.sum()
    return np.interp(np.asarray(q, dtype=float) / 100.0, cum, v)


# -- subregion geometry -----------------------------------------------------------------------------
@dataclass
class TibialRule:
    """The fitted tibial subdivision of one plate, in (external, anterior) mm of the knee frame."""
    codes: Tuple[int, int, int, int, int]       # central, anterior, posterior, external, internal
    centre: Tuple[float, float]
    half_extent: Tuple[float, float]            # half the bounding box (0.5-99.5 % area percentiles)
    box: Tuple[float, float, float, float]      # x0, x1, y0, y1
    scale: float                                # ellipse semi-axes = scale × half_extent

    def assign(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        (cx, cy), (hx, hy) = self.centre, self.half_extent
        x0, x1, y0, y1 = self.box
        central = np.hypot((x - cx) / hx, (y - cy) / hy) <= self.scale
        ang = np.arctan2(y - cy, x - cx)
        start = np.arctan2(y0 - cy, x1 - cx)               # external-posterior corner, then counter-clockwise
        b1, b2, b3 = (np.mod(np.arctan2(py - cy, px - cx) - start, 2 * np.pi)
                      for px, py in ((x1, y1), (x0, y1), (x0, y0)))
        rel = np.mod(ang - start, 2 * np.pi)
        c_central, c_ant, c_post, c_ext, c_int = self.codes
        sector = np.where(rel < b1, c_ext, np.where(rel < b2, c_ant, np.where(rel < b3, c_int, c_post)))
        return np.where(central, c_central, sector).astype(np.int32)

    def info(self) -> Dict[str, float]:
        return {"centre_ml_external_mm": self.centre[0], "centre_ap_mm": self.centre[1],
                "semi_axis_ml_mm": self.scale * self.half_extent[0],
                "semi_axis_ap_mm": self.scale * self.half_extent[1]}


def fit_tibial(ml_ext_mm: np.ndarray, ap_mm: np.ndarray, area_mm2: np.ndarray, codes: Sequence[int],
               central_fraction: float = CENTRAL_FRACTION) -> TibialRule:
    """Fit the five tibial subregions to one plate's tAB (points with their surface areas; see the module
    docstring). ``ml_ext_mm`` grows towards external, ``ap_mm`` towards anterior."""
    x, y, w = (np.asarray(v, dtype=float) for v in (ml_ext_mm, ap_mm, area_mm2))
    cx, cy = float((x * w).sum() / w.sum()), float((y * w).sum() / w.sum())
    x0, x1 = (float(v) for v in weighted_percentiles(x, w, EXTENT_PERCENTILES))
    y0, y1 = (float(v) for v in weighted_percentiles(y, w, EXTENT_PERCENTILES))
    hx, hy = max(0.5 * (x1 - x0), 1e-6), max(0.5 * (y1 - y0), 1e-6)
    r = np.hypot((x - cx) / hx, (y - cy) / hy)
    # the ellipse scale at which the enclosed area reaches the fraction (weighted percentile of r)
    scale = float(weighted_percentiles(r, w, [100.0 * central_fraction])[0])
    return TibialRule(tuple(codes), (cx, cy), (hx, hy), (x0, x1, y0, y1), scale)


@dataclass
class FemoralRule:
    """The fitted thirds of one weight-bearing condyle, in external mm of the femoral frame."""
    codes: Tuple[int, int, int]                 # external, central, internal
    borders: Tuple[float, float]

    def assign(self, x: np.ndarray) -> np.ndarray:
        c_ext, c_cen, c_int = self.codes
        t1, t2 = self.borders
        return np.where(x >= t2, c_ext, np.where(x >= t1, c_cen, c_int)).astype(np.int32)

    def info(self) -> Dict[str, float]:
        return {"thirds_borders_ml_external_mm": self.borders}


def fit_femoral(ml_ext_mm: np.ndarray, area_mm2: np.ndarray, codes: Sequence[int]) -> FemoralRule:
    """Thirds of the condyle's medio-lateral width (0.5-99.5 % area percentiles)."""
    x0, x1 = (float(v) for v in weighted_percentiles(ml_ext_mm, area_mm2, EXTENT_PERCENTILES))
    return FemoralRule(tuple(codes), (x0 + (x1 - x0) / 3.0, x0 + 2.0 * (x1 - x0) / 3.0))


def tibial_subregion_codes(ml_ext_mm, ap_mm, area_mm2, codes, central_fraction: float = CENTRAL_FRACTION):
    """Fit and assign in one go: (code per point, the ellipse)."""
    rule = fit_tibial(ml_ext_mm, ap_mm, area_mm2, codes, central_fraction)
    return rule.assign(np.asarray(ml_ext_mm, float), np.asarray(ap_mm, float)), rule.info()


def femoral_third_codes(ml_ext_mm, area_mm2, codes):
    """Fit and assign in one go: (code per point, the two borders)."""
    rule = fit_femoral(ml_ext_mm, area_mm2, codes)
    return rule.assign(np.asarray(ml_ext_mm, float)), rule.borders


# -- vertex status and measures -------------------------------------------------------------------
def vertex_status(thickness_mm: np.ndarray, cartilage_on_ray_mm: np.ndarray, in_tab: np.ndarray) -> np.ndarray:
    """COVERED / DENUDED / MISS for tAB vertices, OUTSIDE elsewhere (see the module docstring).

    ``cartilage_on_ray_mm``: length of the thickness ray lying in voxels of the bone's cartilage (only
    read where the thickness is NaN).
    """
    th = np.asarray(thickness_mm, dtype=float)
    seg = np.asarray(cartilage_on_ray_mm, dtype=float)
    status = np.full(len(th), OUTSIDE, dtype=np.int8)
    fin = np.isfinite(th)
    status[in_tab & fin] = COVERED
    status[in_tab & ~fin & (seg <= 0)] = DENUDED
    status[in_tab & ~fin & (seg > 0)] = MISS
    return status


def measures(thickness_mm: np.ndarray, area_mm2: np.ndarray, status: np.ndarray, sel: np.ndarray,
             volume_mm3: Optional[float] = None, ac_thickness_mm: Optional[np.ndarray] = None,
             ac_area_mm2: Optional[np.ndarray] = None) -> Dict[str, Optional[float]]:
    """The standard measures of one plate or subregion (bone vertices ``sel``).

    tAB = cAB + dAB + mAB; dAB% = dAB / (cAB + dAB); ThCtAB averages over cAB + dAB with denuded
    bone counted as 0 mm, so ThCtAB.aMe = ThCcAB.aMe × cAB / (cAB + dAB) (= × cAB / tAB without
    misses). ``ac_thickness_mm`` / ``ac_area_mm2``: the Euclidean thickness at the cartilage-surface
    vertices of this plate or subregion and their areas (AC and ThCAC.*).
    """
    th = np.asarray(thickness_mm, dtype=float)
    a = np.asarray(area_mm2, dtype=float)
    sel = np.asarray(sel, dtype=bool) & (status != OUTSIDE)
    cov = sel & (status == COVERED)
    den = sel & (status == DENUDED)
    mis = sel & (status == MISS)
    tab, cab, dab, mab = (float(a[m].sum()) for m in (sel, cov, den, mis))
    det = cab + dab
    out: Dict[str, Optional[float]] = {k: None for k in MEASURE_NAMES}
    out.update({"tAB": tab, "cAB": cab, "dAB": dab, "mAB": mab,
                "dAB%": 100.0 * dab / det if det > 0 else None,
                "mAB%": 100.0 * mab / tab if tab > 0 else None})
    if volume_mm3 is not None:
        out["VC"] = float(volume_mm3)
        out["VCtAB"] = float(volume_mm3) / tab if tab > 0 else None
    if cab > 0:
        t, w = th[cov], a[cov]
        mean_c = float((t * w).sum() / cab)
        out["ThCcAB.aMe"] = mean_c
        out["ThCcAB.SD"] = float(np.sqrt((w * (t - mean_c) ** 2).sum() / cab))
        out["ThCtAB.aMe"] = float((t * w).sum() / det)
        out["ThCtAB.Max"] = float(t.max())
        tt = np.concatenate([t, np.zeros(int(den.sum()))])
        ww = np.concatenate([w, a[den]])
        for p, v in zip(THICKNESS_PERCENTILES, weighted_percentiles(tt, ww, THICKNESS_PERCENTILES)):
            out["ThCtAB.P%02d" % p] = float(v)
    elif dab > 0:           # wholly denuded
        out.update({"ThCtAB.aMe": 0.0, "ThCtAB.Max": 0.0})
        for p in THICKNESS_PERCENTILES:
            out["ThCtAB.P%02d" % p] = 0.0
    if ac_area_mm2 is not None and ac_thickness_mm is not None:
        ok = np.isfinite(ac_thickness_mm)
        t, w = np.asarray(ac_thickness_mm, float)[ok], np.asarray(ac_area_mm2, float)[ok]
        out["AC"] = float(np.asarray(ac_area_mm2, float).sum())
        if w.sum() > 0:
            out["ThCAC.aMe"] = float((t * w).sum() / w.sum())
            out["ThCAC.Max"] = float(t.max())
            for p, v in zip(THICKNESS_PERCENTILES, weighted_percentiles(t, w, THICKNESS_PERCENTILES)):
                out["ThCAC.P%02d" % p] = float(v)
    return out


# -- femorotibial compartments --------------------------------------------------------------------
# The medial / lateral femorotibial compartment (MFTC = MT + cMF, LFTC = LT + cLF) as OAI / Chondrometrics
# papers report it (e.g. Eckstein, Wirth et al., Arthritis Res Ther 2009;11:R90, doi:10.1186/ar2732; Wirth
# & Eckstein 2008): areas and volume are the sums over the two plates, and the compartment's mean
# thickness is the SUM of the tibial and the femoral plate's mean thickness - the cartilage between the
# two bones, not an area-weighted mean. This is our reading of those papers (their full texts were not in
# the corpus we could search; docs/MEASURES.md); measures without such a convention (SD, Max, percentiles,
# VCtAB) are not given for compartments.
COMPARTMENTS: Tuple[Tuple[str, str, Tuple[str, str]], ...] = (
    ("MFTC", "Medial femorotibial compartment (MT + cMF)", ("MT", "cMF")),
    ("LFTC", "Lateral femorotibial compartment (LT + cLF)", ("LT", "cLF")),
)
COMPARTMENT_SUMMED_AREAS = ("tAB", "cAB", "dAB", "mAB", "AC", "VC")
COMPARTMENT_SUMMED_THICKNESS = ("ThCtAB.aMe", "ThCcAB.aMe", "ThCAC.aMe")


def compartment_measures(plates: Sequence[Dict[str, Optional[float]]]) -> Dict[str, Optional[float]]:
    """The measures of a compartment from its plates' measures: areas, volume and mean thicknesses summed
    (None where a plate lacks the value); dAB% and mAB% recomputed from the summed areas."""
    out: Dict[str, Optional[float]] = {}
    for k in COMPARTMENT_SUMMED_AREAS + COMPARTMENT_SUMMED_THICKNESS:
        vals = [p.get(k) for p in plates]
        out[k] = float(sum(vals)) if vals and all(v is not None for v in vals) else None
    tab, cab, dab, mab = (out[k] for k in ("tAB", "cAB", "dAB", "mAB"))
    out["dAB%"] = 100.0 * dab / (cab + dab) if cab is not None and dab is not None and cab + dab > 0 else None
    out["mAB%"] = 100.0 * mab / tab if mab is not None and tab else None
    return out


def compartment_rows(rows: Sequence[Dict]) -> List[Dict]:
    """Rows (kind ``"compartment"``, named MFTC / LFTC) for results.json from its region rows (dicts with a
    ``chondrometrics`` code and the measures under their names; a region row is preferred to the plate row
    of the same code). A compartment whose plates are not both present is left out."""
    by_code: Dict[str, Dict] = {}
    for r in rows:
        code = r.get("chondrometrics")
        if code and r.get("kind", "region") in ("region", "plate"):
            if code not in by_code or r.get("kind", "region") == "region":
                by_code[code] = r
    out = []
    for name, display, parts in COMPARTMENTS:
        if not all(p in by_code for p in parts):
            continue
        row: Dict = {"name": name, "kind": "compartment", "chondrometrics": name, "display": display, "color": "",
                     "parts": list(parts)}
        row.update(compartment_measures([by_code[p] for p in parts]))
        out.append(row)
    return out
