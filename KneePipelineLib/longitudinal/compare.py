"""Compare run folders of the same knee: baseline and follow-up visits -> change per point and per region.

``compare_runs(baseline_dir, [followup_dir, ...], out_dir)`` reads each run folder's manifest, results.json
and bone meshes (which carry ``thickness_mm`` and ``region`` per vertex), registers each follow-up bone onto the
baseline bone (:mod:`.register`), maps its thickness onto the baseline vertices and summarises the change per
region and plate (:mod:`.change`). Outputs, written only when everything was computed (temporary names, then
renamed; ``longitudinal.json`` last, so its presence means a complete comparison):

* ``longitudinal.json`` — strict JSON: visits, registration per bone (residual, rotation, translation,
  matrix), per visit and region: baseline / follow-up means, ``change_mean_mm``, ``change_percent``, counts;
* ``longitudinal.csv`` — one row per follow-up visit and region;
* ``meshes/<bone>.vtp`` — the baseline bones carrying ``thickness_mm`` (baseline), per visit
  ``thickness_mm__<visit>`` and ``change_mm__<visit>``, and ``change_mm`` for the last visit;
* ``report/longitudinal.html`` with 2D change maps and a waterfall of regional change (non-fatal).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import labels as L
from ..errors import InputUnreadableError, InvalidInputError, OutputUnwritableError
from ..steps.results import jsonable  # strict JSON: NaN -> null, numpy -> Python
from .change import RegionChange, map_thickness, region_change, region_selections
from .register import Registration, register_surfaces

log = logging.getLogger("kneepipeline.longitudinal")
BONES = ("femur", "tibia", "patella")
SCHEMA = "kneepipeline-longitudinal/1"


@dataclass
class RunMeshes:
    run_dir: Path
    visit: str
    laterality: Optional[str]
    meshes: Dict[str, Any] = field(default_factory=dict)   # bone -> vtkPolyData with thickness_mm / region


@dataclass
class VisitComparison:
    visit: str
    run_dir: Path
    registration: Dict[str, Registration]
    regions: List[RegionChange]
    point_change: Dict[str, Dict[str, np.ndarray]]          # bone -> {"thickness_mm": ..., "change_mm": ...}


def _visit_name(run_dir: Path, used: Sequence[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(run_dir).resolve().name) or "visit"
    name, n = base, 2
    while name in used:
        name, n = "%s_%d" % (base, n), n + 1
    return name


def load_run_meshes(run_dir: Path, visit: str) -> RunMeshes:
    """The bone meshes of a complete run folder (from ``run`` or ``analyze``)."""
    from ..manifest import load_manifest
    from ..morphometry.mesh import read_mesh

    run_dir = Path(run_dir)
    try:
        manifest = load_manifest(str(run_dir))
    except FileNotFoundError:
        raise InputUnreadableError("%s is not a run folder (no manifest.json)." % run_dir,
                                   hint="Give folders written by `kneepipeline run` or `kneepipeline analyze`.")
    except (OSError, ValueError, TypeError) as exc:
        raise InputUnreadableError("The manifest of %s cannot be read (%s)." % (run_dir, exc))
    if manifest.status != "complete":
        raise InvalidInputError("The run in %s is not complete (status: %s)." % (run_dir, manifest.status),
                                hint="Compare only complete runs; rerun the failed one first.")
    side = None
    rj = run_dir / "results.json"
    if rj.is_file():
        try:
            side = ((json.loads(rj.read_text(encoding="utf-8")).get("laterality") or {}).get("side"))
        except ValueError as exc:
            raise InputUnreadableError("results.json of %s cannot be read (%s)." % (run_dir, exc))
    rm = RunMeshes(run_dir, visit, side)
    for bone in BONES:
        entries = [e for e in manifest.find(kind="mesh", structure=bone)]
        if not entries or not (run_dir / entries[0].path).is_file():
            continue
        poly = read_mesh(run_dir / entries[0].path)
        if poly is None or poly.GetNumberOfPoints() == 0 or poly.GetPointData().GetArray("thickness_mm") is None:
            continue
        rm.meshes[bone] = poly
    if not rm.meshes:
        raise InvalidInputError("%s holds no bone mesh with cartilage thickness." % run_dir,
                                hint="Run the morphometry step (`run` or `analyze`) on this knee first.")
    return rm


def _arrays(poly):
    from ..morphometry.mesh import get_point_array, polydata_arrays, vertex_areas, vertex_normals

    pts, tris = polydata_arrays(poly)
    th = np.asarray(get_point_array(poly, "thickness_mm"), float)
    reg = get_point_array(poly, "region")
    reg = np.zeros(len(pts), int) if reg is None else np.asarray(reg).astype(int)
    sub = get_point_array(poly, "subregion")     # Chondrometrics subregions, where the run has them
    sub = np.zeros(len(pts), int) if sub is None else np.asarray(sub).astype(int)
    return pts, tris, th, reg, sub, vertex_areas(pts, tris), vertex_normals(pts, tris)


def compare_visit(baseline: RunMeshes, followup: RunMeshes, max_distance_mm: float = 1.5,
                  warn: Callable[[str], None] = lambda m: None) -> VisitComparison:
    """Register every bone present at both visits and summarise the change per region and plate."""
    from ..morphometry.chondrometrics import SUBREGION_BY_CODE

    names = {r.code: r.name for r in L.REGIONS}
    sub_names = {c: s.name for c, s in SUBREGION_BY_CODE.items()}
    regs: Dict[str, Registration] = {}
    changes: List[RegionChange] = []
    per_point: Dict[str, Dict[str, np.ndarray]] = {}
    for bone in BONES:
        if bone not in baseline.meshes or bone not in followup.meshes:
            if bone in baseline.meshes or bone in followup.meshes:
                warn("The %s is present at only one of the visits %s and %s: not compared."
                     % (bone, baseline.visit, followup.visit))
            continue
        bp, _, bth, breg, bsub, barea, bnrm = _arrays(baseline.meshes[bone])
        fp, _, fth, _, _, _, _ = _arrays(followup.meshes[bone])
        reg = register_surfaces(fp, bp, bnrm)
        regs[bone] = reg
        if reg.median_distance_mm > 0.5:
            warn("The %s of %s registers onto the baseline with a median surface distance of %.2f mm: the bones "
                 "may differ (another knee, or a segmentation error)." % (bone, followup.visit, reg.median_distance_mm))
        mapped = map_thickness(bp, bth, reg.transform.apply(fp), fth, max_distance_mm=max_distance_mm)
        change = np.where(mapped.comparable, mapped.followup_thickness_mm - bth, np.nan)
        per_point[bone] = {"thickness_mm": mapped.followup_thickness_mm, "change_mm": change}
        selections = region_selections(breg, names, L.PLATES)
        selections += [(n, "subregion", c, m) for n, _, c, m in region_selections(bsub, sub_names, {})]
        for name, kind, code, sel in selections:
            changes.append(region_change(name, kind, code, bone, sel, bth, mapped.followup_thickness_mm,
                                         mapped.comparable, barea))
    if not regs:
        raise InvalidInputError("The baseline %s and the follow-up %s have no bone in common."
                                % (baseline.run_dir, followup.run_dir))
    return VisitComparison(followup.visit, followup.run_dir, regs, changes, per_point)


def to_document(baseline: RunMeshes, visits: List[VisitComparison], warnings: List[str]) -> Dict[str, Any]:
    from dataclasses import asdict

    from .. import __version__

    doc = {
        "schema": SCHEMA,
        "library_version": __version__,
        "units": {"thickness": "mm", "change": "mm", "change_percent": "% of baseline"},
        "baseline": {"visit": baseline.visit, "run_dir": str(baseline.run_dir), "laterality": baseline.laterality},
        "followups": [{"visit": v.visit, "run_dir": str(v.run_dir),
                       "registration": {b: r.to_json() for b, r in v.registration.items()},
                       "regions": [asdict(c) for c in v.regions]} for v in visits],
        "warnings": list(warnings),
    }
    return jsonable(doc)


def flatten_rows(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for v in doc["followups"]:
        for r in v["regions"]:
            rows.append({"baseline": doc["baseline"]["visit"], "visit": v["visit"], **r})
    return rows


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp-" + path.name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    import csv

    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def compare_runs(baseline_dir: Path, followup_dirs: Sequence[Path], out_dir: Path,
                 progress: Optional[Callable[[float, str], None]] = None, report: bool = True,
                 max_distance_mm: float = 1.5) -> Dict[str, Any]:
    """The whole longitudinal comparison; returns the ``longitudinal.json`` document."""
    from ..morphometry.mesh import set_point_array, write_mesh

    say = progress or (lambda f, m: None)
    if not followup_dirs:
        raise InvalidInputError("No follow-up run given.", hint="Pass --followup RUN_DIR (once per visit).")
    out_dir = Path(out_dir).resolve()
    all_dirs = [Path(baseline_dir).resolve()] + [Path(d).resolve() for d in followup_dirs]
    for d in all_dirs:
        if out_dir == d or d in out_dir.parents:
            raise OutputUnwritableError("The output folder %s is inside the run folder %s." % (out_dir, d),
                                        hint="Choose an output folder outside the compared run folders.")
    if len(set(all_dirs)) != len(all_dirs):
        raise InvalidInputError("The same run folder is given twice.", hint="Give each visit's run folder once.")
    used: List[str] = []
    say(0.02, "reading the baseline")
    for d in all_dirs:
        used.append(_visit_name(d, used))
    baseline = load_run_meshes(all_dirs[0], used[0])
    warnings: List[str] = []

    def warn(msg: str) -> None:
        log.warning(msg)
        if msg not in warnings:
            warnings.append(msg)

    visits: List[VisitComparison] = []
    for i, d in enumerate(all_dirs[1:], start=1):
        say(0.05 + 0.8 * (i - 1) / len(followup_dirs), "comparing %s with the baseline" % used[i])
        fu = load_run_meshes(d, used[i])
        if baseline.laterality and fu.laterality and baseline.laterality != fu.laterality:
            raise InvalidInputError("The baseline is a %s knee but the follow-up %s is a %s knee." % (
                baseline.laterality, d, fu.laterality),
                hint="Compare visits of the same knee (check the laterality in each run's results.json).")
        visits.append(compare_visit(baseline, fu, max_distance_mm=max_distance_mm, warn=warn))
    doc = to_document(baseline, visits, warnings)

    say(0.88, "writing")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "longitudinal.json").unlink(missing_ok=True)   # never a stale complete-looking result
        for bone, poly in baseline.meshes.items():
            out = poly.NewInstance()
            out.DeepCopy(poly)
            last = None
            for v in visits:
                if bone in v.point_change:
                    set_point_array(out, "thickness_mm__" + v.visit, v.point_change[bone]["thickness_mm"].astype(np.float32))
                    set_point_array(out, "change_mm__" + v.visit, v.point_change[bone]["change_mm"].astype(np.float32))
                    last = v.point_change[bone]["change_mm"]
            if last is not None:
                set_point_array(out, "change_mm", last.astype(np.float32))
            _write_atomic(out_dir / "meshes" / (bone + ".vtp"), lambda p, out=out: write_mesh(out, p, "vtp"))
        _write_atomic(out_dir / "longitudinal.csv", lambda p: _write_csv(p, flatten_rows(doc)))
        if report:
            say(0.92, "report")
            try:
                from .report import build_longitudinal_report

                build_longitudinal_report(out_dir, baseline, visits, doc)
            except Exception as exc:  # noqa: BLE001 - the report is non-fatal, like the per-knee report
                warn("The longitudinal report could not be built: %s" % exc)
                doc["warnings"] = list(warnings)
        _write_atomic(out_dir / "longitudinal.json",
                      lambda p: p.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8"))
    except OSError as exc:
        (out_dir / "longitudinal.json").unlink(missing_ok=True)
        raise OutputUnwritableError("Cannot write the comparison into %s (%s)." % (out_dir, exc.strerror or exc)) from exc
    say(1.0, "longitudinal comparison done")
    return doc
