"""One run end to end on the real sample: manifest, progress, outputs, resume, timeout, cancellation."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from KneePipelineLib.errors import EXIT_CODES, PipelineTimeoutError
from KneePipelineLib.options import RunOptions
from KneePipelineLib.pipeline import run
from KneePipelineLib.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_run(sample_analyze_run):
    """The session's one real `analyze` of the sample (conftest: the CLI in a subprocess, report on; shared
    with test_slicer_io): folder, manifest, the JSON-lines progress events."""
    from KneePipelineLib.manifest import load_manifest

    out = sample_analyze_run["dir"]
    return out, load_manifest(str(out)), sample_analyze_run["events"]


def test_every_step_runs_and_the_manifest_is_complete(sample_run):
    out, manifest, events = sample_run
    assert manifest.status == "complete"
    assert [s for s in manifest.steps] == ["input", "morphometry", "results", "report", "bundle"]
    assert all(s["status"] == "complete" and s["seconds"] >= 0 for s in manifest.steps.values())
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["status"] == "complete" and on_disk["options"]["label_convention"] == "pymskt"
    for o in manifest.outputs:
        assert (out / o.path).is_file(), o.path
        if o.kind in ("mesh", "labelmap"):
            assert o.coordinate_system == "LPS"
    meshes = {o.structure for o in manifest.find(kind="mesh")}
    assert {"femur", "tibia", "patella", "femoral_cartilage", "medial_tibial_cartilage",
            "lateral_tibial_cartilage", "patellar_cartilage"} <= meshes
    femur = manifest.find(kind="mesh", structure="femur")[0]
    assert "thickness_mm" in femur.scalars and "region" in femur.scalars
    assert not (out / ".work").exists()


def test_progress_is_monotonic_and_ends_with_a_result(sample_run):
    _, _, events = sample_run
    assert events[0]["event"] == "hello" and events[0]["protocol"] == 1
    fr = [e["fraction"] for e in events if e["event"] == "step"]
    assert fr == sorted(fr) and len(fr) > 6 and fr[-1] == 1.0
    # morphometry reports from inside the step, not only at its ends
    inner = [e for e in events if e["event"] == "step" and e["step"] == "morphometry" and 0 < e["step_fraction"] < 1]
    assert len(inner) >= 3
    assert events[-1]["event"] == "result"


def test_results_are_strict_json_with_plausible_regions(sample_run):
    out, _, _ = sample_run
    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["laterality"]["side"] == "right"
    regions = {r["name"]: r for r in doc["regions"] if r.get("kind", "region") == "region"}
    assert set(regions) >= {"femur_trochlea", "femur_medial_weightbearing", "femur_lateral_weightbearing",
                            "femur_medial_posterior", "femur_lateral_posterior", "tibia_medial", "tibia_lateral",
                            "patella"}
    for r in regions.values():
        assert 0.5 < r["thickness_mean_mm"] < 5.0, r
        assert 0 < r["coverage"] <= 1 and r["cartilage_volume_mm3"] > 0
    header, row = (out / "results.csv").read_text().splitlines()
    assert len(header.split(",")) == len(row.split(",")) and "femur_trochlea_thickness_mean_mm" in header


def test_bundle_has_relative_paths_only(sample_run):
    out, manifest, _ = sample_run
    with zipfile.ZipFile(out / "results_bundle.zip") as zf:
        names = zf.namelist()
    assert "manifest.json" in names and "results.json" in names
    assert all(not n.startswith("/") and ".." not in n for n in names)
    assert not any(str(out) in n for n in names)


def test_resume_skips_a_complete_run_with_the_same_options(sample_run, sample_labels_path):
    out, _, _ = sample_run
    before = (out / "manifest.json").stat().st_mtime_ns
    events = []
    opts = RunOptions(out_dir=str(out), labels=str(sample_labels_path), label_convention="pymskt", resume=True)
    t0 = time.time()
    run(opts, Progress(sink=events.append))
    assert time.time() - t0 < 2.0
    assert events[-1]["event"] == "result" and events[-1]["resumed"] is True
    assert (out / "manifest.json").stat().st_mtime_ns == before


def test_whole_run_timeout_leaves_a_failed_manifest_and_no_results(tmp_path, sample_labels_path):
    opts = RunOptions(out_dir=str(tmp_path), labels=str(sample_labels_path), label_convention="pymskt",
                      report=False, timeout_s=0.3)
    with pytest.raises(PipelineTimeoutError):
        run(opts)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["status"] == "failed" and m["error"]["category"] == "timeout"
    assert not (tmp_path / "results.json").exists()


def test_sigterm_to_the_process_group_cancels_cleanly(tmp_path, sample_labels_path):
    proc = subprocess.Popen([sys.executable, "-m", "KneePipelineLib", "analyze", "--labels", str(sample_labels_path),
                             "--label-convention", "pymskt", "--out", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            start_new_session=True)
    pgid = os.getpgid(proc.pid)
    lines = []
    for line in proc.stdout:  # wait until the morphometry step is under way
        lines.append(json.loads(line))
        if lines[-1].get("step") == "morphometry":
            break
    os.killpg(pgid, signal.SIGTERM)
    rest = proc.stdout.read()
    code = proc.wait(timeout=60)
    assert code == EXIT_CODES["cancelled"]
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["event"] == "error" and last["category"] == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["status"] == "cancelled" and m["steps"]["morphometry"]["status"] == "cancelled"
    assert not (tmp_path / "results.json").exists()


def test_inputs_are_never_modified(sample_run, sample_analyze_run, sample_labels_path):
    assert sample_analyze_run["input_sha256"] == hashlib.sha256(sample_labels_path.read_bytes()).hexdigest()


def test_t2_step_adds_regional_rows_a_map_and_surface_t2(tmp_path, coarse_knee_path, mese_dir):
    # plumbing only: the MESE series is a different knee, resampled onto the label map's grid (the real knee on
    # a 3 x 3 x 2 coarser grid, conftest: the T2 step, not the label map's size, is under test)
    opts = RunOptions(out_dir=str(tmp_path), labels=str(coarse_knee_path), label_convention="canonical",
                      echoes=[str(mese_dir)], report=False)
    m = run(opts)
    assert m.steps["t2"]["status"] == "complete"
    doc = json.loads((tmp_path / "results.json").read_text())
    layers = {(r["region"], r["layer"]) for r in doc["t2"]}
    assert ("femur_medial_weightbearing", "deep") in layers and ("tibia_lateral", "superficial") in layers
    assert doc["t2_method"]["params"]["resampled"]  # the T2 grid differed and was resampled, and we say how
    assert [o.path for o in m.find(kind="volume")] == ["t2_ms.nii.gz"]
    femur = m.find(kind="mesh", structure="femur")[0]
    assert "t2_ms" in femur.scalars
    from KneePipelineLib.morphometry import read_mesh
    from vtk.util.numpy_support import vtk_to_numpy

    t2 = vtk_to_numpy(read_mesh(str(tmp_path / femur.path)).GetPointData().GetArray("t2_ms"))
    assert np.isfinite(t2).mean() > 0.05 and 10 < np.nanmedian(t2) < 100


def test_a_step_time_limit_names_the_step(tmp_path, sample_labels_path):
    from KneePipelineLib.cli import build_parser
    from KneePipelineLib.commands._common import options_from_args

    args = build_parser().parse_args(["analyze", "--labels", str(sample_labels_path), "--label-convention", "pymskt",
                                      "--out", str(tmp_path), "--no-report", "--step-timeout", "morphometry=0.5"])
    opts = options_from_args(args)
    assert opts.step_timeouts_s == {"morphometry": 0.5}
    with pytest.raises(PipelineTimeoutError, match="morphometry step"):
        run(opts)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["steps"]["input"]["status"] == "complete" and m["steps"]["morphometry"]["status"] == "failed"


def test_two_echoes_run_the_qdess_estimator_and_record_it(tmp_path, coarse_knee_path, mese_dir):
    import shutil

    from KneePipelineLib.io import dicom

    groups = dicom.group_by_echo([str(f) for f in sorted(mese_dir.iterdir())])
    pair = tmp_path / "pair"
    pair.mkdir()
    for te in sorted(groups)[:2]:
        for f in groups[te]:
            shutil.copy(f, pair / Path(f).name)
    out = tmp_path / "out"
    opts = RunOptions(out_dir=str(out), labels=str(coarse_knee_path), label_convention="canonical",
                      echoes=[str(pair)], report=False, qdess_params={"t1_ms": 1200.0})
    run(opts)
    doc = json.loads((out / "results.json").read_text())
    method = doc["t2_method"]
    assert "qdess" in method["method"].lower()
    assert method["params"]["estimator"]  # which estimator ran (no GE gradient tags here: the fallback)
    assert method["stats_range_ms"] == [0.0, 80.0]   # the reference's window for regional T2, recorded
    assert doc["t2"]


# -- the late-failure contract, step by step (issue: results.json kept after a late step failed) ----------
# coarse_knee_path: conftest (the real knee on a 3 x 3 x 2 coarser grid, one per session)


def _analyze_opts(out, knee, **kw):
    kw.setdefault("report", False)
    return RunOptions(out_dir=str(out), labels=str(knee), label_convention="canonical", **kw)


def _echo_series(folder: Path) -> Path:
    """Four echoes (4D NIfTI) of a mono-exponential T2 = 40 ms on a small grid."""
    import SimpleITK as sitk

    tes = np.array([10.0, 20.0, 30.0, 40.0])
    arr = (1000 * np.exp(-tes / 40.0))[:, None, None, None] * np.ones((4, 10, 12, 14))
    im = sitk.GetImageFromArray(arr.astype(np.float32), isVector=False)
    p = folder / "echoes.nii.gz"
    sitk.WriteImage(im, str(p))
    return p


def _assert_failed_without_results(out: Path, step: str, category: str) -> None:
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["error"]["category"] == category, m["error"]
    assert m["steps"][step]["status"] == "failed", m["steps"]
    for name in ("results.json", "results.csv", "results_bundle.zip"):
        assert not (out / name).exists(), name
        assert name not in {o["path"] for o in m["outputs"]}
    assert not list(out.rglob(".tmp-*")) and not (out / ".work").exists()
    assert all((out / o["path"]).is_file() for o in m["outputs"])   # what it lists is there


LATE_FAILURES = [  # step, file whose write fails (a full disk at that moment), extra options
    ("morphometry", "*.vtp", {}),
    ("t2", "t2_ms.nii.gz", {"echo_times_ms": [10.0, 20.0, 30.0, 40.0]}),
    ("nsm", "nsm_bone_only_*", {"nsm": "bone_only", "nsm_iterations": 2, "nsm_samples": 500,
                                "nsm_mesh_resolution": 64}),
    ("results", "results.json", {}),    # results.csv is already written when results.json fails
    ("bundle", "results_bundle.zip", {}),
]


@pytest.mark.parametrize("step,pattern,extra", LATE_FAILURES, ids=[s for s, _, _ in LATE_FAILURES])
def test_a_step_failing_late_leaves_no_results(step, pattern, extra, tmp_path, coarse_knee_path):
    from KneePipelineLib.errors import OutputUnwritableError
    from KneePipelineLib.io.writers import simulated_write_failure

    if step == "t2":
        extra = dict(extra, echoes=[str(_echo_series(tmp_path))])
    if step == "nsm":   # our own small shape model (Testing/fixtures/nsm_small)
        extra = dict(extra, nsm_dir=str(Path(__file__).resolve().parent / "fixtures" / "nsm_small"))
    out = tmp_path / "out"
    with simulated_write_failure(pattern), pytest.raises(OutputUnwritableError):
        run(_analyze_opts(out, coarse_knee_path, **extra))
    _assert_failed_without_results(out, step, "output_unwritable")


def test_input_and_segmentation_failures_leave_no_results(tmp_path):
    import SimpleITK as sitk

    from KneePipelineLib.errors import InputUnreadableError, InsufficientMemoryError
    from KneePipelineLib.resources import simulated_available_memory

    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\0" * 40)
    with pytest.raises(InputUnreadableError):
        run(RunOptions(out_dir=str(tmp_path / "a"), labels=str(bad), report=False))
    _assert_failed_without_results(tmp_path / "a", "input", "input_unreadable")
    img = tmp_path / "img.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)), str(img))
    with simulated_available_memory(50_000_000), pytest.raises(InsufficientMemoryError):
        run(RunOptions(out_dir=str(tmp_path / "b"), image=str(img), report=False))
    _assert_failed_without_results(tmp_path / "b", "segmentation", "insufficient_memory")


def test_reruns_never_leave_stale_outputs(tmp_path, coarse_knee_path):
    from KneePipelineLib.manifest import OutputEntry, load_manifest

    out = tmp_path / "out"
    run(_analyze_opts(out, coarse_knee_path))
    # the earlier run also wrote a report (listed in its manifest; written here to keep the test fast)
    first = load_manifest(str(out))
    (out / "report").mkdir()
    (out / "report" / "report.html").write_text("<html>old</html>")
    first.add(OutputEntry(path="report/report.html", kind="report", step="report"))
    first.write(str(out))
    # a rerun with other options: the old report/ does not stay beside the new results
    second = run(_analyze_opts(out, coarse_knee_path, report=False, mesh_format="vtk"))
    assert not (out / "report").exists() and not list((out / "meshes").glob("*.vtp"))
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != ".kneepipeline.lock"} \
        == {o.path for o in second.outputs} | {"manifest.json"}
    # a failed rerun: no old meshes, report or results beside the failed manifest
    bad = tmp_path / "bad.nrrd"
    bad.write_bytes(b"NRRD0004\n")
    with pytest.raises(Exception):
        run(_analyze_opts(out, bad))
    assert sorted(p.name for p in out.iterdir()) == [".kneepipeline.lock", "manifest.json"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_keeps_its_success(tmp_path, coarse_knee_path):
    from KneePipelineLib.errors import BusyError
    from KneePipelineLib.io.writers import RunFolderLock

    out = tmp_path / "out"
    run(_analyze_opts(out, coarse_knee_path))
    def state():
        return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != ".kneepipeline.lock"}
    before = state()
    with RunFolderLock(out):          # another run is working in this folder
        with pytest.raises(BusyError):
            run(_analyze_opts(out, coarse_knee_path))
    assert state() == before
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_a_run_after_a_killed_one_says_so(tmp_path, coarse_knee_path):
    from KneePipelineLib.manifest import Manifest

    out = tmp_path / "out"
    out.mkdir()
    Manifest(created="2026-01-01T00:00:00", process={"pid": 999999999, "host": "elsewhere"}).write(str(out))
    (out / "results.json").write_text("{}")       # what a run killed between results and bundle leaves
    m = run(_analyze_opts(out, coarse_knee_path))
    assert m.status == "complete" and m.process["pid"] == os.getpid()
    assert any("ended without finishing" in w for w in m.warnings)
    assert json.loads((out / "results.json").read_text())["regions"]


def test_output_in_the_input_files_own_folder_is_refused(tmp_path, coarse_knee_path):
    import shutil

    from KneePipelineLib.errors import OutputUnwritableError

    knee = Path(shutil.copy(coarse_knee_path, tmp_path / "knee.nrrd"))
    with pytest.raises(OutputUnwritableError, match="folder of the input"):
        run(_analyze_opts(tmp_path, knee))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knee.nrrd"]


def test_another_programs_manifest_never_makes_us_delete_its_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "manifest.json").write_text(json.dumps({"outputs": [{"path": "notes.txt", "kind": "table"}]}))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"")
    with pytest.raises(Exception):
        run(RunOptions(out_dir=str(out), labels=str(bad), report=False))
    assert (out / "notes.txt").read_text() == "mine"
