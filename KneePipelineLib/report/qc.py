"""Quality-control findings for one run: what a reviewer must look at before trusting the numbers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

import numpy as np

from .. import labels as L

COVERAGE_MIN = 0.8          # fraction of a region's bone surface with a thickness measurement
ASSD_MAX_MM = 1.0           # NSM fit quality
SPACING_MAX_MM = 1.0        # coarser voxels make thickness unreliable
ANISOTROPY_MAX = 4.0
FEMUR_ML_WIDTH_MM = (55.0, 110.0)   # adult femoral condyle width, generous
THICKNESS_MEAN_MM = (0.3, 5.0)      # plausible regional mean cartilage thickness
BSCORE_PLAUSIBLE = (-6.0, 10.0)
DENUDED_PCT_MAX = 5.0       # dAB% of a region or subregion worth a look (docs/MEASURES.md)
EXPECTED_BONES = ("femur", "tibia", "patella")
EXPECTED_CARTILAGE = ("femoral_cartilage", "medial_tibial_cartilage", "lateral_tibial_cartilage",
                      "patellar_cartilage")


@dataclass
class Finding:
    severity: str    # "error" | "warning" | "info"
    category: str    # missing structure | coverage | denuded | geometry | fit quality | run
    message: str


def _f(v: Any):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def findings(rd) -> List[Finding]:
    out: List[Finding] = []
    res = rd.results or {}
    # -- missing structures ------------------------------------------------------------------
    if rd.labels is not None:
        present = set(int(v) for v in np.unique(rd.labels.array[::2, ::2, ::2]))
        missing = [L.TISSUES[c] for c in sorted(L.TISSUES) if c not in present and c != L.FIBULA]
        if missing:
            out.append(Finding("warning", "missing structure",
                               "Label map lacks: " + ", ".join(m.replace("_", " ") for m in missing) + "."))
    else:
        out.append(Finding("error", "missing structure", "No label map in the run folder."))
    miss_mesh = [b for b in EXPECTED_BONES if b not in rd.meshes]
    if miss_mesh:
        out.append(Finding("warning", "missing structure", "No surface mesh for: " + ", ".join(miss_mesh) + "."))
    for b in EXPECTED_BONES:
        m = rd.meshes.get(b)
        if m is not None and (m.thickness_mm is None or not np.isfinite(m.thickness_mm).any()):
            out.append(Finding("warning", "missing structure", "The %s surface carries no cartilage thickness." % b))
    # -- regions: coverage and plausibility ---------------------------------------------------
    rows = {r.get("name"): r for r in res.get("regions", []) or []}
    if not rows:
        out.append(Finding("error", "missing structure", "results.json has no regional thickness."))
    for reg in L.REGIONS:
        r = rows.get(reg.name)
        if rows and r is None:
            out.append(Finding("warning", "missing structure", "No result for region %s (%s)." % (reg.display, reg.chondrometrics)))
            continue
        if r is None:
            continue
        mean = _f(r.get("thickness_mean_mm"))
        if mean is None:
            out.append(Finding("warning", "missing structure", "%s (%s): no thickness measured." % (reg.display, reg.chondrometrics)))
        elif not THICKNESS_MEAN_MM[0] <= mean <= THICKNESS_MEAN_MM[1]:
            out.append(Finding("warning", "geometry", "%s (%s): mean thickness %.2f mm is outside the plausible %.1f-%.1f mm."
                               % (reg.display, reg.chondrometrics, mean, *THICKNESS_MEAN_MM)))
        for k, v in r.items():
            cv = _f(v) if "coverage" in k else None
            if cv is not None and cv < COVERAGE_MIN:
                out.append(Finding("warning", "coverage", "%s (%s): %s %.2f < %.2f - thickness measured on only part of the region."
                                   % (reg.display, reg.chondrometrics, k, cv, COVERAGE_MIN)))
    # -- Chondrometrics: denuded subchondral bone ---------------------------------------------
    for r in res.get("regions", []) or []:
        d = _f(r.get("dAB%")) if r.get("kind") in ("region", "subregion") else None
        if d is not None and d >= DENUDED_PCT_MAX:
            out.append(Finding("warning", "denuded", "%s (%s): %.1f %% of the subchondral bone area is denuded (dAB%%: "
                               "no cartilage voxel on the thickness ray) - a full-thickness lesion or a hole in the "
                               "segmentation; look at the map." % (r.get("display") or r.get("name"),
                                                                   r.get("chondrometrics") or "", d)))
    # -- input geometry -----------------------------------------------------------------------
    vol = rd.image if rd.image is not None else rd.labels
    if vol is not None:
        sp = np.asarray(vol.spacing_mm, float)
        if sp.max() > SPACING_MAX_MM:
            out.append(Finding("warning", "geometry", "Voxel spacing %s mm: coarser than %.1f mm, thickness is less reliable."
                               % ("x".join("%.2f" % s for s in sp), SPACING_MAX_MM)))
        if sp.max() / sp.min() > ANISOTROPY_MAX:
            out.append(Finding("warning", "geometry", "Voxels are %.1f times longer in one direction (spacing %s mm)."
                               % (sp.max() / sp.min(), "x".join("%.2f" % s for s in sp))))
        # acquisition plane from the slice axis' physical direction
        k_axis = int(np.argmax(sp)) if sp.max() / sp.min() > 1.2 else 2
        d = np.abs(np.asarray(vol.direction)[:, k_axis])
        plane = ["sagittal", "coronal", "axial"][int(np.argmax(d))]
        obl = float(np.degrees(np.arccos(min(1.0, d.max()))))
        out.append(Finding("info", "geometry", "Acquisition: %s slices (%.0f\u00b0 oblique), spacing %s mm."
                           % (plane, obl, "x".join("%.2f" % s for s in sp))))
    fem = rd.meshes.get("femur")
    if fem is not None:
        th = fem.thickness_mm
        pts = fem.points_mm[np.isfinite(th)] if th is not None and np.isfinite(th).any() else fem.points_mm
        width = float(np.percentile(pts[:, 0], 99.5) - np.percentile(pts[:, 0], 0.5))
        if not FEMUR_ML_WIDTH_MM[0] <= width <= FEMUR_ML_WIDTH_MM[1]:
            out.append(Finding("warning", "geometry", "Femoral condyle medio-lateral width %.0f mm is outside the usual %.0f-%.0f mm "
                               "(wrong scale, cropped field of view or unusual anatomy)." % (width, *FEMUR_ML_WIDTH_MM)))
    lat = res.get("laterality") or {}
    conf = _f(lat.get("confidence"))
    if conf is not None and conf < 0.3:
        out.append(Finding("warning", "geometry", "Laterality (%s) is uncertain (confidence %.2f); medial/lateral labels may be swapped."
                           % (lat.get("side"), conf)))
    # -- NSM fit quality ----------------------------------------------------------------------
    nsm = res.get("nsm") or {}
    for model_id, fit in (nsm.items() if isinstance(nsm, dict) else []):
        if not isinstance(fit, dict):
            continue
        for k in ("assd_bone_mm", "assd_cartilage_mm"):
            a = _f(fit.get(k))
            if a is not None and a > ASSD_MAX_MM:
                out.append(Finding("warning", "fit quality", "%s: %s = %.2f mm > %.1f mm - the shape model fits poorly; "
                                   "treat the B-score with caution." % (model_id, k, a, ASSD_MAX_MM)))
        b = _f(fit.get("bscore"))
        if b is not None and not BSCORE_PLAUSIBLE[0] <= b <= BSCORE_PLAUSIBLE[1]:
            out.append(Finding("warning", "geometry", "%s: B-score %.2f is far outside the range seen in cohorts "
                               "(out-of-distribution shape)." % (model_id, b)))
    # -- the run's own warnings and failed steps -----------------------------------------------
    seen = set()
    for w in list(rd.manifest.warnings) + list(res.get("warnings", []) or []):
        if w not in seen and not w.startswith("report step failed"):
            seen.add(w)
            out.append(Finding("warning", "run", w))
    for name, st in (rd.manifest.steps or {}).items():
        if st.get("status") == "failed" and name != "report":
            msg = (st.get("error") or {}).get("message", "")
            out.append(Finding("error", "run", "Step %s failed%s" % (name, (": " + msg) if msg else ".")))
    for n in rd.load_notes:
        out.append(Finding("warning", "run", n))
    return out
