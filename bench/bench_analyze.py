"""Benchmark: ``kneepipeline analyze`` on the real sample label map, per stage, with peak memory.

    python bench/bench_analyze.py [--labels NRRD] [--repeats N] [--with-report]
                                  [--pymskt-python /tmp/pymsktenv/bin/python]

1. the whole ``analyze`` command in a subprocess (wall seconds, the manifest's step seconds, the
   child's peak RSS); the report step (another module's figures and renders) is left out unless
   ``--with-report``;
2. ``morphometry.analyze_labels`` in this process, ``--repeats`` times: per-stage seconds from
   ``MorphometryResult.timings_s`` (median) and this process's peak RSS;
3. optionally pymskt 0.1.22 on the same label map in its own interpreter (a separate venv: mskt,
   nibabel, pymeshfix==0.17.2 - never in .venv): bone meshes resampled to 20k/20k/10k points,
   cartilage thickness and region assignment, per bone.

Prints the figures and writes bench/results/analyze-<date>.json (machine included).
Goal on 2 CPU cores: the whole analyze <= 15 s.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.benchinfo import peak_rss_mb, write_result  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "pymskt" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"

PYMSKT_SCRIPT = r'''
import json, sys, time, resource
t_import = time.perf_counter()
from pymskt.mesh import BoneMesh
t_import = time.perf_counter() - t_import
path = sys.argv[1]
out = {"import_s": round(t_import, 2)}
# pymskt label numbering: 1 femoral cart, 2/3 medial/lateral tibial cart, 4 patellar cart, 5 femur, 6 tibia, 7 patella
for name, idx, carts, crop, pts in (("femur", 5, [1], 0.8, 20000), ("tibia", 6, [2, 3], 0.8, 20000),
                                    ("patella", 7, [4], None, 10000)):
    t0 = time.perf_counter()
    kw = dict(path_seg_image=path, label_idx=idx, list_cartilage_labels=carts, bone=name)
    if crop:
        kw["crop_percent"] = crop
    m = BoneMesh(**kw)
    m.create_mesh(smooth_image_var=0.5)
    t1 = time.perf_counter()
    m.resample_surface(clusters=pts)
    t2 = time.perf_counter()
    m.calc_cartilage_thickness(image_smooth_var_cart=0.3125)
    t3 = time.perf_counter()
    m.assign_cartilage_regions(image_smooth_var_cart=0.3125)
    t4 = time.perf_counter()
    out[name] = {"mesh_s": round(t1 - t0, 2), "resample_s": round(t2 - t1, 2), "thickness_s": round(t3 - t2, 2),
                 "regions_s": round(t4 - t3, 2), "total_s": round(t4 - t0, 2), "points": int(m.point_coords.shape[0])}
out["total_s"] = round(sum(v["total_s"] for k, v in out.items() if isinstance(v, dict)), 2)
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
print("PYMSKT_JSON " + json.dumps(out))
'''


def run_cli(labels: Path, with_report: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "KneePipelineLib", "analyze", "--labels", str(labels), "--label-convention",
               "pymskt", "--out", str(out)]
        if not with_report:
            cmd.append("--no-report")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit("analyze failed (%d): %s" % (proc.returncode, proc.stderr[-2000:]))
        man = json.loads((out / "manifest.json").read_text())
        sizes = {p.name: p.stat().st_size for p in sorted((out / "meshes").glob("*"))}
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"wall_s": round(wall, 2), "steps_s": {k: v.get("seconds") for k, v in man.get("steps", {}).items()},
            "peak_rss_mb": round(child_rss, 1), "mesh_file_bytes": sizes, "with_report": with_report}


def run_inprocess(labels: Path, repeats: int) -> dict:
    from KneePipelineLib.io import read_labels
    from KneePipelineLib.morphometry import analyze_labels

    t0 = time.perf_counter()
    v = read_labels(labels)
    lab = v.with_array(L.remap(v.array, L.CONVENTIONS["pymskt"]))
    t_read = time.perf_counter() - t0
    runs, totals = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = analyze_labels(lab)
        totals.append(time.perf_counter() - t0)
        runs.append(res.timings_s)
    keys = list(runs[0])
    stages = {k: round(float(np.median([r.get(k, 0.0) for r in runs])), 3) for k in keys}
    return {"read_s": round(t_read, 3), "analyze_labels_s_median": round(float(np.median(totals)), 3),
            "analyze_labels_s_all": [round(t, 3) for t in totals], "stages_s_median": stages,
            "points": {k: res.meshes[k].GetNumberOfPoints() for k in ("femur", "tibia", "patella")},
            "coverage": {s.name: round(s.coverage, 3) for s in res.regions if s.kind == "region"},
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def run_pymskt(python: str, labels: Path, timeout_s: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(PYMSKT_SCRIPT)
        script = f.name
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, script, str(labels)], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after %d s" % timeout_s}
    finally:
        Path(script).unlink()
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("PYMSKT_JSON "):
            d = json.loads(line[len("PYMSKT_JSON "):])
            d["wall_s"] = round(wall, 2)
            return d
    return {"error": "pymskt run failed (%d): %s" % (proc.returncode, (proc.stderr or proc.stdout)[-1500:])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", default=str(SAMPLE))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--with-report", action="store_true", help="include the report step in the CLI timing")
    ap.add_argument("--pymskt-python", default=None, help="interpreter of a venv with mskt 0.1.22 installed")
    ap.add_argument("--pymskt-timeout", type=int, default=900)
    args = ap.parse_args()
    labels = Path(args.labels)
    if not labels.is_file():
        print("label map not found: %s" % labels, file=sys.stderr)
        return 2
    figures = {"labels": labels.name}
    figures["cli"] = cli = run_cli(labels, args.with_report)
    print("analyze (CLI, %s report): %.2f s wall, peak RSS %.0f MB" % ("with" if args.with_report else "no",
                                                                          cli["wall_s"], cli["peak_rss_mb"]))
    for k, v in cli["steps_s"].items():
        print("  step %-12s %s s" % (k, v))
    print("  mesh files: %s" % ", ".join("%s %.0f kB" % (k, v / 1024) for k, v in cli["mesh_file_bytes"].items()))
    figures["morphometry"] = mo = run_inprocess(labels, args.repeats)
    print("analyze_labels: median %.2f s over %d (read %.2f s), peak RSS %.0f MB"
          % (mo["analyze_labels_s_median"], args.repeats, mo["read_s"], mo["peak_rss_mb"]))
    for k, v in mo["stages_s_median"].items():
        print("  %-30s %.3f s" % (k, v))
    if args.pymskt_python:
        figures["pymskt_0_1_22"] = pm = run_pymskt(args.pymskt_python, labels, args.pymskt_timeout)
        if "error" in pm:
            print("pymskt: " + pm["error"])
        else:
            print("pymskt 0.1.22 (meshes, resampling, thickness, regions): %.1f s (wall %.1f s incl. import), "
                  "peak RSS %.0f MB" % (pm["total_s"], pm["wall_s"], pm["peak_rss_mb"]))
            for b in ("femur", "tibia", "patella"):
                print("  %-8s %s" % (b, pm[b]))
    write_result("analyze", figures)        # prints where it wrote
    return 0


if __name__ == "__main__":
    sys.exit(main())
