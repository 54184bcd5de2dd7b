"""The short human summary a command ends with at a terminal, and the ``--json`` object of a run folder.

Both read what the run wrote (results.json, manifest.json), so they say what a later reader will find.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional


def _load(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _num(value: Any, fmt: str = "%.2f") -> str:
    return "n/a" if value is None else fmt % value


def run_outcome(out_dir: str, progress: Any, command: str) -> Dict[str, Any]:
    """The ``--json`` object of a run/analyze/demo: the ``result`` event's fields, the file paths and the
    whole results.json under ``results``."""
    out = Path(out_dir).resolve()
    outcome = dict(progress.outcome or {"status": "complete", "out_dir": str(out)})
    outcome["command"] = command
    outcome["results_json"] = str(out / "results.json")
    outcome["results_csv"] = str(out / "results.csv")
    report = out / "report" / "report.html"
    outcome["report"] = str(report) if report.exists() else None
    outcome["results"] = _load(out / "results.json")
    return outcome


def run_summary(out_dir: str, command: str, all_regions: bool = False) -> str:
    """What a run computed, its headline numbers, where the files are and how many warnings it had."""
    out = Path(out_dir).resolve()
    res = _load(out / "results.json") or {}
    man = _load(out / "manifest.json") or {}
    seconds = sum(float(s.get("seconds") or 0.0) for s in (man.get("steps") or {}).values())
    lat = res.get("laterality") or {}
    lines: List[str] = ["", "kneepipeline %s: %s in %.1f s -- %s knee" % (
        command, man.get("status", "complete"), seconds, lat.get("side", "?"))]
    regions = res.get("regions") or []
    names = {r["name"] for r in regions if r.get("kind", "region") == "region"}
    # the plates (all regions with ``all_regions``); finer sub-regions stay in the tables
    rows = [r for r in regions if r.get("kind", "region") in (("region", "plate") if all_regions else ("plate",))]
    if rows:
        lines.append("Cartilage thickness, mean mm (coverage):")
        for r in rows:
            if all_regions and r.get("kind") == "plate" and r["name"] in names:
                continue
            label = r["name"] + (" (whole plate)" if all_regions and r.get("kind") == "plate" else "")
            cov = r.get("coverage")
            lines.append("  %-34s %6s  (%s)" % (label, _num(r.get("thickness_mean_mm")),
                                                "n/a" if cov is None else "%.0f%%" % (100 * cov)))
    t2 = [r for r in (res.get("t2") or []) if r.get("layer", "all") == "all"]
    if t2:
        lines.append("T2, mean ms: " + ", ".join("%s %s" % (r.get("region"), _num(r.get("t2_mean_ms"), "%.1f"))
                                                 for r in t2[:8]) + (" ..." if len(t2) > 8 else ""))
    for model_id, fit in sorted((res.get("nsm") or {}).items()):
        if isinstance(fit, dict):
            lines.append("Shape model %s: B-score %s, ASSD bone %s mm" % (
                model_id, _num(fit.get("bscore")), _num(fit.get("assd_bone_mm"))))
    warnings = res.get("warnings", man.get("warnings")) or []
    if warnings:
        lines.append("Warnings: %d (listed in results.json and manifest.json)" % len(warnings))
    lines.append("Results:  %s (table: results.csv)" % (out / "results.json"))
    report = out / "report" / "report.html"
    if report.exists():
        lines.append("Report:   %s" % report)
    return "\n".join(lines)


def files_summary(title: str, out_dir: str, files: List[str], warnings: int = 0,
                  extra: Optional[List[str]] = None) -> str:
    """A command that writes a handful of files: what, the headline lines, where."""
    lines = ["", title] + list(extra or [])
    if warnings:
        lines.append("Warnings: %d" % warnings)
    lines.append("Files in %s: %s" % (Path(out_dir).resolve(), ", ".join(files)))
    return "\n".join(lines)
