"""bench/gpu_check.py is ready to run on a GPU machine: its --tiny mode runs every part on the CPU here.

Nothing is mocked: the parts run the real backends with small stand-ins (the tiny trained knee nnU-Net, the
small NSM fixture, a crop of the held-out synthetic knee), each in its own process, and write the one JSON
the GPU run writes. The CUDA-only part (a forced out-of-memory) must say it was skipped and why. ~20 s of
wall time on 2 idle cores (~35 CPU seconds; the parts run two at a time in --tiny mode).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from KneePipelineLib.segmentation.cpu_speed import use_cpu_bf16

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_on_cpu_writes_one_complete_json(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--threads", "1", "--results-dir", str(tmp_path)], cwd=str(ROOT), env=env,
                          capture_output=True, text=True, timeout=700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(tmp_path.glob("gpu_check-tiny-*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == "gpu_check-tiny" and doc["date"] and doc["machine"]["cores"]
    fig = doc["figures"]
    assert fig["tiny"] is True and fig["environment"]["requested_device"] == "cpu"
    assert fig["total_seconds"] > 0
    parts = fig["parts"]
    assert set(parts) == {"nnunet", "oom", "nsm", "jobs"}
    assert not [p for p, r in parts.items() if "failed" in r], parts

    nn = parts["nnunet"]
    precision = "bf16-autocast" if use_cpu_bf16() else "fp32"
    for run in ("cold", "warm", "fast"):
        r = nn[run]
        assert r["device"] == "cpu" and r["precision"] == precision
        assert isinstance(r["tiles"], int) and r["tiles"] >= 1 and r["seconds"] > 0
        # tiles_per_s is written to 2 decimals: on a slow (shared) CPU 1/19.6 s reads 0.05
        assert math.isclose(r["tiles_per_s"], r["tiles"] / r["seconds"], rel_tol=0.02, abs_tol=0.005)
    assert (nn["warm"]["step_size"], nn["fast"]["step_size"], nn["fast"]["profile"]) == (0.5, 1.0, "fast")

    assert "CUDA" in parts["oom"]["skipped"]

    nsm = parts["nsm"]
    assert nsm["steps"] == 10 and nsm["parameters"] > 0
    for prec in ("fp32", "bf16"):
        assert nsm[prec]["iterations_run"] == 10 and nsm[prec]["device"] == "cpu"
        assert 0 < nsm[prec]["assd_mm"]["bone"] < 5.0   # a real femur fitted by a real (small) model

    jobs = parts["jobs"]
    assert jobs["jobs"] == 1 and len(jobs["seconds"]) == 1 and jobs["seconds"][0] > 0
    assert jobs["flat"] is True and jobs["cuda_allocated_after_job_mb"] == [0.0]
    for p in ("nnunet", "nsm", "jobs"):
        assert parts[p]["cpu_seconds"] > 0 and parts[p]["wall_seconds"] > 0
