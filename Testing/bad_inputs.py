"""The corpus of hostile and odd inputs: each case builds its inputs in a temporary folder and says what the
CLI must do with them (an error category, or success with correct numbers).

Cases are grouped in classes (``Case.kind``) whose counts the README lists; :func:`corpus` returns them all.
Inputs are small generated volumes, the real MESE DICOM series (``data["mese"]``) or a coarse copy of the
real knee label map (``data["knee"]``, 128 x 128 x 80 voxels: analyzed in ~3 s).
"""
from __future__ import annotations

import contextlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk


@dataclass
class Built:
    argv: List[str]
    category: Optional[str]                      # None: the input is odd but valid and must succeed
    check: Optional[Callable[[Path, Dict[str, Any]], None]] = None   # (out_dir, results) for valid ones
    context: Callable[[], Any] = contextlib.nullcontext               # e.g. a full disk during the run
    says: Optional[str] = None                   # text the message must contain (e.g. the zip's name)
    warns: Optional[str] = None                  # text a warning must contain (valid-but-odd)


@dataclass
class Case:
    name: str
    kind: str
    build: Callable[[Path, Dict[str, Path]], Built]
    needs: tuple = field(default_factory=tuple)  # "mese", "knee"


# -- small generated volumes ----------------------------------------------------------------------
def img(shape=(12, 13, 14), spacing=(1.0, 1.0, 1.0), dtype=np.float32, seed=1) -> sitk.Image:
    arr = np.random.default_rng(seed).normal(100, 10, shape).astype(dtype)
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    return im


def knee_array(shape=(20, 24, 28), femur=True, tibia=True, patella=True, cartilage=True) -> np.ndarray:
    """A box 'knee' in DOSMA labels: enough structure for the input checks (not anatomy)."""
    a = np.zeros(shape, np.uint8)
    if femur:
        a[2:10, 4:20, 4:24] = 7
    if tibia:
        a[16:19, 4:20, 4:24] = 8
    if patella:
        a[2:6, 21:23, 8:14] = 9
    if cartilage:
        a[10:12, 6:18, 6:22] = 2
        a[14:16, 4:10, 4:12] = 3
        a[14:16, 14:20, 4:12] = 4
    return a


def labels_img(arr: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    return im


def write(im: sitk.Image, path: Path, compress: bool = False) -> Path:
    sitk.WriteImage(im, str(path), compress)
    return path


def nrrd_by_hand(path: Path, arr: np.ndarray, directions: str, extra: str = "") -> Path:
    """A raw NRRD whose geometry lines we write ourselves (SimpleITK refuses to write degenerate ones)."""
    types = {np.dtype(np.uint8): "uint8", np.dtype(np.float32): "float"}
    k, j, i = arr.shape
    head = ("NRRD0004\ntype: %s\ndimension: 3\nspace: left-posterior-superior\nsizes: %d %d %d\n"
            "space directions: %s\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
            "space origin: (0,0,0)\n%s\n" % (types[arr.dtype], i, j, k, directions, extra))
    path.write_bytes(head.encode() + np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes())
    return path


def cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    out = path.with_name("cut%d-%s" % (int(fraction * 100), path.name))
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def zip_of(path: Path, members: Dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# -- argv helpers --------------------------------------------------------------------------------
def run_image(p: Path, *extra: str) -> List[str]:
    return ["run", "--image", str(p), "--no-report", *extra]


def analyze(p: Path, conv: str = "dosma", *extra: str) -> List[str]:
    return ["analyze", "--labels", str(p), "--label-convention", conv, "--no-report", *extra]


FORMATS = {  # name: (extension, compress)
    "nii_gz": (".nii.gz", True), "nii": (".nii", False), "nrrd": (".nrrd", False),
    "nrrd_gz": (".nrrd", True), "mha": (".mha", False), "mha_z": (".mha", True),
}


def broken_file_cases() -> List[Case]:
    out: List[Case] = []
    for fmt, (ext, comp) in FORMATS.items():
        for role in ("image", "labels"):
            def source(t: Path, fmt=fmt, ext=ext, comp=comp, role=role) -> Path:
                im = img((20, 20, 20)) if role == "image" else labels_img(knee_array())
                return write(im, t / ("src-%s%s" % (fmt, ext)), comp)

            def argv(p: Path, role=role) -> List[str]:
                return run_image(p) if role == "image" else analyze(p)

            faults = {
                "truncated_90pct": (lambda t, s=source: cut(s(t), 0.9), "input_unreadable"),
                "truncated_50pct": (lambda t, s=source: cut(s(t), 0.5), "input_unreadable"),
                "cut_in_header": (lambda t, s=source: cut(s(t), 0.02), "input_unreadable"),
                "empty": (lambda t, ext=ext: (t / ("empty" + ext)).write_bytes(b"") or t / ("empty" + ext),
                          "input_unreadable"),
                "garbage": (lambda t, ext=ext: (t / ("junk" + ext)).write_bytes(
                    np.random.default_rng(0).bytes(4096)) or t / ("junk" + ext), "input_unreadable"),
            }
            for fault, (make, cat) in faults.items():
                out.append(Case("%s_%s_%s" % (role, fmt, fault), "broken file (every format: truncated, cut in "
                                "the header, empty, garbage)",
                                lambda t, d, make=make, cat=cat, argv=argv: Built(argv(make(t)), cat)))
    return out


def detached_cases() -> List[Case]:
    """Headers whose voxels live in a separate file (.mhd / .nhdr + .raw): the data file cut or missing."""
    out: List[Case] = []
    for ext in (".mhd", ".nhdr"):
        for role in ("image", "labels"):
            for fault in ("raw_truncated", "raw_missing"):
                def build(t, d, ext=ext, role=role, fault=fault):
                    folder = t / "detached"
                    folder.mkdir()
                    im = img((20, 20, 20)) if role == "image" else labels_img(knee_array())
                    head = write(im, folder / ("vol" + ext))
                    raw = next(f for f in folder.iterdir() if f != head)
                    if fault == "raw_missing":
                        raw.unlink()
                    else:
                        raw.write_bytes(raw.read_bytes()[: raw.stat().st_size * 9 // 10])
                    return Built(run_image(head) if role == "image" else analyze(head), "input_unreadable")
                out.append(Case("%s_%s_%s" % (role, ext[1:], fault), "broken file (every format: truncated, cut in "
                                "the header, empty, garbage)", build))
    return out


def nonfinite_cases() -> List[Case]:
    out: List[Case] = []
    for fmt, (ext, comp) in FORMATS.items():
        for bad in ("nan", "inf", "-inf"):
            for role in ("image", "labels"):
                def build(t, d, ext=ext, comp=comp, bad=bad, role=role, fmt=fmt):
                    a = (np.random.default_rng(2).normal(100, 10, (12, 13, 14)) if role == "image"
                         else knee_array()).astype(np.float32)
                    a[3, 4, 5] = float(bad)
                    p = write(sitk.GetImageFromArray(a), t / ("%s-%s%s" % (bad, fmt, ext)), comp)
                    return Built(run_image(p) if role == "image" else analyze(p), "invalid_input")
                out.append(Case("%s_%s_%s" % (role, fmt, bad.replace("-", "minus_")),
                                "NaN / infinite voxel values", build))
    return out


def geometry_cases() -> List[Case]:
    out: List[Case] = []
    for sp in [(0.01, 1, 1), (1, 1, 0.02), (10, 10, 10), (1, 1, 9), (1, 1, 250), (20, 20, 20)]:
        for role in ("image", "labels"):
            def build(t, d, sp=sp, role=role):
                im = img(spacing=sp) if role == "image" else labels_img(knee_array(), sp)
                p = write(im, t / ("sp-%s.nii.gz" % "x".join(map(str, sp))), True)
                return Built(run_image(p) if role == "image" else analyze(p), "invalid_input", says="spacing")
            out.append(Case("%s_spacing_%s" % (role, "x".join(str(s).replace(".", "p") for s in sp)),
                            "implausible geometry (spacing, extent, direction)", build))

    def extent(t, d):
        return Built(run_image(write(img((3, 3, 1200)), t / "long.nrrd")), "invalid_input", says="far more than a knee")
    out.append(Case("image_extent_1200mm", "implausible geometry (spacing, extent, direction)", extent))
    hand = {
        "zero_spacing": "(0,0,0) (0,1,0) (0,0,1)",
        "singular_direction": "(1,0,0) (1,0,0) (0,0,1)",
        "nan_direction": "(nan,0,0) (0,1,0) (0,0,1)",
        "negative_spacing_axis_ok": None,
    }
    for name, dirs in hand.items():   # the NRRD reader itself refuses these: unreadable, with its reason
        if dirs is None:
            continue
        out.append(Case("labels_" + name, "implausible geometry (spacing, extent, direction)",
                        lambda t, d, dirs=dirs, name=name: Built(
                            analyze(nrrd_by_hand(t / (name + ".nrrd"), knee_array(), dirs)), "input_unreadable")))
    out.append(Case("labels_hand_nrrd_ok_but_10mm", "implausible geometry (spacing, extent, direction)",
                    lambda t, d: Built(analyze(nrrd_by_hand(t / "ten.nrrd", knee_array(), "(10,0,0) (0,10,0) (0,0,10)")),
                                       "invalid_input", says="spacing")))
    shape_cases = {
        "image_2d": (lambda t: write(sitk.Image(16, 16, sitk.sitkFloat32) + 3, t / "2d.nrrd"), "image"),
        "image_4d": (lambda t: write(sitk.GetImageFromArray(np.random.rand(2, 4, 5, 6).astype(np.float32),
                                                             isVector=False), t / "4d.nii.gz"), "image"),
        "image_one_voxel": (lambda t: write(img((1, 1, 1)), t / "1.nii.gz"), "image"),
        "image_one_slice": (lambda t: write(img((1, 20, 20)), t / "slice.nii.gz"), "image"),
        "image_rgb": (lambda t: write(sitk.Compose([img()] * 3), t / "rgb.nrrd"), "image"),
        "labels_2d": (lambda t: write(sitk.Image(16, 16, sitk.sitkUInt8), t / "l2d.nrrd"), "labels"),
        "labels_4d": (lambda t: write(sitk.GetImageFromArray(np.zeros((2, 4, 5, 6), np.uint8), isVector=False),
                                      t / "l4d.nii.gz"), "labels"),
    }
    for name, (make, role) in shape_cases.items():
        out.append(Case(name, "not a 3D scalar volume", lambda t, d, make=make, role=role: Built(
            run_image(make(t)) if role == "image" else analyze(make(t)), "invalid_input")))
    return out


def label_value_cases() -> List[Case]:
    K = "label values (fractional, negative, too large, outside the convention, an MRI, missing structures)"
    def lab(name, make, cat, conv="dosma", says=None):
        return Case(name, K, lambda t, d: Built(analyze(write(make(), t / (name + ".nrrd")), conv), cat, says=says))

    def with_value(v, dtype=np.int32):
        a = knee_array().astype(dtype)
        a[0, 0, 0] = v
        return labels_img(a)
    mri_int = lambda: labels_img(np.random.default_rng(3).integers(0, 3000, (20, 24, 28)).astype(np.int16))
    return [
        lab("labels_fractional", lambda: img(), "invalid_input"),
        lab("labels_negative", lambda: with_value(-1, np.int16), "invalid_input"),
        lab("labels_all_negative", lambda: labels_img(-np.ones((4, 5, 6), np.int16)), "invalid_input"),
        lab("labels_over_16_bits", lambda: with_value(70000), "invalid_input"),
        lab("labels_value_42", lambda: with_value(42, np.uint8), "label_convention", says="42"),
        lab("labels_value_10_in_dosma", lambda: with_value(10, np.uint8), "label_convention"),
        lab("labels_value_11_in_pymskt", lambda: with_value(11, np.uint8), "label_convention", conv="pymskt"),
        lab("labels_value_300_uint16", lambda: with_value(300, np.uint16), "label_convention"),
        lab("labels_mri_as_labels", mri_int, "label_convention", says="looks like an image"),
        lab("labels_mri_float_as_labels", lambda: img((20, 24, 28)), "invalid_input"),
        lab("labels_all_background", lambda: labels_img(np.zeros((10, 10, 10), np.uint8)), "missing_structures"),
        lab("labels_no_femur", lambda: labels_img(knee_array(femur=False)), "missing_structures"),
        lab("labels_no_cartilage", lambda: labels_img(knee_array(cartilage=False)), "missing_structures"),
        lab("labels_only_tibia", lambda: labels_img(knee_array(femur=False, patella=False, cartilage=False)),
            "missing_structures"),
        lab("labels_unknown_convention_name", lambda: labels_img(knee_array()), "label_convention", conv="dosmaa",
            says="Unknown label convention"),
        lab("labels_no_tibial_cartilage_for_laterality",
            lambda: labels_img(np.where(np.isin(knee_array(), (3, 4)), 0, knee_array()).astype(np.uint8)),
            "missing_structures"),
    ]


def json_map_cases() -> List[Case]:
    K = "JSON label maps (negative, duplicate, huge or non-integer keys, true/float codes, bad files)"
    # a complete, correct DOSMA map with one fault each, so that the fault alone must be caught
    full = ('"0": "background", "1": "patellar_cartilage", "2": "femoral_cartilage", "3": "medial_tibial_cartilage", '
            '"4": "lateral_tibial_cartilage", "5": "medial_meniscus", "6": "lateral_meniscus", "7": "femur", '
            '"8": "tibia", "9": "patella"')
    docs = {  # name: (JSON text, text the message must contain)
        "negative_key": ('{%s, "-1": "femur"}' % full, "-1"),
        "duplicate_key": ('{%s, "7": "tibia"}' % full, "twice"),
        "true_as_code": ('{%s, "10": true}' % full, "true"),
        "false_as_code": ('{%s, "10": false}' % full, "false"),
        "float_code": ('{%s, "10": 10.0}' % full, "10.0"),
        "huge_key_digits": ('{%s, "100000000000000": "femur"}' % full, "outside"),
        "huge_key_exponent": ('{%s, "1e14": "femur"}' % full, "not an integer"),
        "key_65536": ('{%s, "65536": "femur"}' % full, "outside"),
        "word_key": ('{%s, "femur": 7}' % full, "not an integer"),
        "unknown_tissue": ('{%s, "10": "thigh_bone"}' % full, "thigh_bone"),
        "code_11": ('{%s, "10": 11}' % full, "11"),
        "code_minus_1": ('{%s, "10": -1}' % full, "-1"),
        "nan_value": ('{%s, "10": NaN}' % full, "NaN"),
        "list_value": ('{%s, "10": ["femur"]}' % full, "femur"),
        "not_json": ('{%s,' % full, "not valid JSON"),
        "json_list": ('["femur", "tibia"]', "JSON object"),
        "empty_object": ('{}', "JSON object"),
        "labels_not_object": ('{"labels": 7}', "labels"),
        "utf16_bom": (None, "not valid JSON"),
    }
    out: List[Case] = []
    for name, (text, says) in docs.items():
        def build(t, d, name=name, text=text, says=says):
            f = t / (name + ".json")
            if text is None:
                f.write_bytes(("{%s}" % full).encode("utf-16"))
            else:
                f.write_text(text)
            lab = write(labels_img(knee_array()), t / "knee.nrrd")
            return Built(analyze(lab, str(f)), "label_convention", says=says)
        out.append(Case("json_" + name, K, build))
    out.append(Case("json_file_missing", K, lambda t, d: Built(
        analyze(write(labels_img(knee_array()), t / "k.nrrd"), str(t / "nope.json")), "label_convention",
        says="does not exist")))
    out.append(Case("json_folder_given", K, lambda t, d: Built(
        analyze(write(labels_img(knee_array()), t / "k.nrrd"), str(_folder(t / "maps", {}))), "label_convention")))
    return out


def _mese_echo(src: Path, dest: Path, edit: Optional[Callable[[Any, int], None]] = None, drop: Optional[int] = None,
               all_echoes: bool = False, truncate: Optional[int] = None) -> Path:
    """A copy of (one echo of) the real MESE series, optionally edited file by file."""
    import pydicom

    from KneePipelineLib.io import dicom

    dest.mkdir()
    files = sorted(str(f) for f in src.iterdir())
    groups = dicom.group_by_echo(files)
    tes = sorted(groups)
    chosen = [f for te in tes[:3] for f in groups[te]] if all_echoes else groups[tes[0]]   # 3 echoes: enough
    chosen = sorted(chosen, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[0]))
    for n, f in enumerate(chosen):
        if drop is not None and n == drop:
            continue
        ds = pydicom.dcmread(f)
        if edit is not None:
            edit(ds, n)
        target = dest / ("IM%04d" % n)
        ds.save_as(str(target))
        if truncate is not None and n == truncate % len(chosen):
            target.write_bytes(target.read_bytes()[:-2000])
    return dest


def dicom_cases() -> List[Case]:
    K = "DICOM series (missing, duplicate or truncated slices, no pixels, mixed series, echo times)"
    Z = "zip archives (path escapes, links, corrupt, empty, no DICOM)"
    out: List[Case] = []

    def strip(ds, n):
        del ds.PixelData

    def two_series(ds, n):
        if n % 2:
            ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"

    def dup_position(ds, n):
        if n == 5:
            ds.ImagePositionPatient = list(ds.ImagePositionPatient)
            ds.ImagePositionPatient[0] = ds.ImagePositionPatient[0] + 0.0

    def mese(name, kwargs, cat, argv=run_image, says=None, kind=K):
        out.append(Case(name, kind, lambda t, d: Built(argv(_mese_echo(d["mese"], t / name, **kwargs)), cat,
                                                        says=says), needs=("mese",)))
    mese("dicom_missing_slice", {"drop": 8}, "dicom_problem")
    mese("dicom_no_pixel_data", {"edit": strip}, "dicom_problem")
    mese("dicom_mixed_series", {"edit": two_series}, "dicom_problem", says="2 DICOM series")
    mese("dicom_truncated_slice", {"truncate": 4}, "input_unreadable", says="truncated")
    mese("dicom_truncated_last_slice", {"truncate": -1}, "input_unreadable", says="truncated")

    def bad_te(ds, n):
        if n == 3:   # a text value where a number must be (pydicom refuses to write it as DS)
            ds.add_new(0x00180081, "LO", "abc")

    def no_te(ds, n):
        if n == 3:
            del ds.EchoTime
    echoes = lambda p: ["analyze", "--labels", "{knee}", "--label-convention", "canonical", "--echoes", str(p),
                        "--no-report"]
    mese("dicom_malformed_echo_time_run", {"edit": bad_te}, "dicom_problem", says="malformed echo time")
    for name, edit, cat, says in [("t2_malformed_echo_time", bad_te, "dicom_problem", "malformed echo time"),
                                  ("t2_missing_echo_time", no_te, "t2_failed", "no echo time"),
                                  ("t2_two_series", two_series, "dicom_problem", "series")]:
        out.append(Case(name, K, lambda t, d, name=name, edit=edit, cat=cat, says=says: Built(
            [a.replace("{knee}", str(d["knee"])) for a in echoes(_mese_echo(d["mese"], t / name, edit=edit,
                                                                             all_echoes=True))], cat, says=says),
            needs=("mese", "knee")))
    out.append(Case("t2_zip_without_dicom", Z, lambda t, d: Built(
        [a.replace("{knee}", str(d["knee"])) for a in echoes(zip_of(t / "echoes.zip", {"notes.txt": b"x"}))],
        "dicom_problem", says="echoes.zip"), needs=("knee",)))
    out.append(Case("t2_single_echo", K, lambda t, d: Built(
        [a.replace("{knee}", str(d["knee"])) for a in echoes(_mese_echo(d["mese"], t / "one"))], "t2_failed"),
        needs=("mese", "knee")))
    out.append(Case("dicom_empty_file", K, lambda t, d: Built(run_image(_bytes(t / "e.dcm", b"")), "input_unreadable")))
    out.append(Case("dicom_garbage_file", K, lambda t, d: Built(
        run_image(_bytes(t / "g.dcm", b"\0" * 128 + b"DICM" + b"\x01" * 300)), "dicom_problem")))
    out.append(Case("dicom_folder_without_dicom", K, lambda t, d: Built(
        run_image(_folder(t / "nodicom", {"readme.txt": b"x"})), "dicom_problem")))
    out.append(Case("dicom_empty_folder", K, lambda t, d: Built(run_image(_folder(t / "void", {})), "dicom_problem")))
    # zips
    zips = {
        "zip_slip_dotdot": ({"../../escape.dcm": b"x"}, "invalid_input"),
        "zip_slip_absolute": ({"/etc/escape.dcm": b"x"}, "invalid_input"),
        "zip_slip_windows_drive": ({"C:/escape.dcm": b"x"}, "invalid_input"),
        "zip_empty": ({}, "dicom_problem"),
        "zip_text_only": ({"notes.txt": b"hello"}, "dicom_problem"),
    }
    for name, (members, cat) in zips.items():
        out.append(Case(name, Z, lambda t, d, name=name, members=members, cat=cat: Built(
            run_image(zip_of(t / (name + ".zip"), members)), cat, says=name + ".zip")))
    out.append(Case("zip_corrupt", Z, lambda t, d: Built(
        run_image(_bytes(t / "bad.zip", b"PK\x03\x04" + b"\0" * 50)), "input_unreadable", says="bad.zip")))
    out.append(Case("zip_truncated", Z, lambda t, d: Built(
        run_image(cut(zip_of(t / "full.zip", {"a.dcm": np.random.default_rng(1).bytes(20000)}), 0.5)),
        "input_unreadable")))

    def symlink_zip(t, d):
        z = t / "link.zip"
        with zipfile.ZipFile(z, "w") as zf:
            info = zipfile.ZipInfo("link.dcm")
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
        return Built(run_image(z), "invalid_input")
    out.append(Case("zip_symlink", Z, symlink_zip))

    def zip_series(t, d, **kw):
        folder = _mese_echo(d["mese"], t / "series", **kw)
        z = t / "series.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for f in sorted(folder.iterdir()):
                zf.write(f, "series/" + f.name)
        return z
    out.append(Case("zip_two_series", Z, lambda t, d: Built(run_image(zip_series(t, d, edit=two_series)),
                                                            "dicom_problem", says="series.zip"), needs=("mese",)))
    out.append(Case("zip_missing_slice", Z, lambda t, d: Built(run_image(zip_series(t, d, drop=6)),
                                                               "dicom_problem"), needs=("mese",)))
    return out


def _bytes(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def _folder(p: Path, files: Dict[str, bytes]) -> Path:
    p.mkdir()
    for n, data in files.items():
        (p / n).write_bytes(data)
    return p


def corpus(reference_means=None) -> List[Case]:
    """Every case; the valid-but-odd ones compare with ``reference_means`` (the coarse knee's regional means)
    and are left out when it is None (listing names only)."""
    from odd_inputs import mismatch_and_misc_cases, odd_valid_cases, output_and_machine_cases, real_knee_broken_cases

    cases = (broken_file_cases() + detached_cases() + nonfinite_cases() + geometry_cases() + label_value_cases() + json_map_cases()
             + real_knee_broken_cases() + dicom_cases() + output_and_machine_cases() + mismatch_and_misc_cases()
             + odd_valid_cases(reference_means or {}))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


def counts_by_kind(cases: List[Case]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for c in cases:
        out[c.kind] = out.get(c.kind, 0) + 1
    return out


def coarse_knee(sample_labels: Path, dest: Path) -> Path:
    """The real sample knee on a 3 x 3 x 2 coarser grid (128 x 128 x 80), canonical labels, as NRRD."""
    from synthetic_mri import coarse_grid, load_sample_labels, variant_labels

    src = load_sample_labels(sample_labels)
    vol = variant_labels(src, coarse_grid(src, (3, 3, 2)))
    return write(vol.to_sitk(), dest, True)
