"""Step results: results.json (strict JSON) and the one-row results.csv; the JSON and flattening helpers."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from .. import __version__
from .context import RESULTS_CSV, RESULTS_JSON, RunContext


def step_results(ctx: RunContext) -> None:
    ctx.results["warnings"] = list(ctx.manifest.warnings)
    doc = {
        "schema": "kneepipeline-results/1",
        "library_version": __version__,
        "units": {"thickness": "mm", "area": "mm^2", "volume": "mm^3", "t2": "ms", "coverage": "fraction 0-1"},
        "chondrometrics_units": _chondrometrics_units(),
        **ctx.results,
    }
    doc = jsonable(doc)
    row = flatten_results(doc)
    ctx.output(RESULTS_CSV, "table", lambda p: write_csv(p, row), step="results",
               description="One-row results table")
    ctx.output(RESULTS_JSON, "json", lambda p: p.write_text(json.dumps(doc, indent=2, allow_nan=False)),
               step="results", description="All results (strict JSON)")
    ctx.progress.sub("results")(1.0, "results written")


def jsonable(obj: Any) -> Any:
    import math

    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if np is not None and isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _chondrometrics_units() -> Dict[str, str]:
    """Units of the Chondrometrics measures (tAB, ThCtAB.aMe, ...; docs/MEASURES.md)."""
    from ..morphometry.chondrometrics import UNITS

    return dict(UNITS)


def region_row(r: Any) -> Dict[str, Any]:
    """A RegionStats as a flat row; its Chondrometrics measures merged in under their standard names."""
    from dataclasses import asdict
    from .. import labels as L

    row = asdict(r)
    row.update(row.pop("measures", None) or {})
    reg = L.REGION_BY_NAME.get(row.get("name"))
    if reg is not None:
        row.setdefault("display", reg.display)
        row.setdefault("chondrometrics", reg.chondrometrics)
    return jsonable(row)


def flatten_results(doc: Dict[str, Any]) -> Dict[str, Any]:
    """One flat row: laterality, per-region measures as ``<region>_<measure>``, T2, NSM/B-score."""
    row: Dict[str, Any] = {}
    lat = doc.get("laterality") or {}
    row["laterality"] = lat.get("side")
    region_names = {r["name"] for r in doc.get("regions", []) if r.get("kind", "region") == "region"}
    for r in doc.get("regions", []):
        if r.get("kind") == "plate" and r["name"] in region_names:
            continue  # a plate that is a single region (tibia_medial, patella) is already there
        for k, v in r.items():
            if k in ("name", "code", "display", "chondrometrics", "color") or isinstance(v, (dict, list)):
                continue
            row["%s_%s" % (r["name"], k)] = v
    for r in doc.get("t2", []) or []:
        layer = r.get("layer", "all")
        prefix = r.get("region", "?") + ("" if layer == "all" else "_" + layer)
        for k in ("t2_mean_ms", "t2_std_ms", "t2_median_ms", "n_voxels"):
            if k in r:
                row["%s_%s" % (prefix, k)] = r[k]
    nsm = doc.get("nsm") or {}
    for model_id, fit in nsm.items() if isinstance(nsm, dict) else []:
        if isinstance(fit, dict):
            for k in ("bscore", "assd_bone_mm", "assd_cartilage_mm", "iterations"):
                if k in fit:
                    row["%s_%s" % (model_id, k)] = fit[k]
    return row


def write_csv(path: Path, row: Dict[str, Any]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(list(row))
        w.writerow(["" if v is None else v for v in row.values()])
