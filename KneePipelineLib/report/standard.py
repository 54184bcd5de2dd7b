"""The report's Chondrometrics section: the field's standard measures per plate, region and subregion
(table with the colour legend) and a chart of ThCtAB.aMe over the 16 femorotibial subregions."""
from __future__ import annotations

import html
from typing import Any, Dict, List

import numpy as np

COLUMNS = ["tAB", "cAB", "dAB", "dAB%", "mAB%", "AC", "VC", "ThCtAB.aMe", "ThCcAB.aMe", "ThCcAB.SD", "ThCtAB.Max",
           "ThCtAB.P05", "ThCtAB.P50", "ThCtAB.P95", "ThCAC.aMe", "ThCAC.Max"]
KIND_ORDER = {"plate": 0, "region": 1, "subregion": 2}


def _f(v: Any):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def measure_table(rows: List[Dict[str, Any]], units: Dict[str, str]) -> str:
    """HTML table: one row per plate / region / subregion with its legend colour and the standard measures."""
    rows = [r for r in rows if any(_f(r.get(c)) is not None for c in COLUMNS)]
    rows = sorted(rows, key=lambda r: KIND_ORDER.get(r.get("kind"), 3))
    e = html.escape
    head = "<th>code</th><th></th><th>name</th><th>kind</th>" + "".join(
        "<th>%s%s</th>" % (e(c), " (%s)" % e(units[c]) if units.get(c) else "") for c in COLUMNS)
    body = []
    for r in rows:
        col = r.get("color") or ""
        sw = "<span style='display:inline-block;width:1em;height:1em;background:%s'></span>" % e(col) if col else ""
        cells = []
        for c in COLUMNS:
            v = _f(r.get(c))
            cells.append("<td>%s</td>" % ("\u2013" if v is None else ("%.1f" % v if abs(v) >= 100 else "%.2f" % v)))
        body.append("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td>%s</tr>"
                    % (e(str(r.get("chondrometrics") or r.get("name"))), sw, e(str(r.get("display") or r.get("name"))),
                       e(str(r.get("kind", ""))), "".join(cells)))
    return "<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>" % (head, "".join(body))


def subregion_bars(ax, rows: List[Dict[str, Any]]) -> None:
    """ThCtAB.aMe (bars, legend colours) and ThCcAB.aMe (ticks) for the 16 femorotibial subregions."""
    from ..morphometry.chondrometrics import SUBREGIONS, hex_color

    by = {r.get("name"): r for r in rows if r.get("kind") == "subregion"}
    names = [s.name for s in SUBREGIONS]
    t = [(_f(by.get(n, {}).get("ThCtAB.aMe")) or np.nan) for n in names]
    c = [(_f(by.get(n, {}).get("ThCcAB.aMe")) or np.nan) for n in names]
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(t), color=[hex_color(s.color) for s in SUBREGIONS], edgecolor="k", linewidth=0.6,
           label="ThCtAB.aMe (denuded = 0)")
    ax.plot(x, c, "k_", ms=14, mew=2, label="ThCcAB.aMe (covered bone only)")
    for xi, (n, v) in enumerate(zip(names, t)):
        d = _f(by.get(n, {}).get("dAB%"))
        if d:
            ax.text(xi, 0.05, "%.0f%%\ndAB" % d, ha="center", fontsize=6, color="r")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("cartilage thickness (mm)", fontsize=8)
    ax.axvline(9.5, color="#888", lw=0.8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def section_chondrometrics(rd, w, section_cls, figure_cls, plt):
    """The report section (None when the results carry no Chondrometrics measures)."""
    rows = [r for r in (rd.results.get("regions") or []) if isinstance(r, dict)]
    if not any(_f(r.get("tAB")) is not None for r in rows):
        return None
    sec = section_cls("chondrometrics", "Chondrometrics: the field's standard measures")
    if any(r.get("kind") == "subregion" for r in rows):
        fig, ax = plt.subplots(figsize=(8, 3.4))
        subregion_bars(ax, rows)
        fig.tight_layout()
        sec.figures.append(figure_cls(w.save(fig, "subregions.png", dpi=90), "Thickness per femorotibial subregion",
                                      "Subregions of Wirth & Eckstein (IEEE TMI 2008): tibia left of the grey line, "
                                      "weight-bearing femoral condyles right of it; definitions in docs/MEASURES.md."))
    sec.html = ("<p>Measures as named by Eckstein et al. (Osteoarthritis Cartilage 2006): tAB total subchondral bone "
                "area, cAB covered, dAB denuded (no cartilage on the thickness ray), mAB rays that failed (neither), "
                "AC cartilage surface, VC volume, ThCtAB.aMe mean thickness over tAB (denuded = 0), ThCcAB over cAB, "
                "ThCAC the Euclidean thickness from the cartilage surface to the bone interface.</p>"
                + measure_table(rows, rd.results.get("chondrometrics_units") or {}))
    return sec
