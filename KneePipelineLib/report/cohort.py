"""Cohort report from the batch table (one row per knee: id, status, error_category, error_message, then
the flattened results columns). Distributions per region, B-score histogram, robust outliers, failures."""
from __future__ import annotations

import csv
import html
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import labels as L
from ..errors import InvalidInputError

ROBUST_Z_MAX = 3.5            # modified z-score (Iglewicz & Hoaglin): 0.6745 (x - median) / MAD
OK_STATUSES = ("complete", "ok", "success", "succeeded", "done", "resumed")
HTML_NAME = "cohort_report.html"


def _num(v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return np.nan
    return x if np.isfinite(x) else np.nan


def read_cohort(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            cols = list(reader.fieldnames or [])
    except OSError as exc:
        raise InvalidInputError("Cannot read the cohort table %s (%s)." % (path, exc.strerror or exc)) from exc
    if "id" not in cols:
        raise InvalidInputError("The cohort table %s has no 'id' column." % path.name,
                                hint="Give the cohort_results.csv written by `kneepipeline batch`.")
    return cols, rows


def robust_z(x: np.ndarray) -> np.ndarray:
    """Modified z-score; NaN where x is NaN or the MAD is zero."""
    med = np.nanmedian(x)
    mad = np.nanmedian(np.abs(x - med))
    if not np.isfinite(mad) or mad == 0:
        return np.full_like(x, np.nan, dtype=float)
    return 0.6745 * (x - med) / mad


def _ok(row: Dict[str, str]) -> bool:
    return (row.get("status") or "complete").strip().lower() in OK_STATUSES


def _save(fig, out: Path) -> str:
    import matplotlib.pyplot as plt

    from ..io.writers import atomic_write

    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    finally:
        plt.close(fig)
    return out.name


def _write_text(path: Path, text: str) -> None:
    from ..io.writers import atomic_write_text

    atomic_write_text(path, text)


def build_cohort_report(cohort_csv: Path, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    t0 = time.time()
    cohort_csv, out_dir = Path(cohort_csv), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cols, rows = read_cohort(cohort_csv)
    ok_rows = [r for r in rows if _ok(r)]
    failed = [r for r in rows if not _ok(r)]
    ids = [r.get("id", "") for r in ok_rows]
    images: List[Tuple[str, str]] = []

    # -- regional thickness distributions, then the Chondrometrics subregions ----------------------
    from ..morphometry.chondrometrics import SUBREGIONS

    reg_cols = [(r, "%s_thickness_mean_mm" % r.name) for r in L.REGIONS if "%s_thickness_mean_mm" % r.name in cols]
    sub_cols = [(s, "%s_ThCtAB.aMe" % s.name) for s in SUBREGIONS if "%s_ThCtAB.aMe" % s.name in cols]
    outliers: List[Tuple[str, str, float, float]] = []
    rng = np.random.default_rng(0)
    for group, ylabel, title, fname, caption in (
            (reg_cols, "mean cartilage thickness (mm)", "Regional thickness", "cohort_thickness.png",
             "Regional thickness distributions"),
            (sub_cols, "ThCtAB.aMe (mm, denuded = 0)", "Femorotibial subregions (Wirth & Eckstein 2008)",
             "cohort_subregions.png", "Subregion thickness distributions (ThCtAB.aMe)")):
        if not group or not ok_rows:
            continue
        data = [np.array([_num(r.get(c)) for r in ok_rows]) for _, c in group]
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(group) + 2), 4.2))
        ax.boxplot([d[np.isfinite(d)] for d in data], showfliers=False, widths=0.55)
        for i, d in enumerate(data):
            z = robust_z(d)
            jit = rng.uniform(-0.15, 0.15, len(d))
            good = np.isfinite(d)
            flag = good & (np.abs(np.nan_to_num(z)) > ROBUST_Z_MAX)
            ax.scatter(i + 1 + jit[good & ~flag], d[good & ~flag], s=12, color="#3070b0", alpha=0.7, zorder=3)
            ax.scatter(i + 1 + jit[flag], d[flag], s=30, color="#d02020", marker="x", zorder=4)
            for j in np.nonzero(flag)[0]:
                outliers.append((ids[j], group[i][1], float(d[j]), float(z[j])))
                ax.annotate(ids[j], (i + 1 + jit[j], d[j]), fontsize=7, color="#d02020", xytext=(3, 3),
                            textcoords="offset points")
        ax.set_xticks(range(1, len(group) + 1))
        ax.set_xticklabels([getattr(r, "chondrometrics", None) or r.name for r, _ in group], fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_title("%s, %d knees (red \u00d7: |robust z| > %.1f)" % (title, len(ok_rows), ROBUST_Z_MAX), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        images.append((_save(fig, out_dir / fname), caption))

    # -- other numeric columns: outliers only (T2, B-score, ASSD) ------------------------------
    extra = [c for c in cols if (c.endswith("_t2_mean_ms") or c.endswith("_bscore") or c.endswith("_assd_bone_mm")
                                 or c.endswith("_assd_cartilage_mm"))]
    for c in extra:
        d = np.array([_num(r.get(c)) for r in ok_rows])
        z = robust_z(d)
        for j in np.nonzero(np.abs(np.nan_to_num(z)) > ROBUST_Z_MAX)[0]:
            outliers.append((ids[j], c, float(d[j]), float(z[j])))

    # -- B-score histogram ---------------------------------------------------------------------
    b_cols = [c for c in cols if c.endswith("_bscore")]
    b_vals = {c: np.array([_num(r.get(c)) for r in ok_rows]) for c in b_cols}
    b_vals = {c: v[np.isfinite(v)] for c, v in b_vals.items() if np.isfinite(v).any()}
    if b_vals:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.axvspan(-2, 2, color="#cfe8cf", zorder=0, label="healthy \u00b12 SD")
        ax.axvspan(-1, 1, color="#8fcf8f", zorder=0, label="healthy \u00b11 SD")
        allv = np.concatenate(list(b_vals.values()))
        bins = np.linspace(min(-3.0, allv.min() - 0.5), max(5.0, allv.max() + 0.5), 30)
        for c, v in b_vals.items():
            ax.hist(v, bins=bins, alpha=0.7, label="%s (n=%d)" % (c[: -len("_bscore")], len(v)), zorder=2)
        ax.axvline(0, color="g", ls="--", lw=1)
        ax.set_xlabel("B-score (0 = healthy mean, units = healthy SD)", fontsize=9)
        ax.set_ylabel("knees", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        images.append((_save(fig, out_dir / "cohort_bscore.png"), "B-score distribution"))

    # -- HTML ----------------------------------------------------------------------------------
    summary = {"knees": len(rows), "complete": len(ok_rows), "failed": len(failed),
               "outliers": [dict(id=i, column=c, value=v, robust_z=round(z, 2)) for i, c, v, z in outliers],
               "failed_knees": [dict(id=r.get("id"), status=r.get("status"), error_category=r.get("error_category"),
                                     error_message=r.get("error_message")) for r in failed],
               "images": [n for n, _ in images], "robust_z_max": ROBUST_Z_MAX}
    e = html.escape
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Cohort QC report</title>"
             "<style>body{font-family:system-ui,Helvetica,Arial,sans-serif;margin:1.5em;max-width:1200px}"
             "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}.bad{color:#a00}</style></head><body>",
             "<h1>Cohort QC report</h1>",
             "<p>%s: %d knees, %d complete, <span class='bad'>%d failed</span>.</p>"
             % (e(cohort_csv.name), len(rows), len(ok_rows), len(failed))]
    parts.append("<h2>Failed knees</h2>")
    if failed:
        parts.append("<table><tr><th>id</th><th>status</th><th>error category</th><th>message</th></tr>%s</table>" % "".join(
            "<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (e(r.get("id") or ""), e(r.get("status") or ""),
                                                                     e(r.get("error_category") or ""),
                                                                     e(r.get("error_message") or "")) for r in failed))
    else:
        parts.append("<p>None.</p>")
    parts.append("<h2>Outliers (|robust z| &gt; %.1f, median/MAD)</h2>" % ROBUST_Z_MAX)
    if outliers:
        parts.append("<table><tr><th>id</th><th>measure</th><th>value</th><th>robust z</th></tr>%s</table>" % "".join(
            "<tr><td>%s</td><td>%s</td><td>%.3g</td><td>%.1f</td></tr>" % (e(i), e(c), v, z) for i, c, v, z in outliers))
    else:
        parts.append("<p>None.</p>")
    for name, title in images:
        parts.append("<h2>%s</h2><img src='%s' alt='%s'>" % (e(title), e(name), e(title)))
    if reg_cols and ok_rows:
        parts.append("<h2>Summary per region (mm)</h2><table><tr><th>region</th><th>n</th><th>median</th><th>IQR</th>"
                     "<th>min</th><th>max</th></tr>")
        for r, c in reg_cols:
            d = np.array([_num(x.get(c)) for x in ok_rows])
            d = d[np.isfinite(d)]
            if d.size:
                q1, med, q3 = np.percentile(d, [25, 50, 75])
                parts.append("<tr><td>%s (%s)</td><td>%d</td><td>%.2f</td><td>%.2f\u2013%.2f</td><td>%.2f</td><td>%.2f</td></tr>"
                             % (e(r.display), r.chondrometrics, d.size, med, q1, q3, d.min(), d.max()))
        parts.append("</table>")
    if sub_cols and ok_rows:
        parts.append("<h2>Summary per femorotibial subregion</h2><table><tr><th>subregion</th><th>n</th>"
                     "<th>ThCtAB.aMe median (IQR), mm</th><th>ThCcAB.aMe median, mm</th><th>dAB%% median (max)</th>"
                     "<th>tAB median, mm\u00b2</th></tr>")
        for s_, c in sub_cols:
            d = np.array([_num(x.get(c)) for x in ok_rows])
            d = d[np.isfinite(d)]
            if not d.size:
                continue
            q1, med, q3 = np.percentile(d, [25, 50, 75])
            extra = []
            for k in ("ThCcAB.aMe", "dAB%", "tAB"):
                v = np.array([_num(x.get("%s_%s" % (s_.name, k))) for x in ok_rows])
                extra.append(v[np.isfinite(v)])
            cc, dd, ta = extra
            parts.append("<tr><td>%s (%s)</td><td>%d</td><td>%.2f (%.2f\u2013%.2f)</td>"
                         "<td>%s</td><td>%s</td><td>%s</td></tr>"
                         % (e(s_.display), s_.name, d.size, med, q1, q3,
                            "%.2f" % np.median(cc) if cc.size else "\u2013",
                            "%.1f (%.1f)" % (np.median(dd), dd.max()) if dd.size else "\u2013",
                            "%.0f" % np.median(ta) if ta.size else "\u2013"))
        parts.append("</table>")
    parts.append("<p style='color:#666;font-size:.85em'>Built in %.1f s.</p></body></html>" % (time.time() - t0))
    _write_text(out_dir / "cohort_report.json", json.dumps(summary, indent=2, allow_nan=False))
    out = out_dir / HTML_NAME
    _write_text(out, "\n".join(parts))
    return out
