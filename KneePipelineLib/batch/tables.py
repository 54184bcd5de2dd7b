"""The cohort's tables: one row per knee (status, error, every measure), the summary (counts, timings,
throughput), the files (CSV, Parquet, JSON; each written atomically) and the cohort QC report.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO

from .. import __version__
from ..errors import classify
from ..manifest import MANIFEST_NAME, atomic_write_text, load_manifest, now_iso
from ..progress import Progress
from .cohort import CANCELLED, FAILED, INTERRUPTED, STALE, PlannedKnee

log = logging.getLogger("kneepipeline.batch")

COHORT_CSV = "cohort_results.csv"
COHORT_PARQUET = "cohort_results.parquet"
COHORT_SUMMARY = "cohort_summary.json"
SUMMARY_SCHEMA = "kneepipeline-cohort-summary/1"

FIRST_COLUMNS = ["id", "status", "action", "error_category", "error_message", "error_hint"]
LAST_COLUMNS = ["library_version", "seconds", "task_seconds", "attempts", "worker", "out_dir"]


def _knee_row(plan: PlannedKnee, outcome: Optional[Dict[str, Any]], starts: int) -> Dict[str, Any]:
    from ..pipeline import RESULTS_JSON, flatten_results

    job = plan.job
    out = Path(job.options.out_dir)
    if plan.action == "run":   # planned; "not_run" when the batch stopped before the knee started
        action = "ran" if (outcome is not None or starts) else "not_run"
    else:
        action = "skipped" if plan.action == "skip" else "not_run"
    row: Dict[str, Any] = {"id": job.knee_id, "status": "pending", "action": action, "error_category": None,
                           "error_message": None, "error_hint": None}
    if job.visit is not None:      # a cohort with visits: the knee and the visit, beside the unique key
        row.update(subject=job.subject, visit=job.visit)
    manifest = None
    if (out / MANIFEST_NAME).is_file():
        with contextlib.suppress(OSError, ValueError, TypeError):
            manifest = load_manifest(str(out))
    if manifest is not None:
        row["status"] = manifest.status if manifest.status in ("complete", FAILED, CANCELLED) else INTERRUPTED
        if plan.action == "hold" and plan.state == STALE:
            row["status"] = STALE
        if manifest.error:
            row.update(error_category=manifest.error.get("category"), error_message=manifest.error.get("message"),
                       error_hint=manifest.error.get("hint"))
    if outcome is not None and outcome.get("status") != "complete":
        row.update(status=outcome.get("status", FAILED), error_category=outcome.get("category"),
                   error_message=outcome.get("message"), error_hint=outcome.get("hint"))
    measures: Dict[str, Any] = {}
    if row["status"] == "complete":
        try:
            doc = json.loads((out / RESULTS_JSON).read_text(encoding="utf-8"))
            measures = flatten_results(doc)
        except (OSError, ValueError) as exc:
            row.update(status=FAILED, error_category="internal",
                       error_message="results.json of a complete run is unreadable (%s)" % exc)
    row.update(measures)
    row["library_version"] = manifest.library_version if manifest is not None else None
    if manifest is not None:
        secs = [s.get("seconds") for s in manifest.steps.values() if isinstance(s.get("seconds"), (int, float))]
        row["seconds"] = round(sum(secs), 3) if secs else None
    else:
        row["seconds"] = None
    row["task_seconds"] = outcome.get("seconds") if outcome else None
    row["attempts"] = starts if outcome is not None else None
    row["worker"] = outcome.get("worker") if outcome else None
    row["out_dir"] = str(out)
    return row


def cohort_rows(plans: Sequence[PlannedKnee], outcomes: Dict[str, Dict[str, Any]],
                starts: Optional[Dict[str, int]] = None) -> List[Dict[str, Any]]:
    starts = starts or {}
    rows = [_knee_row(p, outcomes.get(p.job.knee_id), starts.get(p.job.knee_id, 0)) for p in plans]
    columns = list(FIRST_COLUMNS)
    for r in rows:
        for k in r:
            if k not in columns and k not in LAST_COLUMNS:
                columns.append(k)
    columns += LAST_COLUMNS
    return [{c: r.get(c) for c in columns} for r in rows]


def _stats(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p90": None, "min": None, "max": None, "total": None}
    v = sorted(values)

    def q(f: float) -> float:
        pos = f * (len(v) - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return {"n": len(v), "mean": round(sum(v) / len(v), 3), "median": round(q(0.5), 3), "p90": round(q(0.9), 3),
            "min": round(v[0], 3), "max": round(v[-1], 3), "total": round(sum(v), 3)}


def cohort_summary(rows, plans, outcomes, wall_s, started_iso, cluster_info, spec, retry_failed, cohort_csv,
                   jobs) -> Dict[str, Any]:
    def counts(key: str) -> Dict[str, int]:
        c: Dict[str, int] = {}
        for r in rows:
            if r.get(key) is not None:
                c[r[key]] = c.get(r[key], 0) + 1
        return dict(sorted(c.items()))

    ran = len(outcomes)
    csv_sha = None
    if cohort_csv and os.path.isfile(cohort_csv):
        csv_sha = hashlib.sha256(Path(cohort_csv).read_bytes()).hexdigest()
    base = jobs[0].options.computation_key() if jobs else {}
    shared = {k: v for k, v in base.items()
              if all(j.options.computation_key().get(k) == v for j in jobs)
              and k not in ("image", "labels", "echoes")}
    return {
        "schema": SUMMARY_SCHEMA,
        "library_version": __version__,
        "cohort_csv": str(Path(cohort_csv).resolve()) if cohort_csv else None,
        "cohort_csv_sha256": csv_sha,
        "started": started_iso,
        "finished": now_iso(),
        "wall_seconds": round(wall_s, 3),
        "knees": len(rows),
        "counts_by_status": counts("status"),
        "counts_by_action": counts("action"),
        "counts_by_error_category": counts("error_category"),
        "knees_run": ran,
        "retry_failed": retry_failed,
        "timings": {
            "pipeline_seconds": _stats([r["seconds"] for r in rows if r["action"] == "ran" and r["seconds"] is not None]),
            "task_seconds": _stats([o["seconds"] for o in outcomes.values() if o.get("seconds") is not None]),
        },
        "throughput_knees_per_hour": round(ran / wall_s * 3600.0, 2) if ran and wall_s > 0 else None,
        "scheduler": {"kind": cluster_info.get("kind"), "address": cluster_info.get("address"),
                      "dashboard": cluster_info.get("dashboard"), "used": cluster_info.get("used"),
                      "started_by_batch": cluster_info.get("started")},
        "workers": {"count": cluster_info.get("workers"), "threads_per_worker": spec.threads_per_worker,
                    "gpus_per_worker": spec.gpus_per_worker, "tasks_per_gpu": spec.tasks_per_gpu},
        "options": shared,
    }


def _column_array(values: List[Any]):
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def write_cohort_tables(out: Path, rows: List[Dict[str, Any]], summary: Dict[str, Any]) -> Dict[str, str]:
    """cohort_results.csv, cohort_results.parquet and cohort_summary.json, each written atomically."""
    import io

    columns = list(rows[0]) if rows else list(FIRST_COLUMNS + LAST_COLUMNS)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    csv_path = out / COHORT_CSV
    atomic_write_text(str(csv_path), buf.getvalue())

    paths = {"cohort_csv": str(csv_path)}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: _column_array([r.get(c) for r in rows]) for c in columns})
        from ..io.writers import atomic_write

        pq_path = atomic_write(out / COHORT_PARQUET, lambda tmp: pq.write_table(table, str(tmp)),
                               expected_bytes=int(table.nbytes))
        paths["cohort_parquet"] = str(pq_path)
    except ImportError:
        log.warning("pyarrow is not installed: no Parquet cohort table")
    summary_path = out / COHORT_SUMMARY
    atomic_write_text(str(summary_path), json.dumps(summary, indent=2, allow_nan=False, default=str))
    paths["cohort_summary"] = str(summary_path)
    return paths


def _cohort_report(out: Path, paths: Dict[str, str], progress: Optional[Progress],
                   status_stream: Optional[TextIO]) -> Dict[str, str]:
    """The cohort report, when the report package offers one; its failure never fails the batch."""
    try:
        from ..report import build_cohort_report  # type: ignore[attr-defined]
    except ImportError:
        return {}
    try:
        res = build_cohort_report(paths["cohort_csv"], str(out))
        return {"cohort_report": str(res)} if res else {}
    except Exception as exc:  # noqa: BLE001 - non-fatal
        msg = "The cohort report failed: %s" % classify(exc).message
        if progress is not None:
            progress.warning(msg)
        elif status_stream is not None:
            status_stream.write("WARNING: " + msg + "\n")
        return {}
