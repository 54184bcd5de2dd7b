"""Reading inputs: formats, geometry in physical space, and a clear typed error for each bad input."""
import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from KneePipelineLib import errors
from KneePipelineLib.io.readers import read_image, read_labels, write_volume
from KneePipelineLib.io.safezip import safe_extract
from KneePipelineLib.io.volume import Volume


def _oblique_volume(shape=(12, 10, 8)):
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 10, shape).astype(np.float32)
    c, s = np.cos(0.3), np.sin(0.3)
    d = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    return Volume(arr, [0.4, 0.5, 0.7], [10.0, -20.0, 5.0], d)


def test_nifti_and_nrrd_round_trip_keep_physical_geometry(tmp_path):
    vol = _oblique_volume()
    for name in ("a.nii.gz", "a.nrrd"):
        write_volume(vol, tmp_path / name)
        back = read_image(tmp_path / name)
        assert back.same_geometry(vol, tol=1e-5), name
        np.testing.assert_allclose(back.array, vol.array)
        # the physical position of a voxel is the same whatever the file format
        np.testing.assert_allclose(back.ijk_to_lps([3, 2, 1]), vol.ijk_to_lps([3, 2, 1]), atol=1e-4)


def test_ijk_lps_round_trip():
    vol = _oblique_volume()
    ijk = np.array([[0, 0, 0], [7, 9, 11], [1.5, 2.5, 3.5]])
    np.testing.assert_allclose(vol.lps_to_ijk(vol.ijk_to_lps(ijk)), ijk, atol=1e-9)


def test_real_mese_dicom_folder_reads_as_3d(mese_dir):
    vol = read_image(mese_dir)
    assert vol.array.shape == (24, 256, 256)
    np.testing.assert_allclose(vol.spacing_mm[:2], [0.625, 0.625], atol=1e-3)
    assert "first echo" in vol.metadata.get("echo_combination", "")


def test_single_dicom_file_reads_its_whole_series(mese_dir):
    one = sorted(mese_dir.iterdir())[0]
    vol = read_image(one)
    assert vol.array.ndim == 3 and vol.array.shape[0] > 1


@pytest.mark.parametrize("case", ["empty", "truncated", "2d", "4d", "one_voxel_thick", "nan", "huge_spacing",
                                  "unsupported", "missing", "blank"])
def test_bad_image_inputs_raise_typed_errors(tmp_path, case):
    p = tmp_path / "x.nrrd"
    if case == "empty":
        p.write_bytes(b"")
        exp = errors.InputUnreadableError
    elif case == "truncated":
        write_volume(_oblique_volume(), p, compress=False)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        exp = errors.InputUnreadableError
    elif case == "2d":
        sitk.WriteImage(sitk.Image(10, 10, sitk.sitkFloat32) + 1, str(p))
        exp = errors.InvalidInputError
    elif case == "4d":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(2, 3, 4, 5).astype(np.float32), isVector=False), str(p))
        exp = errors.InvalidInputError
    elif case == "one_voxel_thick":
        sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(1, 8, 8).astype(np.float32)), str(p))
        exp = errors.InvalidInputError
    elif case == "nan":
        a = np.random.rand(4, 5, 6).astype(np.float32)
        a[1, 1, 1] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(a), str(p))
        exp = errors.InvalidInputError
    elif case == "huge_spacing":
        im = sitk.GetImageFromArray(np.random.rand(4, 5, 6).astype(np.float32))
        im.SetSpacing((1.0, 1.0, 500.0))
        sitk.WriteImage(im, str(p))
        exp = errors.InvalidInputError
    elif case == "unsupported":
        p = tmp_path / "x.txt"
        p.write_text("hello")
        exp = errors.UnsupportedFormatError
    elif case == "missing":
        p = tmp_path / "nope.nii.gz"
        exp = errors.InputUnreadableError
    elif case == "blank":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(p))
        exp = errors.InvalidInputError
    before = p.read_bytes() if p.exists() else None
    with pytest.raises(exp) as ei:
        read_image(p)
    assert ei.value.message and ei.value.hint
    if before is not None:
        assert p.read_bytes() == before  # inputs are never modified


def test_label_map_with_fractional_values_is_rejected(tmp_path):
    p = tmp_path / "l.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(4, 5, 6).astype(np.float32)), str(p))
    with pytest.raises(errors.InvalidInputError, match="non-integer"):
        read_labels(p)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(errors.DicomError, match="No DICOM"):
        read_image(tmp_path)


@pytest.mark.parametrize("name", ["../evil.dcm", "/abs/evil.dcm", "a/../../evil.dcm"])
def test_zip_slip_is_rejected_and_nothing_escapes(tmp_path, name):
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok/1.dcm", b"x")
        zf.writestr(name, b"x")
    dest = tmp_path / "dest"
    with pytest.raises(errors.InvalidInputError):
        safe_extract(z, dest)
    assert not (tmp_path / "evil.dcm").exists() and not dest.exists()
    with pytest.raises(errors.InvalidInputError):
        read_image(z, workdir=tmp_path)


def test_zip_of_a_real_dicom_series(tmp_path, mese_dir):
    z = tmp_path / "mese.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in sorted(mese_dir.iterdir()):
            zf.write(f, "series/" + f.name)
    vol = read_image(z, workdir=tmp_path)
    assert vol.array.shape == (24, 256, 256)


def test_dicom_series_with_a_missing_slice(tmp_path, mese_dir):
    from KneePipelineLib.io import dicom

    files = sorted(mese_dir.iterdir())
    groups = dicom.group_by_echo([str(f) for f in files])
    first = sorted(groups)[0]
    import shutil

    chosen = sorted(groups[first], key=lambda f: float(dicom.read_tags(f, [dicom.TAG_POSITION])[dicom.TAG_POSITION].split("\\")[0]))
    for f in chosen[:10] + chosen[11:]:
        shutil.copy(f, tmp_path / ("s" + str(len(list(tmp_path.iterdir())))))
    with pytest.raises(errors.DicomError, match="missing slices"):
        read_image(tmp_path)


def test_sample_archive_extraction_checks_sha_and_takes_only_listed_files(tmp_path):
    from KneePipelineLib import sample_data as sd

    arch = tmp_path / "mskt-0.1.22.tar.gz"
    with tarfile.open(arch, "w:gz") as tf:
        for name, data in [("mskt-0.1.22/data/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd", b"nrrd"),
                           ("mskt-0.1.22/data/MESE_T2_dicom_data_anon/a.dcm", b"dcm"),
                           ("mskt-0.1.22/data/MESE_T2_dicom_data/PHI.dcm", b"phi"),
                           ("mskt-0.1.22/data/femur_meshes_registration/temp/t.vtk", b"t"),
                           ("mskt-0.1.22/setup.py", b"code")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    sha = hashlib.sha256(arch.read_bytes()).hexdigest()
    with pytest.raises(errors.ModelInvalidError, match="sha256"):
        sd.extract_members(arch, tmp_path / "bad")
    out = sd.extract_members(arch, tmp_path / "cache", expected_sha256=sha)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["pymskt/MESE_T2_dicom_anon/a.dcm", "pymskt/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"]


def test_geometry_checks_reject_what_no_knee_has_and_warn_on_shear():
    from KneePipelineLib.errors import InvalidInputError
    from KneePipelineLib.io.validate import check_geometry

    assert check_geometry((0.36, 0.36, 0.7), (384, 384, 160), np.eye(3), "knee") == []
    for spacing in ((0.01, 1, 1), (1, 1, 10.0), (1, float("nan"), 1)):
        with pytest.raises(InvalidInputError, match="spacing"):
            check_geometry(spacing, (10, 10, 10), np.eye(3), "x")
    with pytest.raises(InvalidInputError, match="far more than a knee"):
        check_geometry((1, 1, 1), (10, 10, 1200), np.eye(3), "x")
    with pytest.raises(InvalidInputError, match="degenerate"):
        check_geometry((1, 1, 1), (10, 10, 10), np.array([[1, 1, 0], [0, 0, 0], [0, 0, 1.0]]), "x")
    d = np.eye(3)
    d[:, 2] = [0.05, 0, 1]
    d[:, 2] /= np.linalg.norm(d[:, 2])
    (w,) = check_geometry((1, 1, 1), (10, 10, 10), d, "x")
    assert "sheared" in w and "2.86 degrees" in w      # atan(0.05) = 2.86 degrees off a right angle
    oblique = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    assert check_geometry((1, 1, 1), (10, 10, 10), oblique, "x") == []   # oblique but orthogonal: fine


def test_echo_time_missing_is_none_and_malformed_is_an_error():
    from KneePipelineLib.errors import DicomError
    from KneePipelineLib.io.dicom import parse_echo_time

    assert parse_echo_time(None, "a") is None and parse_echo_time(" ", "a") is None
    assert parse_echo_time("12.5\\13", "a") == 12.5
    for bad in ("abc", "-3", "nan"):
        with pytest.raises(DicomError, match="echo time"):
            parse_echo_time(bad, "IM0001")
