"""12 consecutive pipeline runs in ONE process on the real sample: resident memory per job.

Goal (issue #8): RSS growth from job 2 to job 12 <= 2 % (job 1 pays one-time imports and caches).
On a GPU machine the CUDA memory still allocated after each job is printed too.

    .venv/bin/python bench/bench_jobs_memory.py [--jobs 12] [--labels PATH] [--nsm-dir DIR]
"""
import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from KneePipelineLib.benchinfo import machine_info, write_result  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.pipeline import run  # noqa: E402
from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--labels")
    ap.add_argument("--nsm-dir", help="also fit this NSM (bone only) in every job")
    ap.add_argument("--report", action="store_true", help="also build the QC report in every job")
    a = ap.parse_args()
    labels = a.labels or str(ensure_sample_data() / SAMPLE_LABELS)
    proc = psutil.Process()
    rss, secs, gpu = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for j in range(a.jobs):
            opts = RunOptions(out_dir=str(Path(tmp) / ("job%02d" % j)), labels=labels, label_convention="pymskt",
                              report=a.report, nsm="bone_only" if a.nsm_dir else "none", nsm_dir=a.nsm_dir,
                              nsm_iterations=20)
            t0 = time.time()
            run(opts)
            secs.append(time.time() - t0)
            gc.collect()
            rss.append(proc.memory_info().rss / 2 ** 20)
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                gpu.append(torch.cuda.memory_allocated() / 2 ** 20)
            print("job %2d: %6.1f s  RSS %7.1f MB%s" % (j + 1, secs[-1], rss[-1],
                                                        "  GPU %.1f MB" % gpu[-1] if gpu else ""), flush=True)
    growth = 100.0 * (rss[-1] - rss[1]) / rss[1] if len(rss) > 1 else 0.0
    print("RSS growth job 2 -> job %d: %+.2f %% (goal <= 2 %%)" % (len(rss), growth))
    write_result("jobs_memory", {"jobs": a.jobs, "rss_mb": rss, "seconds": secs, "gpu_allocated_mb": gpu,
                                 "rss_growth_pct_job2_to_last": growth, "report": a.report,
                                 "nsm": bool(a.nsm_dir)})


if __name__ == "__main__":
    main()
