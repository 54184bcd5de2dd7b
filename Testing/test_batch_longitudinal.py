"""A two-visit cohort through `kneepipeline batch` on the local Dask cluster: per-knee change and the SRM.

Knees (from the real sample label map, cropped, every 3rd voxel in-plane and every 2nd slice, for speed):
* ``kA``: baseline = the sample; visit ``m12`` = the same knee in another scanner pose (rotated direction,
  shifted origin: no cartilage change);
* ``kB``: baseline = the sample in a third pose; ``m12`` = the sample in a fourth pose;
* ``kC``: visit ``m12`` is an empty file, so the knee cannot be compared: reported, the others unaffected.
"""
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
sitk = pytest.importorskip("SimpleITK")

from KneePipelineLib import batch as B  # noqa: E402
from KneePipelineLib.cli import main as cli_main  # noqa: E402

pytestmark = pytest.mark.slow


def _rotated(img, deg, axis, shift):
    """The same voxels in another pose: direction and origin moved rigidly."""
    t = math.radians(deg)
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    R = np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K
    out = sitk.Image(img)
    out.SetDirection((R @ np.array(img.GetDirection()).reshape(3, 3)).ravel().tolist())
    out.SetOrigin((R @ np.array(img.GetOrigin()) + np.asarray(shift)).tolist())
    return out


@pytest.fixture(scope="module")
def cohort_run(sample_labels_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch_visits")
    img = sitk.ReadImage(str(sample_labels_path))[40:316:3, 30:300:3, 25:160:2]
    sitk.WriteImage(img, str(root / "base.nrrd"), True)
    sitk.WriteImage(_rotated(img, 4.0, (0, 1, 0.3), (3, -2, 5)), str(root / "pose1.nrrd"), True)
    sitk.WriteImage(_rotated(img, 6.0, (0.2, 0.1, 1), (1, 4, -3)), str(root / "pose3.nrrd"), True)
    sitk.WriteImage(_rotated(img, -3.0, (1, 0.2, 0), (-4, 1, 2)), str(root / "pose2.nrrd"), True)
    (root / "empty.nii.gz").write_bytes(b"")
    (root / "cohort.csv").write_text("\n".join([
        "id,visit,labels", "kA,v00,base.nrrd", "kA,m12,pose1.nrrd", "kB,v00,pose3.nrrd",
        "kB,m12,pose2.nrrd", "kC,v00,base.nrrd", "kC,m12,empty.nii.gz"]) + "\n")
    out = root / "out"
    code = cli_main(["batch", str(root / "cohort.csv"), "--out", str(out), "--workers", "2",
                     "--label-convention", "pymskt", "--no-report"])
    return {"root": root, "out": out, "code": code}


def test_visits_run_as_knees_and_follow_ups_get_their_change(cohort_run):
    out = cohort_run["out"]
    assert cohort_run["code"] != 0              # kC's follow-up failed
    with open(out / B.COHORT_CSV, newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"kA__v00", "kA__m12", "kB__v00", "kB__m12", "kC__v00", "kC__m12"}
    assert rows["kA__m12"]["subject"] == "kA" and rows["kA__m12"]["visit"] == "m12"
    assert rows["kC__m12"]["status"] == "failed" and rows["kC__v00"]["status"] == "complete"
    for k in ("kA__m12", "kB__m12"):            # the same cartilage in another pose: no change
        for region in ("femur_trochlea", "tibia_medial", "patella", "cMT"):
            assert abs(float(rows[k][region + "_change_percent"])) <= 0.5, (k, region, rows[k])
    assert rows["kA__v00"]["femur_trochlea_change_mean_mm"] == ""      # baselines carry no change
    assert (out / "longitudinal" / "kA" / "longitudinal.json").is_file()


def test_cohort_change_table_summary_and_srm(cohort_run):
    out = cohort_run["out"]
    with open(out / "cohort_longitudinal.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    assert rows["kA"]["status"] == rows["kB"]["status"] == "complete"
    assert rows["kC"]["status"] == "not_compared" and "m12" in rows["kC"]["error_message"]
    doc = json.loads((out / "cohort_longitudinal_summary.json").read_text())
    per = doc["by_visit"]["m12"]["femur_trochlea"]
    a, b = float(rows["kA"]["femur_trochlea_change_mean_mm"]), float(rows["kB"]["femur_trochlea_change_mean_mm"])
    assert per["n"] == 2 and per["change_mean_mm"] == pytest.approx((a + b) / 2)
    sd = abs(a - b) / math.sqrt(2)
    assert per["change_sd_mm"] == pytest.approx(sd)
    assert per["srm"] == (pytest.approx(per["change_mean_mm"] / sd) if sd > 0 else None)
    assert doc["knees_compared"] == 2 and doc["not_compared"][0]["id"] == "kC"
