"""The longitudinal report page: 2D change maps per follow-up visit and a waterfall of regional change.

The maps are the per-knee report's 2D maps (:mod:`..report.maps2d`: femur unwrapped about its medio-lateral
axis, tibia from superior, patella from posterior) drawn on the baseline bone with the per-vertex change in a
diverging colour scale centred on 0 (blue = loss, red = gain), with the same sub-region borders and names.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _mesh_data(poly, structure: str, change: np.ndarray):
    from ..morphometry.mesh import get_point_array, polydata_arrays
    from ..report.data import MeshData

    pts, tris = polydata_arrays(poly)
    reg = get_point_array(poly, "region")
    arrays = {"thickness_mm": np.asarray(change, float)}
    if reg is not None:
        arrays["region"] = np.asarray(reg).astype(int)
    return MeshData(structure, pts, tris, arrays, poly)


def change_maps_png(baseline, visit, path: Path, limit_mm: float) -> bool:
    from ..report.maps2d import draw_map, femur_map, projected_map

    plt = _plt()
    side = (baseline.laterality or "right").lower()
    maps = []
    for bone in ("femur", "tibia", "patella"):
        if bone not in visit.point_change:
            continue
        md = _mesh_data(baseline.meshes[bone], bone, visit.point_change[bone]["change_mm"])
        fm = femur_map(md, side) if bone == "femur" else projected_map(md, bone, side)
        if fm is not None and len(fm.triangles):
            maps.append(fm)
    if not maps:
        return False
    widths = [1.6 if m.structure == "femur" else 1.0 for m in maps]
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * sum(widths) + 0.8, 4.6), gridspec_kw={"width_ratios": widths})
    axes = np.atleast_1d(axes)
    mappable = None
    for ax, fm in zip(axes, maps):
        mappable = draw_map(ax, fm, -limit_mm, limit_mm, cmap="RdBu")
        ax.set_title("%s: change %s vs baseline" % (fm.structure.capitalize(), visit.visit), fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    cax = fig.add_axes([0.945, 0.15, 0.015, 0.7])
    fig.colorbar(mappable, cax=cax).set_label("thickness change (mm)", fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def waterfall_png(rows: List[Dict[str, Any]], path: Path, title: str) -> bool:
    """Regional mean change sorted from most loss to most gain (regions only, not whole plates)."""
    plt = _plt()
    rows = [r for r in rows if r.get("kind") == "region" and r.get("change_mean_mm") is not None]
    if not rows:
        return False
    rows = sorted(rows, key=lambda r: r["change_mean_mm"])
    vals = np.array([r["change_mean_mm"] for r in rows])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(rows) + 1.5), 3.6))
    ax.bar(range(len(rows)), vals, color=np.where(vals < 0, "#2166ac", "#b2182b"))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["name"].replace("_", " ") for r in rows], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("mean thickness change (mm)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def build_longitudinal_report(out_dir: Path, baseline, visits, doc: Dict[str, Any]) -> Path:
    rep = Path(out_dir) / "report"
    rep.mkdir(parents=True, exist_ok=True)
    vals = [np.abs(v.point_change[b]["change_mm"]) for v in visits for b in v.point_change]
    vals = np.concatenate(vals) if vals else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    limit = float(np.percentile(vals, 98)) if vals.size else 1.0
    limit = max(limit, 0.1)
    parts = ["<!doctype html><meta charset='utf-8'><title>KneePipeline longitudinal</title>",
             "<h1>Cartilage change from baseline %s</h1>" % html.escape(doc["baseline"]["visit"]),
             "<p>Knee: %s. Blue = thinner than at baseline, red = thicker; colour range &plusmn;%.2f mm "
             "(98th percentile of |change|). Grey areas: no thickness at one of the visits.</p>"
             % (html.escape(str(doc["baseline"].get("laterality"))), limit)]
    for v, vd in zip(visits, doc["followups"]):
        name = v.visit
        parts.append("<h2>%s</h2>" % html.escape(name))
        reg = ", ".join("%s %.2f mm RMS (%.1f&deg;)" % (b, r["rms_mm"], r["rotation_deg"])
                        for b, r in vd["registration"].items())
        parts.append("<p>Registration onto the baseline: %s.</p>" % reg)
        if change_maps_png(baseline, v, rep / ("change_maps_%s.png" % name), limit):
            parts.append("<img src='change_maps_%s.png' alt='change maps %s'>" % (name, html.escape(name)))
        if waterfall_png(vd["regions"], rep / ("waterfall_%s.png" % name), "Regional change, " + name):
            parts.append("<img src='waterfall_%s.png' alt='waterfall %s'>" % (name, html.escape(name)))
        rows = "".join("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%d / %d</td></tr>" % (
            html.escape(r["name"]), _f(r["baseline_mean_mm"]), _f(r["followup_mean_mm"]), _f(r["change_mean_mm"]),
            _f(r["change_percent"], "%.1f"), r["n_comparable"], r["n_vertices"]) for r in vd["regions"])
        parts.append("<table border=1 cellspacing=0 cellpadding=3><tr><th>region</th><th>baseline (mm)</th>"
                     "<th>follow-up (mm)</th><th>change (mm)</th><th>change (%)</th><th>comparable vertices</th></tr>"
                     + rows + "</table>")
    if doc.get("warnings"):
        parts.append("<h2>Warnings</h2><ul>%s</ul>" % "".join("<li>%s</li>" % html.escape(w) for w in doc["warnings"]))
    page = rep / "longitudinal.html"
    page.write_text("\n".join(parts), encoding="utf-8")
    return page


def _f(v, fmt: str = "%.3f") -> str:
    return "&ndash;" if v is None else fmt % v
