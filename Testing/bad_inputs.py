"""Generators of the bad-input corpus: each returns (cli_args, expected_category)."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _img(shape=(8, 9, 10), value=None, spacing=(1.0, 1.0, 1.0), dtype=np.float32):
    rng = np.random.default_rng(1)
    arr = rng.normal(100, 10, shape).astype(dtype) if value is None else np.full(shape, value, dtype)
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    return im


def _write(im, path):
    sitk.WriteImage(im, str(path))
    return path


def _knee_labels(shape=(20, 24, 28), femur=True, cartilage=True, extra=None):
    a = np.zeros(shape, np.uint8)
    if femur:
        a[2:10, 4:20, 4:24] = 7
    if cartilage:
        a[10:12, 6:18, 6:22] = 2
        a[14:16, 4:10, 4:12] = 3  # medial tibial cartilage
        a[14:16, 14:20, 4:12] = 4
    if extra is not None:
        a[0, 0, 0] = extra
    return sitk.GetImageFromArray(a)


def _mese_subset(src: Path, dest: Path, drop_slice=False, strip_pixels=False, two_series=False) -> Path:
    import pydicom

    from KneePipelineLib.io import dicom

    dest.mkdir()
    files = sorted(str(f) for f in src.iterdir())
    groups = dicom.group_by_echo(files)
    echo = groups[sorted(groups)[0]]
    echo = sorted(echo, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[0]))
    if drop_slice:
        echo = echo[:8] + echo[9:]
    for n, f in enumerate(echo):
        ds = pydicom.dcmread(f)
        if strip_pixels:
            del ds.PixelData
        if two_series and n % 2:
            ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
        ds.save_as(str(dest / ("IM%03d" % n)))
    return dest


def cases(tmp: Path, sample_labels: Path | None, mese: Path | None):
    """Yield (name, build) where build() -> (argv_without_out, expected_category)."""
    def image_case(name, make, cat):
        def build():
            p = make()
            return ["run", "--image", str(p)], cat
        return name, build

    def labels_case(name, make, cat, conv="dosma"):
        def build():
            p = make()
            return ["analyze", "--labels", str(p), "--label-convention", conv], cat
        return name, build

    t = tmp
    def trunc(ext):
        def make():
            p = _write(_img((20, 20, 20)), t / ("full" + ext))
            data = p.read_bytes()
            q = t / ("trunc" + ext)
            q.write_bytes(data[: len(data) // 2])
            return q
        return make

    def empty(ext):
        def make():
            q = t / ("empty" + ext)
            q.write_bytes(b"")
            return q
        return make

    def garbage(ext):
        def make():
            q = t / ("garbage" + ext)
            q.write_bytes(np.random.default_rng(0).bytes(4096))
            return q
        return make

    yield image_case("empty_nifti", empty(".nii.gz"), "input_unreadable")
    yield image_case("empty_nrrd", empty(".nrrd"), "input_unreadable")
    yield image_case("empty_dcm", empty(".dcm"), "input_unreadable")
    yield image_case("truncated_nifti", trunc(".nii"), "input_unreadable")
    yield image_case("truncated_nrrd", trunc(".nrrd"), "input_unreadable")
    yield image_case("corrupt_nifti", garbage(".nii.gz"), "input_unreadable")
    yield image_case("corrupt_nrrd", garbage(".nrrd"), "input_unreadable")
    yield image_case("corrupt_mha", garbage(".mha"), "input_unreadable")
    yield image_case("image_2d", lambda: _write(sitk.Image(16, 16, sitk.sitkFloat32) + 3, t / "2d.nrrd"), "invalid_input")
    yield image_case("image_4d", lambda: _write(sitk.GetImageFromArray(np.random.rand(2, 4, 5, 6).astype(np.float32), isVector=False), t / "4d.nii.gz"), "invalid_input")
    yield image_case("one_voxel", lambda: _write(_img((1, 1, 1)), t / "1.nii.gz"), "invalid_input")
    def nan_img():
        a = np.random.rand(6, 7, 8).astype(np.float32); a[2, 2, 2] = np.nan
        return _write(sitk.GetImageFromArray(a), t / "nan.nrrd")
    def inf_img():
        a = np.random.rand(6, 7, 8).astype(np.float32); a[2, 2, 2] = np.inf
        return _write(sitk.GetImageFromArray(a), t / "inf.nrrd")
    yield image_case("nan_intensities", nan_img, "invalid_input")
    yield image_case("inf_intensities", inf_img, "invalid_input")
    yield image_case("huge_spacing", lambda: _write(_img(spacing=(1.0, 1.0, 250.0)), t / "huge.nii.gz"), "invalid_input")
    yield image_case("blank_image", lambda: _write(_img(value=0), t / "blank.nii.gz"), "invalid_input")
    yield image_case("rgb_image", lambda: _write(sitk.Compose([_img()] * 3), t / "rgb.nrrd"), "invalid_input")
    def unsupported():
        q = t / "knee.jpg"; q.write_bytes(b"\xff\xd8\xff" + b"0" * 100); return q
    yield image_case("unsupported_format", unsupported, "unsupported_format")
    yield image_case("missing_file", lambda: t / "does_not_exist.nii.gz", "input_unreadable")
    def no_dicom():
        d = t / "nodicom"; d.mkdir(); (d / "readme.txt").write_text("x"); return d
    yield image_case("folder_without_dicom", no_dicom, "dicom_problem")
    def zipslip():
        z = t / "slip.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("../../escape.dcm", b"x")
        return z
    def zipabs():
        z = t / "abs.zip"
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("/etc/escape.dcm", b"x")
        return z
    def zipcorrupt():
        z = t / "bad.zip"; z.write_bytes(b"PK\x03\x04" + b"\x00" * 50); return z
    def zipempty():
        z = t / "empty.zip"
        with zipfile.ZipFile(z, "w"):
            pass
        return z
    yield image_case("zip_slip_dotdot", zipslip, "invalid_input")
    yield image_case("zip_slip_absolute", zipabs, "invalid_input")
    yield image_case("zip_corrupt", zipcorrupt, "input_unreadable")
    yield image_case("zip_without_dicom", zipempty, "dicom_problem")
    if mese is not None:
        yield image_case("dicom_missing_slice", lambda: _mese_subset(mese, t / "missing_slice", drop_slice=True), "dicom_problem")
        yield image_case("dicom_no_pixel_data", lambda: _mese_subset(mese, t / "nopix", strip_pixels=True), "dicom_problem")
        yield image_case("dicom_mixed_series", lambda: _mese_subset(mese, t / "mixed", two_series=True), "dicom_problem")
    # label maps
    yield labels_case("labels_empty_file", empty(".nrrd"), "input_unreadable")
    yield labels_case("labels_truncated", trunc(".nrrd"), "input_unreadable")
    yield labels_case("labels_fractional", lambda: _write(_img(), t / "frac.nii.gz"), "invalid_input")
    yield labels_case("labels_2d", lambda: _write(sitk.Image(16, 16, sitk.sitkUInt8), t / "l2d.nrrd"), "invalid_input")
    yield labels_case("labels_no_femur", lambda: _write(_knee_labels(femur=False), t / "nofemur.nrrd"), "missing_structures")
    yield labels_case("labels_no_cartilage", lambda: _write(_knee_labels(cartilage=False), t / "nocart.nrrd"), "missing_structures")
    yield labels_case("labels_all_background", lambda: _write(sitk.Image(10, 10, 10, sitk.sitkUInt8), t / "bg.nrrd"), "missing_structures")
    yield labels_case("labels_value_outside_convention", lambda: _write(_knee_labels(extra=42), t / "v42.nrrd"), "label_convention")
    yield labels_case("labels_negative", lambda: _write(sitk.GetImageFromArray(-np.ones((4, 5, 6), np.int16)), t / "neg.nrrd"), "invalid_input")
    def bad_conv():
        return ["analyze", "--labels", str(_write(_knee_labels(), t / "ok.nrrd")), "--label-convention",
                str(t / "nope.json")], "label_convention"
    yield "labels_convention_file_missing", bad_conv
    def mismatch():
        lab = _write(_knee_labels(), t / "lab.nrrd")
        img = _write(_img((20, 24, 29)), t / "img.nrrd")
        return ["analyze", "--labels", str(lab), "--image", str(img)], "invalid_input"
    yield "image_label_grid_mismatch", mismatch
    def unwritable_out():
        f = t / "a_file"; f.write_text("x")
        return ["analyze", "--labels", str(_write(_knee_labels(), t / "ok2.nrrd")), "--out", str(f / "sub")], "output_unwritable"
    yield "output_unwritable", unwritable_out
    if mese is not None:
        def out_in_input():
            d = shutil.copytree(mese, t / "mese_copy")
            return ["run", "--image", str(d), "--out", str(d / "results")], "output_unwritable"
        yield "output_inside_input_folder", out_in_input
    yield "unknown_model", lambda: (["run", "--image", str(_write(_img((20, 20, 20)), t / "okimg.nii.gz")), "--model", "no_such_model"], "configuration")
