"""Cohort CSV reading, resume planning and the cluster settings of `kneepipeline batch` (fast, no cluster)."""
import json
from pathlib import Path

import pytest

from KneePipelineLib import batch as B
from KneePipelineLib.cli import main as cli_main
from KneePipelineLib.errors import ConfigurationError
from KneePipelineLib.manifest import Manifest
from KneePipelineLib.options import RunOptions


def write_csv(folder: Path, text: str) -> Path:
    p = folder / "cohort.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_rows_become_run_options_with_paths_from_the_csv_folder(tmp_path):
    csv_path = write_csv(tmp_path, "\ufeffid,labels,label_convention,echoes,Echo-Times-ms,nsm,tta\n"
                                   "a1,lab/a.nrrd,pymskt,e/1.nii;e/2.nii,10;20,,yes\n"
                                   "b2,/abs/b.nii.gz,,,,bone_only,\n")
    base = RunOptions(label_convention="dosma", report=False, bone_smooth_var_mm2=0.7)
    jobs = B.read_cohort(csv_path, base, tmp_path / "out")
    assert [j.knee_id for j in jobs] == ["a1", "b2"]
    a, b = jobs[0].options, jobs[1].options
    assert a.labels == str(tmp_path / "lab" / "a.nrrd")
    assert a.echoes == [str(tmp_path / "e" / "1.nii"), str(tmp_path / "e" / "2.nii")]
    assert a.echo_times_ms == [10.0, 20.0] and a.tta is True and a.label_convention == "pymskt"
    assert a.out_dir == str((tmp_path / "out" / "knees" / "a1").resolve())
    # empty cells keep the command line's values
    assert b.labels == "/abs/b.nii.gz" and b.label_convention == "dosma" and b.nsm == "bone_only"
    assert b.tta is False and b.bone_smooth_var_mm2 == 0.7 and b.report is False and b.resume is False


def test_unknown_columns_are_listed(tmp_path):
    csv_path = write_csv(tmp_path, "id,labels,smoothing,out_dir\nk,a.nii,1,x\n")
    with pytest.raises(ConfigurationError) as ei:
        B.read_cohort(csv_path, RunOptions(), tmp_path / "out")
    assert "'smoothing'" in ei.value.message and "'out_dir'" in ei.value.message
    assert "bone_smooth_var_mm2" in ei.value.hint


@pytest.mark.parametrize("rows, needle", [
    ("k1,a.nii\nk1,b.nii\n", "repeats line 2"),
    ("K1,a.nii\nk1,b.nii\n", "repeats line 2"),            # case-insensitive file systems
    ("../evil,a.nii\n", "not a safe folder name"),
    ("a b,a.nii\n", "not a safe folder name"),
    (",a.nii\n", "not a safe folder name"),
    ("k1,\n", "No input given"),
])
def test_bad_rows_are_reported_before_anything_runs(tmp_path, rows, needle):
    csv_path = write_csv(tmp_path, "id,labels\n" + rows)
    with pytest.raises(ConfigurationError) as ei:
        B.read_cohort(csv_path, RunOptions(), tmp_path / "out")
    assert needle in ei.value.message
    assert not (tmp_path / "out").exists()


def test_bad_values_and_missing_id_column(tmp_path):
    csv_path = write_csv(tmp_path, "id,labels,tta,nsm_iterations,nsm\nk1,a.nii,maybe,1,\nk2,a.nii,,ten,\n"
                                   "k3,a.nii,,,banana\n")
    with pytest.raises(ConfigurationError) as ei:
        B.read_cohort(csv_path, RunOptions(), tmp_path / "out")
    msg = ei.value.message
    assert "3 problem(s)" in msg and "line 2: tta" in msg and "line 3: nsm_iterations" in msg and "line 4 (k3)" in msg
    with pytest.raises(ConfigurationError, match="no 'id' column"):
        B.read_cohort(write_csv(tmp_path, "knee,labels\nk,a.nii\n"), RunOptions(), tmp_path / "out")
    with pytest.raises(ConfigurationError, match="does not exist"):
        B.read_cohort(tmp_path / "nope.csv", RunOptions(), tmp_path / "out")


def _fake_run(job, status, options=None, outputs_exist=True):
    """A run folder as pipeline.run leaves it (manifest only: planning reads nothing else)."""
    out = Path(job.options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = Manifest(status=status, library_version="0.1.0", options=(options or job.options).to_dict())
    m.write(str(out))


def test_plan_skips_complete_matching_runs_and_retry_failed_runs_only_failures(tmp_path):
    csv_path = write_csv(tmp_path, "id,labels\n" + "".join("k%d,a.nii\n" % i for i in range(6)))
    jobs = B.read_cohort(csv_path, RunOptions(), tmp_path / "out")
    _fake_run(jobs[0], "complete")
    _fake_run(jobs[1], "failed")
    _fake_run(jobs[2], "cancelled")
    _fake_run(jobs[3], "running")              # a batch killed mid-knee
    changed = RunOptions(**{**jobs[4].options.to_dict(), "cartilage_smooth_var_mm2": 0.9})
    _fake_run(jobs[4], "complete", options=changed)
    # jobs[5]: never run
    default = {p.job.knee_id: (p.state, p.action) for p in B.plan_cohort(jobs)}
    assert default == {"k0": ("complete", "skip"), "k1": ("failed", "run"), "k2": ("cancelled", "run"),
                       "k3": ("interrupted", "run"), "k4": ("stale", "run"), "k5": ("missing", "run")}
    retry = {p.job.knee_id: p.action for p in B.plan_cohort(jobs, retry_failed=True)}
    assert retry == {"k0": "skip", "k1": "run", "k2": "run", "k3": "run", "k4": "hold", "k5": "hold"}


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    csv_path = write_csv(tmp_path, "id,labels\nk0,a.nii\nk1,b.nii\n")
    out = tmp_path / "out"
    jobs = B.read_cohort(csv_path, RunOptions(), out)
    _fake_run(jobs[0], "failed")
    assert cli_main(["batch", str(csv_path), "--out", str(out), "--dry-run", "--retry-failed"]) == 0
    err = capsys.readouterr().err
    assert "run      failed       k0" in err and "hold     missing      k1" in err
    assert not (out / B.COHORT_CSV).exists()


def test_gpu_knees_are_those_running_a_model():
    assert B.needs_gpu(RunOptions(image="x.nii"))
    assert not B.needs_gpu(RunOptions(image="x.nii", device="cpu"))
    assert not B.needs_gpu(RunOptions(labels="x.nii"))
    assert B.needs_gpu(RunOptions(labels="x.nii", nsm="bone_only"))


def test_jobqueue_settings_and_missing_package():
    spec = B.ClusterSpec(scheduler="slurm", threads_per_worker=2, gpus_per_worker=1, tasks_per_gpu=2,
                         queue="gpu", walltime="02:00:00", job_extra=["--constraint=a100"])
    kw = B.jobqueue_kwargs(spec)
    assert kw["cores"] == 2 and kw["processes"] == 1 and kw["memory"] == "16GB" and kw["queue"] == "gpu"
    assert kw["worker_extra_args"] == ["--resources", "GPU=2"]
    assert kw["job_extra_directives"] == ["--constraint=a100", "--gres=gpu:1"]
    try:
        import dask_jobqueue  # noqa: F401
        pytest.skip("dask-jobqueue is installed")
    except ImportError:
        pass
    with pytest.raises(ConfigurationError) as ei:
        with B.open_client(B.ClusterSpec(scheduler="pbs")):
            pass
    assert "dask-jobqueue" in ei.value.message and "pip install dask-jobqueue" in ei.value.hint


def test_unreachable_scheduler_address_is_a_configuration_error():
    pytest.importorskip("distributed")
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConfigurationError, match="Cannot connect"):
        with B.open_client(B.ClusterSpec(scheduler="tcp://127.0.0.1:%d" % port, connect_timeout_s=1)):
            pass


def test_cohort_table_types_and_atomic_files(tmp_path):
    rows = [{"id": "a", "status": "complete", "femur_thickness_mean_mm": 2.0, "n": 3, "flag": True, "note": None},
            {"id": "b", "status": "failed", "femur_thickness_mean_mm": None, "n": 4.5, "flag": None, "note": "x"}]
    paths = B.write_cohort_tables(tmp_path, rows, {"schema": B.SUMMARY_SCHEMA})
    import pyarrow.parquet as pq

    t = pq.read_table(paths["cohort_parquet"])
    assert t.num_rows == 2 and str(t.schema.field("n").type) == "double"
    assert str(t.schema.field("flag").type) == "bool" and str(t.schema.field("note").type) == "string"
    assert t.column("femur_thickness_mean_mm").to_pylist() == [2.0, None]
    assert (tmp_path / B.COHORT_CSV).read_text().splitlines()[2] == "b,failed,,4.5,,x"
    assert json.loads((tmp_path / B.COHORT_SUMMARY).read_text())["schema"] == B.SUMMARY_SCHEMA
    assert not list(tmp_path.glob(".tmp-*"))


def test_gpu_slots_of_a_worker_are_never_shared():
    with B._gpu_slot(0, 1, 0) as none:
        assert none is None
    # two GPUs, one knee each: concurrent knees get different devices; a freed slot is reused
    with B._gpu_slot(2, 1, 0) as a, B._gpu_slot(2, 1, 0) as b:
        assert {a, b} == {0, 1}
    with B._gpu_slot(2, 1, 0) as c:
        assert c == 0
    # two GPUs shared by two knees each (--tasks-per-gpu 2), local worker 1 (offset 2): spread first
    with B._gpu_slot(4, 2, 2) as a, B._gpu_slot(4, 2, 2) as b, B._gpu_slot(4, 2, 2) as c:
        assert (a, b, c) == (2, 3, 2)


def test_local_gpu_workers_need_that_many_gpus():
    try:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        have = 0
    with pytest.raises(ConfigurationError, match="need %d GPU" % (have + 1)):
        B._check_local_gpus(have + 1, 1)


def test_a_rerun_empties_the_knee_folder_but_never_an_input_inside_it(tmp_path):
    out = tmp_path / "out"
    folder = out / "knees" / "k1"
    folder.mkdir(parents=True)
    (folder / "stale.vtk").write_text("old attempt")
    (folder / "mine.nii.gz").write_bytes(b"input")
    opts = RunOptions(labels=str(folder / "mine.nii.gz"), out_dir=str(folder))
    outcome = B.run_knee("k1", opts.to_dict())
    assert outcome["status"] == "failed" and outcome["category"] == "output_unwritable"
    assert (folder / "mine.nii.gz").read_bytes() == b"input" and (folder / "stale.vtk").exists()
    # an ordinary re-run: the previous attempt's files are gone, the failure is the knee's own
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    outcome = B.run_knee("k1", RunOptions(labels=str(tmp_path / "empty.nii.gz"), out_dir=str(folder)).to_dict())
    assert outcome["status"] == "failed" and outcome["category"] == "input_unreadable" and outcome["seconds"] >= 0
    assert not (folder / "stale.vtk").exists() and (folder / "manifest.json").exists()
    assert not list((out / "knees").glob(".trash-*"))
