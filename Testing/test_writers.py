"""The one writer layer (``io.writers``) and the run-folder lock, and the manifest's live/dead test: what a
hostile machine (full disk, read-only file system, a second run, SIGKILL) can do to a run folder."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from KneePipelineLib.errors import BusyError, OutputUnwritableError
from KneePipelineLib.io import writers as W
from KneePipelineLib.io.volume import Volume
from KneePipelineLib.manifest import Manifest, effective_status, load_manifest, run_liveness

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_renames_into_place_with_ordinary_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    W.atomic_write_text(target, "hello")
    assert target.read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_a_failing_writer_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "b.bin"
    target.write_bytes(b"old")

    def boom(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputUnwritableError, match="disk is full"):
        W.atomic_write(target, boom)
    assert target.read_bytes() == b"old"   # the previous file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin"]


def test_an_empty_result_is_refused(tmp_path):
    with pytest.raises(OutputUnwritableError, match="empty"):
        W.atomic_write(tmp_path / "c.nii.gz", lambda tmp: None)
    assert list(tmp_path.iterdir()) == []


def test_free_space_is_checked_before_the_writer_starts(tmp_path):
    called = []
    with W.simulated_free_space(10_000):
        with pytest.raises(OutputUnwritableError, match="Not enough free disk space"):
            W.atomic_write(tmp_path / "d.bin", lambda tmp: called.append(tmp), expected_bytes=50_000)
        W.atomic_write_text(tmp_path / "small.json", "{}")   # a manifest still gets through
    assert called == [] and (tmp_path / "small.json").exists()


def test_vtk_mesh_on_a_full_disk_is_refused_before_vtk_runs(tmp_path):
    import vtk

    src = vtk.vtkSphereSource()
    src.SetThetaResolution(64)
    src.SetPhiResolution(64)
    src.Update()
    poly = src.GetOutput()
    need = W.mesh_bytes_estimate(poly)
    assert need > poly.GetNumberOfPoints() * 12
    with W.simulated_free_space(need // 2):
        with pytest.raises(OutputUnwritableError):
            W.write_mesh(poly, tmp_path / "m.vtp")
    assert list(tmp_path.iterdir()) == []
    W.write_mesh(poly, tmp_path / "m.vtp")
    from KneePipelineLib.morphometry import read_mesh
    assert read_mesh(str(tmp_path / "m.vtp")).GetNumberOfPoints() == poly.GetNumberOfPoints()


def test_volume_written_and_read_back_same_geometry(tmp_path):
    from KneePipelineLib.io.readers import read_labels

    arr = np.zeros((6, 7, 8), np.uint8)
    arr[2:4, 2:5, 3:6] = 7
    v = Volume(arr, (0.5, 0.6, 0.7), (1, 2, 3), np.eye(3))
    W.write_volume(v, tmp_path / "v.nii.gz")
    back = read_labels(tmp_path / "v.nii.gz")
    assert back.same_geometry(v) and np.array_equal(back.array, arr)


def test_a_simulated_os_failure_names_the_file(tmp_path):
    with W.simulated_write_failure("*.vtp", errno.EROFS):
        with pytest.raises(OutputUnwritableError, match="read-only"):
            W.atomic_write_text(tmp_path / "x.vtp", "x")
        W.atomic_write_text(tmp_path / "x.json", "x")


def test_the_lock_admits_one_run_and_names_the_holder(tmp_path):
    first = W.RunFolderLock(tmp_path).acquire()
    try:
        assert W.folder_is_locked(tmp_path) is True
        with pytest.raises(BusyError, match="pid|process %d" % os.getpid()) as exc:
            W.RunFolderLock(tmp_path).acquire()   # a second run in the same process (a Dask worker)
        assert str(os.getpid()) in exc.value.message
    finally:
        first.release()
    assert W.folder_is_locked(tmp_path) is False
    with W.RunFolderLock(tmp_path):
        pass


def _running_manifest(folder: Path, pid: int) -> None:
    m = Manifest(created="2026-01-01T00:00:00", process={"pid": pid, "host": os.uname().nodename,
                                                         "started": "2026-01-01T00:00:00"})
    m.write(str(folder))


def test_a_killed_run_is_told_from_a_live_one(tmp_path):
    """SIGKILL: no handler runs, the manifest stays `running`; the lock (the kernel's) tells the truth."""
    code = ("import sys, time; sys.path.insert(0, %r)\n"
            "from KneePipelineLib.io.writers import RunFolderLock\n"
            "RunFolderLock(%r).acquire(); print('locked', flush=True); time.sleep(60)\n" % (str(ROOT), str(tmp_path)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        _running_manifest(tmp_path, proc.pid)
        assert run_liveness(str(tmp_path))[0] == "live"
        assert effective_status(str(tmp_path)) == "running"
        with pytest.raises(BusyError):
            W.RunFolderLock(tmp_path).acquire()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        state, reason = run_liveness(str(tmp_path))
        assert state == "dead" and str(proc.pid) in reason
        assert effective_status(str(tmp_path)) == "interrupted"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_without_a_lock_file_the_pid_decides(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _running_manifest(tmp_path, dead.pid)
    assert run_liveness(str(tmp_path))[0] == "dead"
    _running_manifest(tmp_path, os.getpid())
    assert run_liveness(str(tmp_path))[0] == "live"
    m = load_manifest(str(tmp_path))
    m.status = "complete"
    assert run_liveness(str(tmp_path), m)[0] == "finished"


def test_manifests_from_newer_writers_still_load(tmp_path):
    doc = Manifest(status="complete").to_dict()
    doc["a_future_field"] = 1
    doc["outputs"] = [{"path": "x.vtp", "kind": "mesh", "new_key": True}]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    m = load_manifest(str(tmp_path))
    assert m.status == "complete" and m.outputs[0].path == "x.vtp"


def test_free_bytes_of_a_real_folder(tmp_path):
    assert W.free_bytes(tmp_path) > 0
    t0 = time.perf_counter()
    for _ in range(100):
        W.free_bytes(tmp_path)
    assert time.perf_counter() - t0 < 0.5


def test_memory_estimates_follow_the_physical_size_and_refuse_before_the_step():
    from KneePipelineLib import resources as R
    from KneePipelineLib.errors import InsufficientMemoryError

    arr = np.zeros((40, 64, 64), np.uint8)
    arr[5:30, 10:50, 10:50] = 7        # a femur-sized block
    arr[30:33, 12:48, 12:48] = 2
    knee_like = R.morphometry_bytes(arr, (0.4, 0.4, 0.7))
    same_voxels_10mm = R.morphometry_bytes(arr, (10.0, 10.0, 10.0))
    assert knee_like < 1.5e9 and same_voxels_10mm > 5e9   # 10 mm voxels: 0.6 m of bone resampled at 0.5 mm
    native = R.segmentation_bytes((384, 384, 160), (0.36, 0.36, 0.7))
    assert native < 4e9 and R.segmentation_bytes((384, 384, 160), (3.6, 3.6, 7.0)) > 20 * native   # resampled
    assert R.t2_bytes(8, 1_000_000) < 1e9
    with R.simulated_available_memory(int(2e9)):
        R.require_memory(int(1e9), "morphometry", "a test")
        with pytest.raises(InsufficientMemoryError, match="morphometry step would need about 3.0 GB"):
            R.require_memory(int(3e9), "morphometry", "a test")
    assert R.available_bytes() > 0


def test_the_manifest_and_writers_import_without_numpy():
    """Slicer's own Python loads runs through the manifest: io/__init__ must stay lazy (standard library only)."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import KneePipelineLib.manifest, KneePipelineLib.io.writers\n"
            "heavy = [m for m in ('numpy', 'SimpleITK', 'vtk') if m in sys.modules]\n"
            "assert not heavy, heavy\n" % str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_mesh_file_cut_short_is_refused(tmp_path):
    import vtk

    src = vtk.vtkSphereSource()
    src.Update()
    W.write_mesh(src.GetOutput(), tmp_path / "ok.vtp")
    W.write_mesh(src.GetOutput(), tmp_path / "ok.vtk", "vtk")
    full = (tmp_path / "ok.vtp").read_bytes()
    cut = tmp_path / "cut.vtp"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(OutputUnwritableError, match="incompletely"):
        W._verify_mesh_file(cut, "vtp", src.GetOutput().GetNumberOfPoints(), "cut.vtp")
    W._verify_mesh_file(tmp_path / "ok.vtp", "vtp", src.GetOutput().GetNumberOfPoints(), "ok.vtp")
    W._verify_mesh_file(tmp_path / "ok.vtk", "vtk", src.GetOutput().GetNumberOfPoints(), "ok.vtk")


def test_a_file_system_without_locks_runs_unguarded(tmp_path, monkeypatch):
    def no_locks(fd):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(W, "_try_lock", no_locks)   # what some network mounts answer
    with W.RunFolderLock(tmp_path):
        pass
