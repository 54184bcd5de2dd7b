"""`kneepipeline batch` on a real local Dask cluster (2 worker processes, loopback only).

One cohort built from the real sample label map: right-knee copies (NRRD; DOSMA-renumbered NIfTI;
resampled to another grid; reoriented to other array axes; a per-row smoothing override), a mirrored
(left) copy, and two broken rows (an empty file; a label map read with the wrong convention). During the
run one worker is SIGKILLed while it processes a knee: the scheduler gives the knee to another worker.
"""
import json
import math
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
sitk = pytest.importorskip("SimpleITK")

from KneePipelineLib import batch as B  # noqa: E402
from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.cli import main as cli_main  # noqa: E402
from KneePipelineLib.manifest import load_manifest  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.pipeline import flatten_results, run  # noqa: E402
from KneePipelineLib.progress import Progress, parse_line  # noqa: E402

pytestmark = pytest.mark.slow

GOOD = ["r_nrrd", "r_dosma", "r_resampled", "r_reoriented", "r_smooth", "l_mirror"]
BAD = {"bad_empty": "input_unreadable", "bad_convention": "label_convention"}


def _base(sample: Path):
    """The sample cropped around the knee, every 3rd voxel in-plane and every 2nd slice (1.09 x 1.09 x 1.4 mm,
    92 x 90 x 68 voxels): a small but complete knee (pymskt labels), ~2 CPU-s a run (the batch machinery, not
    morphometry accuracy, is under test here)."""
    img = sitk.ReadImage(str(sample))
    return img[40:316:3, 30:300:3, 25:160:2]


def build_cohort(sample: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = _base(sample)
    sitk.WriteImage(base, str(folder / "r.nrrd"), True)
    # canonical (DOSMA) numbering, NIfTI
    table = L.CONVENTIONS["pymskt"]
    lut = np.zeros(16, dtype=np.uint8)
    for src, dst in table.items():
        lut[src] = dst
    lut[8] = 0   # the DOSMA numbering has no fibula
    dosma = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(base)])
    dosma.CopyInformation(base)
    sitk.WriteImage(dosma, str(folder / "r_dosma.nii.gz"), True)
    # another grid (nearest neighbour onto 1.2 mm voxels, same orientation)
    spacing = (1.2, 1.2, 1.2)
    size = [int(round(n * s / t)) for n, s, t in zip(base.GetSize(), base.GetSpacing(), spacing)]
    res = sitk.Resample(base, size, sitk.Transform(), sitk.sitkNearestNeighbor, base.GetOrigin(), spacing,
                        base.GetDirection(), 0, base.GetPixelID())
    sitk.WriteImage(res, str(folder / "r_resampled.nii.gz"), True)
    # the same anatomy stored along other array axes
    sitk.WriteImage(sitk.DICOMOrient(base, "RAS"), str(folder / "r_reoriented.nii.gz"), True)
    # a left knee: mirror the data along the array axis that runs left-right (physical geometry kept)
    # (numpy, not sitk.Flip: that one also flips the direction, which keeps the anatomy unchanged)
    d = np.array(base.GetDirection()).reshape(3, 3)
    lr_axis = int(np.argmax(np.abs(d[0, :])))                 # image axis (x, y, z) closest to LPS x
    arr = np.flip(sitk.GetArrayFromImage(base), axis=2 - lr_axis)
    mirror = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    mirror.CopyInformation(base)
    sitk.WriteImage(mirror, str(folder / "l_mirror.nrrd"), True)
    (folder / "empty.nii.gz").write_bytes(b"")
    rows = ["id,labels,label_convention,cartilage_smooth_var_mm2",
            "r_nrrd,r.nrrd,,", "r_dosma,r_dosma.nii.gz,dosma,", "r_resampled,r_resampled.nii.gz,,",
            "r_reoriented,r_reoriented.nii.gz,,", "r_smooth,r.nrrd,,0.5", "l_mirror,l_mirror.nrrd,,",
            "bad_empty,empty.nii.gz,,", "bad_convention,r.nrrd,dosma,"]
    csv_path = folder / "cohort.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


@pytest.fixture(scope="module")
def batch_run(sample_labels_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    csv_path = build_cohort(sample_labels_path, root / "cohort")
    out = root / "out"
    jobs = B.read_cohort(csv_path, RunOptions(label_convention="pymskt", report=False), out)
    events, killed, lock = [], {}, threading.Lock()

    def kill_first_good_knee(ev):
        # SIGKILL the worker process that starts the first good knee (once)
        if ev.get("event") == "knee" and ev.get("status") == "started" and ev.get("knee_id") in GOOD:
            with lock:
                if not killed:
                    killed.update(knee_id=ev["knee_id"], pid=ev["pid"])
                    os.kill(ev["pid"], signal.SIGKILL)

    spec = B.ClusterSpec(workers=2, threads_per_worker=1, dashboard=False)
    result = B.run_batch(jobs, out, spec, progress=Progress(sink=events.append), on_event=kill_first_good_knee,
                         cohort_csv=str(csv_path))
    return {"root": root, "csv": csv_path, "out": out, "jobs": jobs, "result": result, "events": events,
            "killed": killed}


def test_good_knees_complete_and_broken_ones_report_their_category(batch_run):
    res = batch_run["result"]
    rows = {r["id"]: r for r in res.rows}
    assert [r["id"] for r in res.rows] == GOOD + list(BAD)          # one row per knee, in CSV order
    for kid in GOOD:
        assert rows[kid]["status"] == "complete", rows[kid]
        assert load_manifest(str(batch_run["out"] / "knees" / kid)).status == "complete"
    for kid, category in BAD.items():
        assert rows[kid]["status"] == "failed" and rows[kid]["error_category"] == category
        m = load_manifest(str(batch_run["out"] / "knees" / kid))
        assert m.status == "failed" and m.error["category"] == category
        assert not (batch_run["out"] / "knees" / kid / "results.json").exists()
    assert rows["l_mirror"]["laterality"] == "left"
    assert {rows[k]["laterality"] for k in GOOD if k != "l_mirror"} == {"right"}
    assert not res.ok
    s = res.summary
    assert s["counts_by_status"] == {"complete": 6, "failed": 2}
    assert s["counts_by_error_category"] == {"input_unreadable": 1, "label_convention": 1}
    assert s["workers"]["count"] == 2 and s["scheduler"]["address"].startswith("tcp://127.0.0.1:")
    assert s["throughput_knees_per_hour"] > 0
    assert s["timings"]["pipeline_seconds"]["n"] == 6        # the broken ones stop before any step completes
    assert s["timings"]["task_seconds"]["n"] == 8
    # the cohort report (report package) is built at the end
    assert Path(res.paths["cohort_report"]).is_file()


def test_cohort_tables_hold_every_measure_of_every_knee(batch_run):
    import csv

    import pyarrow.parquet as pq

    out = batch_run["out"]
    with open(out / B.COHORT_CSV, newline="") as fh:
        table = list(csv.DictReader(fh))
    pqt = pq.read_table(out / B.COHORT_PARQUET).to_pylist()
    assert [r["id"] for r in table] == [r["id"] for r in pqt] == GOOD + list(BAD)
    for kid in GOOD:
        flat = flatten_results(json.loads((out / "knees" / kid / "results.json").read_text()))
        assert len(flat) > 20
        row_csv = next(r for r in table if r["id"] == kid)
        row_pq = next(r for r in pqt if r["id"] == kid)
        for k, v in flat.items():
            if isinstance(v, float):
                assert float(row_csv[k]) == v and row_pq[k] == v, k
            else:
                assert row_pq[k] == v or (v is None and row_pq[k] is None), k
        assert row_pq["library_version"] and row_pq["seconds"] > 0
    summary = json.loads((out / B.COHORT_SUMMARY).read_text())
    assert summary["knees"] == 8 and summary["cohort_csv_sha256"]


def test_a_killed_worker_s_knee_is_rerun_elsewhere_with_identical_results(batch_run, tmp_path):
    killed = batch_run["killed"]
    assert killed, "no knee started?"
    kid = killed["knee_id"]
    outcome = batch_run["result"].outcomes[kid]
    assert outcome["status"] == "complete" and outcome["pid"] != killed["pid"]
    starts = [e for e in batch_run["events"] if e.get("event") == "knee" and e.get("status") == "started"
              and e.get("knee_id") == kid]
    assert len(starts) >= 2
    # the retried knee equals a direct single-knee run of the same inputs and options
    job = next(j for j in batch_run["jobs"] if j.knee_id == kid)
    direct = RunOptions(**{**job.options.to_dict(), "out_dir": str(tmp_path / "direct")})
    run(direct)
    a = json.loads((tmp_path / "direct" / "results.json").read_text())
    b = json.loads((batch_run["out"] / "knees" / kid / "results.json").read_text())
    fa, fb = flatten_results(a), flatten_results(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], float):
            assert math.isclose(fa[k], fb[k], rel_tol=1e-9, abs_tol=1e-12), (k, fa[k], fb[k])
        else:
            assert fa[k] == fb[k], k


def test_progress_events_are_tagged_with_the_knee(batch_run):
    events = batch_run["events"]
    steps = [e for e in events if e.get("event") == "step"]
    assert {e["knee_id"] for e in steps} >= set(GOOD)
    assert {e["step"] for e in steps} >= {"input", "morphometry", "results"}
    finished = {e["knee_id"]: e["status"] for e in events if e.get("event") == "knee" and e["status"] != "started"}
    assert finished == {**{k: "complete" for k in GOOD}, **{k: "failed" for k in BAD}}
    cohort = [e for e in events if e.get("event") == "cohort"]
    assert cohort[-1]["done"] == 8 and cohort[-1]["failed"] == 2 and cohort[-1]["running"] == 0
    assert events[-1]["event"] == "result" and events[-1]["counts"] == {"complete": 6, "failed": 2}


def test_resume_does_no_work_for_complete_knees_and_retry_failed_reruns_only_failures(batch_run, capsys):
    out, knees = batch_run["out"], batch_run["out"] / "knees"
    mtimes = {k: (knees / k / "manifest.json").stat().st_mtime_ns for k in GOOD + list(BAD)}
    results_mtime = {k: (knees / k / "results.json").stat().st_mtime_ns for k in GOOD}
    # a new knee appears in the CSV: --retry-failed holds it
    csv_path = batch_run["csv"]
    csv2 = csv_path.with_name("cohort2.csv")
    csv2.write_text(csv_path.read_text() + "r_new,r.nrrd,,\n")
    capsys.readouterr()
    code = cli_main(["batch", str(csv2), "--out", str(out), "--label-convention", "pymskt", "--no-report",
                     "--workers", "1", "--no-dashboard", "--retry-failed"])
    cap = capsys.readouterr()
    assert code == 1                                     # failures remain
    events = [e for e in map(parse_line, cap.out.splitlines()) if e]
    knee_ev = {}
    for e in events:
        if e["event"] == "knee" and e["status"] != "started":
            knee_ev[e["knee_id"]] = e["status"]
    assert knee_ev == {**{k: "skipped" for k in GOOD}, "r_new": "held", **{k: "failed" for k in BAD}}
    for k in GOOD:
        assert (knees / k / "manifest.json").stat().st_mtime_ns == mtimes[k]
        assert (knees / k / "results.json").stat().st_mtime_ns == results_mtime[k]
    for k in BAD:
        assert (knees / k / "manifest.json").stat().st_mtime_ns != mtimes[k]
    assert not (knees / "r_new").exists()
    rows = {r["id"]: r for r in json_rows(out)}
    assert rows["r_new"]["status"] == "pending" and rows["r_new"]["action"] == "not_run"
    assert {rows[k]["action"] for k in GOOD} == {"skipped"} and {rows[k]["status"] for k in GOOD} == {"complete"}
    assert rows["bad_empty"]["action"] == "ran" and rows["bad_empty"]["error_category"] == "input_unreadable"
    assert "cohort: 2/2 done (2 failed)" in cap.err
    assert "[bad_empty] FAILED (input_unreadable)" in cap.err
    # nothing to do: no cluster is started at all
    good = [j for j in batch_run["jobs"] if j.knee_id in GOOD]
    again = B.run_batch(good, out, B.ClusterSpec(workers=2, dashboard=False), report=False)
    assert again.outcomes == {} and again.summary["scheduler"]["used"] is False
    assert again.ok and {r["action"] for r in again.rows} == {"skipped"}


def json_rows(out: Path):
    import pyarrow.parquet as pq

    return pq.read_table(out / B.COHORT_PARQUET).to_pylist()


def test_a_running_scheduler_address_and_its_gpu_resources(tmp_path, capsys):
    from distributed import LocalCluster

    (tmp_path / "empty.nii.gz").write_bytes(b"")
    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text("id,image\nmri1,empty.nii.gz\n")     # an MRI: segmentation would want a GPU
    out = tmp_path / "out"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}) as cluster:
        argv = ["--quiet-progress", "batch", str(csv_path), "--out", str(out), "--scheduler", cluster.scheduler_address,
                "--no-report"]
        # no worker offers a GPU: refused up front instead of waiting forever
        assert cli_main(argv + ["--gpus-per-worker", "1"]) == 41
        assert "offers a GPU resource" in capsys.readouterr().err
        assert not (out / "knees" / "mri1").exists()
        # without GPU limits the knee runs on the cluster's worker and fails with its own category
        assert cli_main(argv) == 1
        (row,) = json_rows(out)
        assert row["status"] == "failed" and row["error_category"] == "input_unreadable"
        summary = json.loads((out / B.COHORT_SUMMARY).read_text())
        assert summary["scheduler"]["kind"] == "address" and summary["scheduler"]["used"] is True
        assert summary["scheduler"]["started_by_batch"] is False
        assert summary["scheduler"]["address"] == cluster.scheduler_address and summary["workers"]["count"] == 1
