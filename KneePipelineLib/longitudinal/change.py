"""Follow-up thickness on the baseline bone vertices, and cartilage change per point and per region.

Both visits measure thickness the same way (normal rays from the bone surface through the cartilage), so once
the follow-up bone is registered onto the baseline bone a baseline vertex and the follow-up surface point next
to it measure the same cartilage. The follow-up value at a baseline vertex is the inverse-distance mean of the
``k`` nearest follow-up vertices that carry a thickness; a baseline vertex is *comparable* when it has a
thickness itself, its nearest follow-up vertex lies within ``max_distance_mm`` and carries a thickness too.
Regions are the baseline's (the reference visit's sub-region codes on its bone vertices), so every visit is
summarised over the same piece of bone. Means are area-weighted over the comparable vertices only — like
with like: a vertex missing at either visit is left out of both means and counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np


@dataclass(frozen=True)
class MappedThickness:
    followup_thickness_mm: np.ndarray    # (n_baseline,) NaN where not comparable
    distance_mm: np.ndarray              # nearest follow-up vertex distance per baseline vertex
    comparable: np.ndarray               # (n_baseline,) bool


def map_thickness(baseline_points_mm: np.ndarray, baseline_thickness_mm: np.ndarray,
                  followup_points_mm: np.ndarray, followup_thickness_mm: np.ndarray,
                  max_distance_mm: float = 1.5, k: int = 4) -> MappedThickness:
    """Follow-up thickness at each baseline vertex (follow-up points already in the baseline's frame)."""
    from scipy.spatial import cKDTree

    fu_th = np.asarray(followup_thickness_mm, float)
    fpts = np.asarray(followup_points_mm, float)
    bpts = np.asarray(baseline_points_mm, float)
    k = max(1, min(int(k), len(fpts)))
    d, j = cKDTree(fpts).query(bpts, k=k)
    d, j = d.reshape(len(bpts), k), j.reshape(len(bpts), k)
    vals = fu_th[j]
    ok = np.isfinite(vals)
    w = np.where(ok, 1.0 / np.maximum(d, 1e-6), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mapped = (np.where(ok, vals, 0.0) * w).sum(1) / w.sum(1)
    comparable = (d[:, 0] <= max_distance_mm) & ok[:, 0] & np.isfinite(np.asarray(baseline_thickness_mm, float))
    mapped = np.where(comparable, mapped, np.nan)
    return MappedThickness(mapped, d[:, 0], comparable)


@dataclass
class RegionChange:
    """Change over one region (or plate) of the baseline bone; keys follow results.json's region names."""

    name: str
    kind: str                          # "region" | "plate" | "subregion" (Chondrometrics codes: cMT, ecLF, ...)
    code: Optional[int]
    bone: str
    n_vertices: int                    # baseline bone vertices of the region
    n_comparable: int                  # of those, with a thickness at both visits
    comparable_fraction: Optional[float]   # by area
    baseline_mean_mm: Optional[float]      # area-weighted, over comparable vertices
    followup_mean_mm: Optional[float]
    change_mean_mm: Optional[float]        # follow-up - baseline
    change_percent: Optional[float]        # 100 x change / baseline
    change_std_mm: Optional[float]         # of the per-vertex change
    change_median_mm: Optional[float]


def region_change(name: str, kind: str, code: Optional[int], bone: str, select: np.ndarray,
                  baseline_mm: np.ndarray, followup_mm: np.ndarray, comparable: np.ndarray,
                  area_mm2: np.ndarray) -> RegionChange:
    sel = np.asarray(select, bool)
    ok = sel & comparable
    n, nc = int(sel.sum()), int(ok.sum())
    area_sel = float(area_mm2[sel].sum())
    frac = float(area_mm2[ok].sum() / area_sel) if area_sel > 0 else None
    if nc == 0:
        return RegionChange(name, kind, code, bone, n, 0, frac, None, None, None, None, None, None)
    w = area_mm2[ok]
    w = w / w.sum() if w.sum() > 0 else np.full(nc, 1.0 / nc)
    b = float((baseline_mm[ok] * w).sum())
    f = float((followup_mm[ok] * w).sum())
    dv = followup_mm[ok] - baseline_mm[ok]
    return RegionChange(name, kind, code, bone, n, nc, frac, b, f, f - b, 100.0 * (f - b) / b if b > 0 else None,
                        float(dv.std(ddof=1)) if nc > 1 else 0.0, float(np.median(dv)))


def region_selections(region_codes: np.ndarray, region_names: Dict[int, str],
                      plates: Dict[str, Sequence[int]]) -> List[Tuple[str, str, Optional[int], np.ndarray]]:
    """(name, kind, code, vertex mask) for every region present on the bone and every plate it holds."""
    codes = np.asarray(region_codes).astype(int)
    present = set(int(c) for c in np.unique(codes) if c)
    out: List[Tuple[str, str, Optional[int], np.ndarray]] = []
    region_set = set()
    for c in sorted(present):
        if c in region_names:
            out.append((region_names[c], "region", c, codes == c))
            region_set.add(region_names[c])
    for pname, pcodes in plates.items():
        if pname in region_set or not present & set(int(c) for c in pcodes):
            continue
        out.append((pname, "plate", None, np.isin(codes, list(pcodes))))
    return out


def summarise(changes: Iterable[RegionChange]) -> List[dict]:
    from dataclasses import asdict

    return [asdict(c) for c in changes]
