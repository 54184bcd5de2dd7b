"""Cohort throughput on a local Dask cluster (1 and 2 workers) and the scheduler's overhead per task.

    python bench/bench_batch.py [--knees 4] [--full] [--workers 1 2] [--tasks 400]

The cohort is copies of the shared sample label map (pymskt numbering): by default cropped around the
joint and halved in-plane (what the tests use; ~6 s per knee on one core), with --full the original
384x384x160 volume. Half of the copies are mirrored (left knees). Throughput counts the whole
`run_batch` (cluster start, knees, cohort tables) and also the steady state (first knee start to last
knee end). Overhead: many trivial tasks submitted at once (per-task cost) and one at a time (round trip).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data" / "pymskt" / \
    "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"


def build_cohort(folder: Path, n: int, full: bool) -> Path:
    import numpy as np
    import SimpleITK as sitk

    img = sitk.ReadImage(str(SAMPLE))
    if not full:
        img = img[40:316:2, 30:300:2, 25:160]
    sitk.WriteImage(img, str(folder / "right.nrrd"), True)
    d = np.array(img.GetDirection()).reshape(3, 3)
    lr = int(np.argmax(np.abs(d[0, :])))
    mirror = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(img), axis=2 - lr)))
    mirror.CopyInformation(img)
    sitk.WriteImage(mirror, str(folder / "left.nrrd"), True)
    rows = ["id,labels"] + ["knee%02d,%s" % (i, "right.nrrd" if i % 2 == 0 else "left.nrrd") for i in range(n)]
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    return folder / "cohort.csv"


def throughput(csv_path: Path, out: Path, workers: int) -> dict:
    from KneePipelineLib import batch as B
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.progress import Progress

    events = []
    jobs = B.read_cohort(csv_path, RunOptions(label_convention="pymskt", report=False), out)
    t0 = time.time()
    res = B.run_batch(jobs, out, B.ClusterSpec(workers=workers, dashboard=False), progress=Progress(sink=events.append),
                      report=False)
    wall = time.time() - t0
    starts = [e["time"] for e in events if e.get("event") == "knee" and e.get("status") == "started"]
    ends = [e["time"] for e in events if e.get("event") == "knee" and e.get("status") in ("complete", "failed")]
    steady = max(ends) - min(starts) if starts and ends else None
    n = len(jobs)
    ok = res.summary["counts_by_status"].get("complete", 0)
    fig = {"workers": workers, "knees": n, "complete": ok, "wall_s": round(wall, 2),
           "knees_per_hour": round(n / wall * 3600, 1),
           "steady_s": None if steady is None else round(steady, 2),
           "steady_knees_per_hour": None if not steady else round(n / steady * 3600, 1),
           "task_seconds_mean": res.summary["timings"]["task_seconds"]["mean"]}
    print("%d worker(s): %d knees (%d complete) in %.1f s -> %.0f knees/h (steady %.0f knees/h; %.1f s/knee/task)"
          % (workers, n, ok, wall, fig["knees_per_hour"], fig["steady_knees_per_hour"] or 0, fig["task_seconds_mean"]))
    return fig


def scheduler_overhead(n_tasks: int, serial: int = 50) -> dict:
    from distributed import Client, LocalCluster

    from KneePipelineLib.batch import ping

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster, \
            Client(cluster) as client:
        client.submit(ping, pure=False).result()     # warm-up
        t0 = time.perf_counter()
        futs = [client.submit(ping, pure=False) for _ in range(n_tasks)]
        client.gather(futs)
        batch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(serial):
            client.submit(ping, pure=False).result()
        serial_s = time.perf_counter() - t0
    fig = {"tasks": n_tasks, "per_task_ms_bulk": round(batch_s / n_tasks * 1000, 3),
           "round_trip_ms": round(serial_s / serial * 1000, 3)}
    print("scheduler overhead: %.2f ms per task in bulk (%d tasks), %.2f ms per round trip"
          % (fig["per_task_ms_bulk"], n_tasks, fig["round_trip_ms"]))
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--knees", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="full-resolution sample (slower)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tasks", type=int, default=400)
    a = ap.parse_args()
    from KneePipelineLib.benchinfo import write_result

    figures = {"cohort": {"knees": a.knees, "full_resolution": a.full}, "throughput": [],
               "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        (tmp / "cohort").mkdir()
        csv_path = build_cohort(tmp / "cohort", a.knees, a.full)
        for w in a.workers:
            figures["throughput"].append(throughput(csv_path, tmp / ("out-%d" % w), w))
    figures["scheduler_overhead"] = scheduler_overhead(a.tasks)
    figures["load_average_end"] = os.getloadavg()
    write_result("batch", figures)


if __name__ == "__main__":
    main()
