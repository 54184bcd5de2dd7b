"""Cohorts with visits: after the knees, one longitudinal comparison per knee, and the cohort's change table.

A cohort CSV with a ``visit`` column lists each knee once per visit (``id`` = the knee). The first visit of an id
in file order is its baseline; every later visit is compared with it by
:func:`KneePipelineLib.longitudinal.compare_runs` into ``DIR/longitudinal/<id>/`` (cheap: seconds per knee, so it
runs in the driver after the knees and is simply redone on every invocation). A knee whose visits are not all
complete is reported as not compared, with the reason; one knee's failure never stops the others.

Files:

* ``cohort_longitudinal.csv`` — one row per knee and follow-up visit: status, then per region, plate and
  subregion ``<name>_change_mean_mm``, ``<name>_change_percent`` and ``<name>_n_comparable``;
* ``cohort_longitudinal_summary.json`` — per region and visit: n knees, mean change (mm and %), SD of the
  change and the standardized response mean (SRM = mean change / SD of change), the field's measure of
  sensitivity to change;
* ``report/cohort_longitudinal.html`` — mean change with its SD and the SRM per region.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import classify
from ..manifest import atomic_write_text
from ..steps.results import jsonable
from .cohort import KneeJob, knee_dir

LONGITUDINAL_DIR = "longitudinal"
COHORT_LONGITUDINAL_CSV = "cohort_longitudinal.csv"
COHORT_LONGITUDINAL_SUMMARY = "cohort_longitudinal_summary.json"
MEASURES = ("change_mean_mm", "change_percent", "n_comparable")


def visits_by_knee(jobs: Sequence[KneeJob]) -> "OrderedDict[str, List[KneeJob]]":
    """Jobs with a visit, grouped by knee id in file order (the first visit is the baseline)."""
    out: "OrderedDict[str, List[KneeJob]]" = OrderedDict()
    for j in sorted((j for j in jobs if j.visit is not None), key=lambda j: j.line):
        out.setdefault(j.subject, []).append(j)
    return out


def _complete(job: KneeJob) -> Optional[str]:
    """None when the visit's run is complete, else why not."""
    from ..manifest import load_manifest

    try:
        m = load_manifest(job.options.out_dir)
    except (OSError, ValueError, TypeError):
        return "visit %s has no run" % job.visit
    return None if m.status == "complete" else "visit %s is %s" % (job.visit, m.status)


def compare_cohort(jobs: Sequence[KneeJob], out_dir: Path, report: bool = False) -> List[Dict[str, Any]]:
    """Compare every knee's follow-ups with its baseline; one row per knee and follow-up visit."""
    from ..longitudinal import compare_runs

    rows: List[Dict[str, Any]] = []
    for subject, visits in visits_by_knee(jobs).items():
        if len(visits) < 2:
            continue
        base, follow = visits[0], visits[1:]
        problems = [p for p in (_complete(v) for v in visits) if p]
        head = [{"id": subject, "baseline_visit": base.visit, "visit": v.visit} for v in follow]
        if problems:
            for r in head:
                rows.append(dict(r, status="not_compared", error_message="; ".join(problems)))
            continue
        try:
            doc = compare_runs(knee_dir(out_dir, base.knee_id), [knee_dir(out_dir, v.knee_id) for v in follow],
                               out_dir / LONGITUDINAL_DIR / subject, report=report)
        except Exception as exc:  # noqa: BLE001 - one knee's failure never stops the others
            err = classify(exc)
            for r in head:
                rows.append(dict(r, status="failed", error_category=err.category, error_message=err.message))
            continue
        for r, fu in zip(head, doc["followups"]):
            row = dict(r, status="complete")
            for reg in fu["regions"]:
                for m in MEASURES:
                    row["%s_%s" % (reg["name"], m)] = reg.get(m)
            row["registration_rms_mm"] = max((g["rms_mm"] for g in fu["registration"].values()), default=None)
            rows.append(row)
    return rows


def change_summary(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per visit and region: n, mean change (mm, %), SD of the change and the SRM (mean / SD)."""
    out: Dict[str, Any] = {}
    for visit in OrderedDict((r["visit"], None) for r in rows if r.get("status") == "complete"):
        done = [r for r in rows if r.get("status") == "complete" and r["visit"] == visit]
        names = OrderedDict((k[: -len("_change_mean_mm")], None) for r in done for k in r if k.endswith("_change_mean_mm"))
        per: Dict[str, Any] = {}
        for name in names:
            mm = [r.get(name + "_change_mean_mm") for r in done]
            mm = [float(v) for v in mm if isinstance(v, (int, float)) and math.isfinite(v)]
            pc = [r.get(name + "_change_percent") for r in done]
            pc = [float(v) for v in pc if isinstance(v, (int, float)) and math.isfinite(v)]
            n = len(mm)
            mean = sum(mm) / n if n else None
            sd = math.sqrt(sum((v - mean) ** 2 for v in mm) / (n - 1)) if n > 1 else None
            per[name] = {"n": n, "change_mean_mm": mean, "change_sd_mm": sd,
                         "change_mean_percent": sum(pc) / len(pc) if pc else None,
                         "srm": (mean / sd) if (sd and sd > 0) else None}
        out[visit] = per
    return out


def _csv_text(rows: List[Dict[str, Any]]) -> str:
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return buf.getvalue()


def _report(out_dir: Path, summary: Dict[str, Any]) -> Optional[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rep = out_dir / "report"
    rep.mkdir(parents=True, exist_ok=True)
    parts = ["<!doctype html><meta charset='utf-8'><title>KneePipeline cohort change</title>",
             "<h1>Cartilage change in the cohort</h1>",
             "<p>Per region: mean change from baseline &plusmn; SD over the knees, and the standardized response "
             "mean (SRM = mean change / SD of change).</p>"]
    for visit, per in summary.items():
        names = [n for n, v in per.items() if v["change_mean_mm"] is not None]
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(names) + 1.5), 3.6))
        means = [per[n]["change_mean_mm"] for n in names]
        sds = [per[n]["change_sd_mm"] or 0.0 for n in names]
        ax.bar(range(len(names)), means, yerr=sds, color=["#2166ac" if m < 0 else "#b2182b" for m in means],
               capsize=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([n.replace("_", " ") for n in names], rotation=60, ha="right", fontsize=6)
        ax.set_ylabel("mean change (mm)", fontsize=8)
        ax.set_title("Visit %s vs baseline" % visit, fontsize=9)
        fig.tight_layout()
        png = "cohort_change_%s.png" % visit
        fig.savefig(rep / png, dpi=90)
        plt.close(fig)
        rows = "".join("<tr><td>%s</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
            html.escape(n), per[n]["n"], _f(per[n]["change_mean_mm"]), _f(per[n]["change_sd_mm"]),
            _f(per[n]["change_mean_percent"], "%.2f"), _f(per[n]["srm"], "%.2f")) for n in per)
        parts += ["<h2>%s</h2>" % html.escape(visit), "<img src='%s'>" % png,
                  "<table border=1 cellspacing=0 cellpadding=3><tr><th>region</th><th>n</th><th>mean (mm)</th>"
                  "<th>SD (mm)</th><th>mean (%)</th><th>SRM</th></tr>" + rows + "</table>"]
    page = rep / "cohort_longitudinal.html"
    atomic_write_text(str(page), "\n".join(parts))
    return str(page)


def _f(v, fmt: str = "%.3f") -> str:
    return "&ndash;" if v is None else fmt % v


def merge_change_columns(cohort_rows: List[Dict[str, Any]], change_rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The cohort table's follow-up rows get their per-region change (``<name>_change_mean_mm`` and
    ``<name>_change_percent``); every row gets the same columns (empty where not a compared follow-up)."""
    if not change_rows:
        return cohort_rows
    by_key = {(r["id"], r["visit"]): r for r in change_rows if r.get("status") == "complete"}
    extra: List[str] = []
    for r in change_rows:
        extra += [k for k in r if k.endswith(("_change_mean_mm", "_change_percent")) and k not in extra]
    out = []
    for row in cohort_rows:
        ch = by_key.get((row.get("subject"), row.get("visit")), {})
        out.append(dict(row, **{k: ch.get(k) for k in extra}))
    return out


def write_cohort_longitudinal(jobs: Sequence[KneeJob], out_dir: Path, report: bool = True,
                              rows: Optional[List[Dict[str, Any]]] = None) -> Dict[str, str]:
    """Compare (unless ``rows`` were computed already), then write the table, the summary and (optionally)
    the report page; {} for a cohort without visits."""
    if not any(j.visit is not None for j in jobs):
        return {}
    rows = compare_cohort(jobs, out_dir) if rows is None else rows
    summary = change_summary(rows)
    paths = {}
    csv_path = out_dir / COHORT_LONGITUDINAL_CSV
    atomic_write_text(str(csv_path), _csv_text(rows))
    paths["cohort_longitudinal_csv"] = str(csv_path)
    sp = out_dir / COHORT_LONGITUDINAL_SUMMARY
    doc = {"schema": "kneepipeline-cohort-longitudinal/1", "knees_compared": sum(r["status"] == "complete" for r in rows),
           "not_compared": [r for r in rows if r["status"] != "complete"], "by_visit": summary}
    atomic_write_text(str(sp), json.dumps(jsonable(doc), indent=2, allow_nan=False))
    paths["cohort_longitudinal_summary"] = str(sp)
    if report and rows:
        try:
            page = _report(out_dir, summary)
            if page:
                paths["cohort_longitudinal_report"] = page
        except Exception:  # noqa: BLE001 - like the cohort report: never fails the batch
            pass
    return paths
