"""Soak: runs into a few shared folders with faults (a bad input file or label map, a full disk at a random
output, a small machine, a step time limit, a SIGKILL), in this process (plus one subprocess SIGKILLed while
meshing) and in a Dask worker. Afterwards every folder is either complete and correct (the same numbers as a
clean run) or failed with a reason: none ``running``, none half-written (no temporary files, nothing beyond
what its manifest lists).

By default each test runs every fault class once, in a seeded random order, into fewer folders than runs (so
folders are reused across outcomes: complete -> failed -> complete ...): in this process a clean reference
run, 7 faulted runs, 1 killed and 1 take-over; in the worker 1 reference and 5 faulted runs (~15 s).
``KNEEPIPELINE_SOAK_RUNS=N`` makes it N faulted runs per test (every class still at least once, the rest
drawn at random); the long soak (the former 50 runs) is ``python tools/soak_long.py`` (docs/ROBUSTNESS.md)."""
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from KneePipelineLib.errors import KneePipelineError
from KneePipelineLib.io.writers import simulated_write_failure
from KneePipelineLib.manifest import effective_status, load_manifest
from KneePipelineLib.options import RunOptions
from KneePipelineLib.pipeline import run
from KneePipelineLib.resources import simulated_available_memory

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_PATTERNS = ["labels.nii.gz", "regions.nii.gz", "*.vtp", "femur.vtp", "results.csv", "results.json",
                   "results_bundle.zip"]
FAULTS = ["none", "bad_file", "disk_full", "disk_full", "small_machine", "bad_map", "step_timeout"]
WORKER_FAULTS = ["bad_file", "bad_map", "disk_full", "small_machine", "none"]
SOAK_RUNS = int(os.environ.get("KNEEPIPELINE_SOAK_RUNS", "0"))   # faulted runs per test; 0: one per fault class


def fault_plan(rng: random.Random, classes, runs: int):
    """Every fault class once in a random order, then random ones up to ``runs``."""
    plan = list(classes)
    rng.shuffle(plan)
    return plan + [rng.choice(classes) for _ in range(max(0, runs - len(plan)))]


@pytest.fixture(scope="module")
def knee(tmp_path_factory, coarse_knee_path):
    d = tmp_path_factory.mktemp("soak-inputs")
    good = coarse_knee_path            # conftest: the real knee on a 3 x 3 x 2 coarser grid
    bad = d / "cut-knee.nrrd"
    bad.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.9)])
    bad_map = d / "map.json"
    bad_map.write_text('{"7": "femur", "7": "tibia"}')
    return good, bad, bad_map


def one_run(out: Path, fault: str, rng: random.Random, knee) -> str:
    """One run with ``fault`` injected; returns the error category or 'complete'."""
    good, bad, bad_map = knee
    opts = dict(out_dir=str(out), labels=str(good), label_convention="canonical", report=False)
    ctx = simulated_write_failure("no-such-file")
    if fault == "bad_file":
        opts["labels"] = str(bad)
    elif fault == "bad_map":
        opts["label_convention"] = str(bad_map)
    elif fault == "disk_full":
        ctx = simulated_write_failure(rng.choice(OUTPUT_PATTERNS))
    elif fault == "small_machine":
        ctx = simulated_available_memory(200_000_000)
    elif fault == "step_timeout":
        opts["step_timeouts_s"] = {"morphometry": 0.05}
    try:
        with ctx:
            run(RunOptions(**opts))
        return "complete"
    except KneePipelineError as exc:
        return exc.category


def region_means(doc: dict) -> dict:
    """Every results row's mean thickness (None for rows without one, e.g. compartment rows)."""
    return {r["name"]: r.get("thickness_mean_mm") for r in doc["regions"]}


def check_folder(out: Path, reference: dict) -> str:
    """The folder is complete and correct, or failed with a reason; never running or half-written."""
    m = load_manifest(str(out))
    assert effective_status(str(out), m) in ("complete", "failed", "cancelled"), m.status
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not [f for f in files if "/.tmp-" in "/" + f] and not (out / ".work").exists(), files
    assert files - {"manifest.json", ".kneepipeline.lock"} == {o.path for o in m.outputs}, files
    if m.status == "complete":
        doc = json.loads((out / "results.json").read_text())
        assert region_means(doc) == reference
        assert doc["laterality"]["side"] == "right"
    else:
        assert m.error and m.error["category"] and m.error["message"]
        assert not {"results.json", "results.csv", "results_bundle.zip"} & files
    return m.status


@pytest.mark.slow
def test_soak_in_one_process_and_a_killed_run(tmp_path, knee):
    rng = random.Random(16)
    folders = [tmp_path / ("knee%d" % i) for i in range(3)]
    assert one_run(folders[0], "none", rng, knee) == "complete"
    reference = region_means(json.loads((folders[0] / "results.json").read_text()))
    outcomes = {}
    for n, fault in enumerate(fault_plan(rng, FAULTS, SOAK_RUNS)):
        got = one_run(folders[(n + 1) % len(folders)], fault, rng, knee)
        outcomes.setdefault(fault, set()).add(got)
    assert set(outcomes) == set(FAULTS)
    assert outcomes["none"] == {"complete"}
    assert outcomes["bad_file"] == {"input_unreadable"}
    assert "complete" not in outcomes["bad_map"] | outcomes["small_machine"] | outcomes["step_timeout"], outcomes
    # a SIGKILL in the middle of meshing: the folder says running; readers see it interrupted
    killed = folders[1]
    proc = subprocess.Popen([sys.executable, "-m", "KneePipelineLib", "analyze", "--labels", str(knee[0]),
                             "--label-convention", "canonical", "--no-report", "--out", str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    for line in proc.stdout:
        if json.loads(line).get("step") == "morphometry":
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert load_manifest(str(killed)).status == "running"
    assert effective_status(str(killed)) == "interrupted"
    # the next run in that folder takes over and says what happened
    assert one_run(killed, "none", rng, knee) == "complete"
    assert any("ended without finishing" in w for w in load_manifest(str(killed)).warnings)
    statuses = [check_folder(f, reference) for f in folders]
    assert "complete" in statuses


@pytest.mark.slow
def test_soak_in_a_dask_worker(tmp_path, knee):
    from dask.distributed import Client, LocalCluster

    rng = random.Random(20)
    folders = [tmp_path / ("knee%d" % i) for i in range(3)]
    faults = fault_plan(rng, WORKER_FAULTS, SOAK_RUNS)
    seeds = [rng.random() for _ in faults]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        ref_dir = tmp_path / "reference"   # a clean run in the worker first: what every complete folder must hold
        assert client.submit(one_run, ref_dir, "none", random.Random(0), knee, pure=False).result() == "complete"
        futures = [client.submit(one_run, folders[n % len(folders)], f, random.Random(s), knee, pure=False)
                   for n, (f, s) in enumerate(zip(faults, seeds))]
        results = client.gather(futures)
    assert all(r == "complete" for f, r in zip(faults, results) if f == "none")
    assert all(r != "complete" for f, r in zip(faults, results) if f in ("bad_file", "bad_map", "small_machine"))
    reference = region_means(json.loads((ref_dir / "results.json").read_text()))
    for f in folders + [ref_dir]:
        check_folder(f, reference)
