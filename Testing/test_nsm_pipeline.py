"""The NSM step inside a pipeline run and the standalone `kneepipeline nsm` command, end to end on the real
sample label map with our own small NSM (Testing/fixtures/nsm_small, latent 16, bone only) and a tiny
B-score model written by the test (a 16-value unit vector). The label map is the real knee on a 3 x 3 x 2
coarser grid (conftest ``coarse_knee_path``): the NSM plumbing, not the meshing of a full-size map, is tested."""
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from KneePipelineLib.errors import ModelInvalidError  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.pipeline import run  # noqa: E402
from KneePipelineLib.progress import Progress  # noqa: E402
from KneePipelineLib.registry import get_model  # noqa: E402

SMALL = Path(__file__).resolve().parent / "fixtures" / "nsm_small"
ITER = 4


def write_bscore(folder: Path, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=16)
    v /= np.linalg.norm(v)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps({"bscore_vector": v.tolist(), "mean_healthy": 0.01,
                                                   "std_healthy": 0.02}))
    return v


@pytest.fixture(scope="module")
def nsm_run(tmp_path_factory, coarse_knee_path):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("nsm_pipe")
    vec = write_bscore(root / "bscore")
    out = root / "out"
    opts = RunOptions(out_dir=str(out), labels=str(coarse_knee_path), label_convention="canonical", nsm="bone_only",
                      nsm_dir=str(SMALL), bscore_dir=str(root / "bscore"), nsm_iterations=ITER, nsm_samples=1000,
                      report=False)
    manifest = run(opts, Progress(sink=lambda e: None), command="analyze")
    return out, manifest, vec


def test_results_hold_latent_bscore_and_assd(nsm_run):
    out, manifest, vec = nsm_run
    assert manifest.status == "complete"
    doc = json.loads((out / "results.json").read_text())
    fit = doc["nsm"]["nsm_bone_only"]
    latent = np.asarray(fit["latent"])
    assert latent.shape == (16,) and np.all(np.isfinite(latent))
    assert 1 <= fit["iterations"] <= ITER
    # the B-score is the documented formula applied to the written latent and our model.json
    assert np.isfinite(fit["bscore"])
    assert fit["bscore"] == pytest.approx((latent @ vec - 0.01) / 0.02, rel=1e-6, abs=1e-9)
    assert np.isfinite(fit["assd_bone_mm"]) and 0 < fit["assd_bone_mm"] < 10
    t = np.asarray(fit["transform"])
    assert t.shape == (4, 4) and np.allclose(t[3], [0, 0, 0, 1])


def test_manifest_lists_the_nsm_mesh_in_patient_space(nsm_run):
    out, manifest, _ = nsm_run
    from KneePipelineLib.morphometry.mesh import read_mesh
    from KneePipelineLib.shape.meshing import polydata_arrays

    entries = manifest.find(kind="mesh", structure="nsm_nsm_bone_only_bone")
    assert len(entries) == 1 and entries[0].step == "nsm" and entries[0].coordinate_system == "LPS"
    rec, _ = polydata_arrays(read_mesh(out / entries[0].path))
    femur, _ = polydata_arrays(read_mesh(out / manifest.find(kind="mesh", structure="femur")[0].path))
    # the reconstruction lies on the patient's femur (mm, LPS), not in model space
    assert len(rec) > 1000 and np.linalg.norm(rec.mean(0) - femur.mean(0)) < 10.0


def test_manifest_says_which_model_files_produced_the_fit(nsm_run):
    import hashlib

    out, manifest, _ = nsm_run
    on_disk = json.loads((out / "manifest.json").read_text())["models"]
    nsm = on_disk["nsm_bone_only"]
    ck = next(k for k in nsm["sha256"] if k.startswith("model/") and k.endswith(".pth"))
    assert nsm["source"] == "local" and nsm["revision"] is None and nsm["path"] == str(SMALL)
    assert nsm["sha256"]["model_params_config.json"] == \
        hashlib.sha256((SMALL / "model_params_config.json").read_bytes()).hexdigest()
    assert nsm["sha256"][ck] == hashlib.sha256((SMALL / ck).read_bytes()).hexdigest()
    bs = on_disk["bscore_bone_only"]   # the test's own unit vector: recorded, and not the published file
    assert bs["sha256"]["model.json"] == hashlib.sha256((out.parent / "bscore" / "model.json").read_bytes()).hexdigest()
    assert bs["verified"] is False and bs["pinned_revision"] == get_model("bscore_bone_only").source.revision


def test_bone_cartilage_request_with_a_bone_only_model_is_refused(tmp_path, coarse_knee_path):
    # the NSM step comes after morphometry: the real knee on a 3 x 3 x 2 coarser grid (conftest) gets there fast
    knee = coarse_knee_path
    opts = RunOptions(out_dir=str(tmp_path / "out"), labels=str(knee), label_convention="canonical",
                      nsm="bone_cartilage", nsm_dir=str(SMALL), nsm_iterations=2, report=False)
    with pytest.raises(ModelInvalidError, match="bone \\+ cartilage"):
        run(opts, Progress(sink=lambda e: None), command="analyze")


def test_nsm_command_end_to_end(tmp_path, coarse_knee_path):
    from KneePipelineLib.cli import main

    bs = tmp_path / "bscore"
    write_bscore(bs, seed=1)
    out = tmp_path / "nsm_out"
    rc = main(["nsm", "--labels", str(coarse_knee_path), "--label-convention", "canonical", "--nsm-dir", str(SMALL),
               "--bscore-dir", str(bs), "--out", str(out), "--iterations", str(ITER), "--samples", "1000",
               "--mesh-resolution", "64", "--device", "cpu", "--threads", "1"])
    assert rc == 0
    doc = json.loads((out / "nsm.json").read_text())
    assert len(doc["latent"]) == 16 and np.isfinite(doc["bscore"]) and doc["laterality"] == "right"
    assert doc["meshes"] == {"bone": "nsm_bone.vtp"} and (out / "nsm_bone.vtp").is_file()
    assert np.isfinite(doc["assd_mm"]["bone"])
