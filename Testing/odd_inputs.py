"""The second half of the corpus (see ``bad_inputs.py``): output folders and a hostile machine (busy folder,
full disk, little memory), mismatched inputs, T2 file inputs, and valid-but-odd inputs whose numbers must
stay right (a storage-mirrored or axis-permuted knee, sheared axes, a missing bone, a JSON label map)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import SimpleITK as sitk

from bad_inputs import Built, Case, analyze, img, knee_array, labels_img, run_image, write

# The coarse real knee (canonical labels) analysed as given: what odd copies of it must reproduce.
REGION_KEYS = ("femur_trochlea", "femur_medial_weightbearing", "femur_lateral_weightbearing",
               "femur_medial_posterior", "femur_lateral_posterior", "tibia_medial", "tibia_lateral", "patella")


def region_means(results: Dict[str, Any]) -> Dict[str, float]:
    return {r["name"]: r["thickness_mean_mm"] for r in results["regions"]
            if r.get("kind", "region") == "region" and r["thickness_mean_mm"] is not None}


def close_to_reference(reference: Dict[str, float], rel: float, side: str):
    def check(out: Path, results: Dict[str, Any]) -> None:
        assert results["laterality"]["side"] == side, results["laterality"]
        got = region_means(results)
        assert set(got) == set(reference), (set(got) ^ set(reference))
        for k, v in reference.items():
            assert abs(got[k] - v) <= rel * v, (k, got[k], v)
    return check


def _canon(p: Path) -> List[str]:
    return ["analyze", "--labels", str(p), "--label-convention", "canonical", "--no-report"]


def _read(p: Path) -> sitk.Image:
    return sitk.ReadImage(str(p))


def storage_mirror(im: sitk.Image, axis: int) -> sitk.Image:
    """The same physical knee stored with array axis ``axis`` (i=0, j=1, k=2) reversed."""
    arr = sitk.GetArrayFromImage(im)
    flipped = np.flip(arr, axis=2 - axis).copy()
    out = sitk.GetImageFromArray(flipped)
    d = np.array(im.GetDirection()).reshape(3, 3)
    n = im.GetSize()[axis]
    origin = np.array(im.GetOrigin()) + d[:, axis] * im.GetSpacing()[axis] * (n - 1)
    d2 = d.copy()
    d2[:, axis] *= -1
    out.SetSpacing(im.GetSpacing())
    out.SetOrigin(origin.tolist())
    out.SetDirection(d2.ravel().tolist())
    return out


def physical_mirror(im: sitk.Image) -> sitk.Image:
    """A left knee: the array axis that points most along LPS x reversed, geometry unchanged."""
    d = np.array(im.GetDirection()).reshape(3, 3)
    axis = int(np.argmax(np.abs(d[0])))
    arr = np.flip(sitk.GetArrayFromImage(im), axis=2 - axis).copy()
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(im)
    return out


def permuted(im: sitk.Image) -> sitk.Image:
    """Same voxels with the array axes in another order (sagittal -> axial-like storage)."""
    return sitk.PermuteAxes(im, [2, 0, 1])


def odd_valid_cases(reference: Dict[str, float]) -> List[Case]:
    K = "valid but odd (numbers must match the original knee)"
    out: List[Case] = []

    def variant(name, make, check, warns=None, argv=_canon):
        out.append(Case(name, K, lambda t, d: Built(argv(write(make(_read(d["knee"])), t / (name + ".nrrd"))),
                                                    None, check=check, warns=warns), needs=("knee",)))
    variant("knee_storage_mirrored_i", lambda im: storage_mirror(im, 0), close_to_reference(reference, 0.01, "right"))
    variant("knee_storage_mirrored_k", lambda im: storage_mirror(im, 2), close_to_reference(reference, 0.01, "right"))
    variant("knee_axes_permuted", permuted, close_to_reference(reference, 0.01, "right"))
    variant("knee_physically_mirrored_left", physical_mirror, close_to_reference(reference, 0.02, "left"))

    def no_patella(im):
        a = sitk.GetArrayFromImage(im)
        a[a == 9] = 0
        o = sitk.GetImageFromArray(a)
        o.CopyInformation(im)
        return o

    def check_no_patella(out_dir: Path, results: Dict[str, Any]) -> None:
        got = region_means(results)
        assert "patella" not in got
        ref = {k: v for k, v in reference.items() if k != "patella"}
        assert set(got) == set(ref)
        for k, v in ref.items():
            assert abs(got[k] - v) <= 0.01 * v, (k, got[k], v)
    variant("knee_patella_bone_missing", no_patella, check_no_patella, warns="no patella")

    def sheared(im):
        o = sitk.Image(im)
        d = np.array(im.GetDirection()).reshape(3, 3)
        d[:, 2] = d[:, 2] + 0.02 * d[:, 0]
        d[:, 2] /= np.linalg.norm(d[:, 2])
        o.SetDirection(d.ravel().tolist())
        return o
    variant("knee_sheared_axes", sheared, close_to_reference(reference, 0.05, "right"), warns="sheared")

    def json_map(t: Path, d: Dict[str, Path]) -> Built:
        f = t / "map.json"
        f.write_text(json.dumps({"labels": {str(k): v for k, v in
                                            {0: "background", 1: "patellar_cartilage", 2: "femoral_cartilage",
                                             3: "medial_tibial_cartilage", 4: "lateral_tibial_cartilage",
                                             5: "medial_meniscus", 6: "lateral_meniscus", 7: "femur", 8: "tibia",
                                             9: "patella", 10: "fibula"}.items()}}))
        return Built(["analyze", "--labels", str(d["knee"]), "--label-convention", str(f), "--no-report"], None,
                     check=close_to_reference(reference, 1e-9, "right"))
    out.append(Case("knee_json_label_map", K, json_map, needs=("knee",)))
    return out


def real_knee_broken_cases() -> List[Case]:
    """The issue's own finding on real data: the knee as .nii.gz cut to 90 % was read with zeros for the
    missing part and gave +8 % thickness with exit 0; NaN in a NIfTI label map was read as background."""
    K = "broken file (every format: truncated, cut in the header, empty, garbage)"

    def as_nifti(t: Path, d: Dict[str, Path]) -> Path:
        return write(_read(d["knee"]), t / "knee.nii.gz", True)

    def cut90(t, d):
        p = as_nifti(t, d)
        q = t / "knee-cut.nii.gz"
        q.write_bytes(p.read_bytes()[: p.stat().st_size * 9 // 10])
        return Built(_canon(q), "input_unreadable", says="truncated")

    def nan_labels(t, d):
        im = _read(d["knee"])
        a = sitk.GetArrayFromImage(im).astype(np.float32)
        a[a.shape[0] // 2, a.shape[1] // 2, a.shape[2] // 2] = np.nan
        o = sitk.GetImageFromArray(a)
        o.CopyInformation(im)
        return Built(_canon(write(o, t / "knee-nan.nii.gz", True)), "invalid_input", says="NaN")
    return [Case("real_knee_nii_gz_cut_90pct", K, cut90, needs=("knee",)),
            Case("real_knee_nii_gz_nan_label", "NaN / infinite voxel values", nan_labels, needs=("knee",))]


def output_and_machine_cases() -> List[Case]:
    K = "output folder and machine (busy, disk full, little memory, inside the input)"
    out: List[Case] = []

    def knee(t: Path) -> Path:
        return write(labels_img(knee_array()), t / "in" / "knee.nrrd") if (t / "in").mkdir() is None else None

    def out_is_file(t, d):
        f = t / "a_file"
        f.write_text("x")
        return Built(analyze(knee(t), "dosma", "--out", str(f / "sub")), "output_unwritable")
    out.append(Case("out_below_a_file", K, out_is_file))
    out.append(Case("out_is_the_input_folder", K, lambda t, d: Built(
        analyze(knee(t), "dosma", "--out", str(t / "in")), "output_unwritable", says="folder of the input")))
    out.append(Case("out_is_the_input_file", K, lambda t, d: Built(
        analyze(knee(t), "dosma", "--out", str(t / "in" / "knee.nrrd")), "output_unwritable")))

    def inside_dicom(t, d):
        dd = shutil.copytree(d["mese"], t / "mese_copy")
        return Built(run_image(dd, "--out", str(dd / "results")), "output_unwritable", says="inside the input")
    out.append(Case("out_inside_input_dicom_folder", K, inside_dicom, needs=("mese",)))

    def busy(t, d):
        from KneePipelineLib.io.writers import RunFolderLock

        o = t / "out"
        o.mkdir()
        lock = RunFolderLock(o)
        return Built(analyze(knee(t), "dosma", "--out", str(o)), "busy", context=lambda: lock, says="Another run")
    out.append(Case("out_busy_with_another_run", K, busy))

    def full_disk(free: int):
        def build(t, d):
            from KneePipelineLib.io.writers import simulated_free_space
            return Built(analyze(knee(t)), "output_unwritable", context=lambda: simulated_free_space(free),
                         says="disk space")
        return build
    out.append(Case("disk_full_200kb_free", K, full_disk(200_000)))
    out.append(Case("disk_full_nothing_free", K, full_disk(0)))

    def small_machine(t, d):
        from KneePipelineLib.resources import simulated_available_memory
        return Built(analyze(knee(t)), "insufficient_memory",
                     context=lambda: simulated_available_memory(100_000_000), says="memory")
    out.append(Case("memory_100mb_machine", K, small_machine))
    return out


def mismatch_and_misc_cases() -> List[Case]:
    K = "mismatched or missing inputs, unsupported formats, T2 files, options"
    out: List[Case] = []

    def grids(t, d, **change):
        lab = labels_img(knee_array())
        im = img((20, 24, 28))
        for k, v in change.items():
            getattr(im, "Set" + k)(v)
        return Built(["analyze", "--labels", str(write(lab, t / "l.nrrd")), "--image", str(write(im, t / "i.nrrd")),
                      "--no-report"], "invalid_input")
    out.append(Case("grid_size_mismatch", K, lambda t, d: Built(
        ["analyze", "--labels", str(write(labels_img(knee_array()), t / "l.nrrd")),
         "--image", str(write(img((20, 24, 29)), t / "i.nrrd")), "--no-report"], "invalid_input")))
    out.append(Case("grid_spacing_mismatch", K, lambda t, d: grids(t, d, Spacing=(1.0, 1.0, 1.2))))
    out.append(Case("grid_origin_mismatch", K, lambda t, d: grids(t, d, Origin=(0.0, 5.0, 0.0))))
    out.append(Case("grid_direction_mismatch", K, lambda t, d: grids(t, d, Direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))))

    def unsupported(name, data):
        return Case("unsupported_" + name.replace(".", "_"), K, lambda t, d: Built(
            run_image((t / name).write_bytes(data) and t / name), "unsupported_format"))
    out += [unsupported("knee.jpg", b"\xff\xd8\xff" + b"0" * 100), unsupported("knee.png", b"\x89PNG" + b"0" * 100),
            unsupported("knee.txt", b"hello"), unsupported("knee.vtp", b"<VTKFile>")]
    out.append(Case("missing_image_file", K, lambda t, d: Built(run_image(t / "nope.nii.gz"), "input_unreadable")))
    out.append(Case("missing_labels_file", K, lambda t, d: Built(analyze(t / "nope.nrrd"), "input_unreadable")))
    out.append(Case("image_blank", K, lambda t, d: Built(
        run_image(write(sitk.Image(10, 10, 10, sitk.sitkFloat32), t / "blank.nii.gz")), "invalid_input")))
    out.append(Case("unknown_model", K, lambda t, d: Built(
        run_image(write(img((20, 20, 20)), t / "ok.nii.gz"), "--model", "no_such_model"), "configuration")))

    def echoes(*paths, times=None):
        def build(t, d):
            files = [str(p(t)) for p in paths]
            argv = ["analyze", "--labels", str(d["knee"]), "--label-convention", "canonical", "--echoes", *files,
                    "--no-report"]
            if times:
                argv += ["--echo-times-ms", *map(str, times)]
            return Built(argv, "t2_failed")
        return build
    e3 = lambda t: write(img((8, 9, 10)), t / "e3.nii.gz")
    e4 = lambda t: write(sitk.GetImageFromArray(np.random.rand(3, 8, 9, 10).astype(np.float32) + 1, isVector=False),
                         t / "e4.nii.gz")
    out.append(Case("t2_one_3d_file", K, echoes(e3), needs=("knee",)))
    out.append(Case("t2_4d_without_times", K, echoes(e4), needs=("knee",)))
    out.append(Case("t2_4d_wrong_time_count", K, echoes(e4, times=[10, 20]), needs=("knee",)))
    out.append(Case("t2_missing_echo_file", K, echoes(lambda t: t / "missing.nii.gz"), needs=("knee",)))
    return out
