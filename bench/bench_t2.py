"""Benchmark: MESE T2 fit of the real GE 3 T series (8 echoes x 24 x 256 x 256), log-linear and refined.

    python bench/bench_t2.py [--mese DIR] [--repeats N]

Prints the figures and writes bench/results/t2-<date>.json (machine included).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from KneePipelineLib import t2 as T2  # noqa: E402
from KneePipelineLib.benchinfo import peak_rss_mb, write_result  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mese", default=str(ROOT.parent / "shared" / "data" / "pymskt" / "MESE_T2_dicom_anon"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    t0 = time.perf_counter()
    me = T2.load_echoes([args.mese])
    t_load = time.perf_counter() - t0
    figures = {"series": "GE 3 T MESE, %d echoes, grid %s" % (me.n_echo, "x".join(map(str, me.geometry.shape_ijk))),
               "load_s": round(t_load, 3)}
    print("load: %.2f s (%s)" % (t_load, figures["series"]))
    for name, refine in (("loglinear", False), ("refined", True)):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            maps = T2.fit_mese(me, refine=refine)
            times.append(time.perf_counter() - t0)
        vox = maps.params["n_fitted"]
        t2 = maps.t2_ms.array[6:18, 64:192, 64:192]
        roi = np.isfinite(t2) & (maps.r2.array[6:18, 64:192, 64:192] >= 0.95)
        figures[name] = {"fit_s_min": round(min(times), 3), "fit_s_median": round(float(np.median(times)), 3),
                         "voxels_fitted": vox, "voxels_valid": maps.params["n_valid"],
                         "voxels_per_s": round(vox / min(times)), "noise_sigma": maps.params["noise_sigma"],
                         "central_roi_median_t2_ms": round(float(np.median(t2[roi])), 2)}
        print("%-9s fit: min %.2f s, median %.2f s over %d runs; %d voxels fitted, %d valid; central ROI median "
              "T2 %.1f ms" % (name, min(times), np.median(times), args.repeats, vox, maps.params["n_valid"],
                              figures[name]["central_roi_median_t2_ms"]))
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    write_result("t2", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
