"""Benchmark: a mirrored (left) copy of the sample knee, per Chondrometrics row and measure.

    python bench/bench_mirror.py [--labels NRRD] [--triangles]

The sample label map (a right knee) and its physical mirror image (the array flipped along the axis nearest
LPS x, geometry kept: Testing/conftest.py ``mirror_volume``) both go through ``analyze_labels``; for every
subregion, region, plate and compartment row and every measure the relative difference |left - right| /
|right| is reported (the per-subregion table for the main measures, then the largest difference per measure).
``--triangles`` measures on the marching-cubes triangles themselves (each triangle its own polygon), as
before the cell-polygon fan (morphometry/cell_polygons.py), to show what the fan removes.

Prints the figures and writes bench/results/mirror[-triangles]-<date>.json (machine included).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.benchinfo import write_result  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "pymskt" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"
TABLE = ("tAB", "VC", "AC", "ThCtAB.aMe", "ThCcAB.aMe", "ThCAC.aMe", "ThCtAB.Max")


def mirror_volume(v):
    from KneePipelineLib.io import Volume

    axis_ijk = int(np.argmax(np.abs(v.direction[0])))
    return Volume(np.flip(v.array, axis=2 - axis_ijk).copy(), v.spacing_mm, v.origin_mm, v.direction)


def rows_of(result):
    from KneePipelineLib.morphometry.chondrometrics import compartment_rows
    from KneePipelineLib.steps.results import region_row

    rows = [region_row(s) for s in result.regions]
    return {r["name"]: r for r in rows + compartment_rows(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", default=str(SAMPLE))
    ap.add_argument("--triangles", action="store_true", help="measure on the marching-cubes triangles (no fan)")
    args = ap.parse_args()

    from KneePipelineLib.io import read_labels
    from KneePipelineLib.morphometry import analyze_labels
    from KneePipelineLib.morphometry import bone_interface as BI
    from KneePipelineLib.morphometry import chondrometrics as C
    from KneePipelineLib.morphometry.cell_polygons import fan_mesh

    if args.triangles:
        BI.fan_mesh = lambda points, triangles, points_index=None: fan_mesh(points, triangles, None)
    v = read_labels(args.labels)
    v = v.with_array(L.remap(v.array, L.CONVENTIONS["pymskt"]))
    cpu = {}
    res = {}
    for side, vol in (("right", v), ("left", mirror_volume(v))):
        t = time.process_time()
        res[side] = rows_of(analyze_labels(vol))
        cpu[side] = time.process_time() - t
    right, left = res["right"], res["left"]
    diff = {}
    for name, a in right.items():
        b = left.get(name, {})
        diff[name] = {k: (abs(b[k] - a[k]) / abs(a[k]) * 100.0 if b.get(k) is not None and a[k] else None)
                      for k in C.MEASURE_NAMES if isinstance(a.get(k), (int, float))}
    on = "triangles" if args.triangles else "cell-polygon fan"
    print("mirrored sample knee, %s: |left - right| / right in %%" % on)
    print("%-6s" % "" + "".join("%12s" % k for k in TABLE))
    subs = [s.name for s in C.SUBREGIONS] + ["MFTC", "LFTC"]
    for n in subs:
        print("%-6s" % n + "".join("%12s" % ("-" if diff[n].get(k) is None else "%.3f" % diff[n][k]) for k in TABLE))
    worst = {}
    for name, d in diff.items():
        for k, e in d.items():
            if e is not None and e > worst.get(k, (-1.0, ""))[0]:
                worst[k] = (e, name)
    print("largest difference per measure (all rows):")
    for k, (e, name) in sorted(worst.items(), key=lambda x: -x[1][0]):
        print("  %-12s %.4f %% (%s)" % (k, e, name))
    write_result("mirror" + ("-triangles" if args.triangles else ""), {
        "labels": args.labels, "on": on,
        "cpu_s": cpu, "max_percent": {k: {"percent": e, "row": n} for k, (e, n) in worst.items()},
        "percent": {n: diff[n] for n in subs}})


if __name__ == "__main__":
    main()
