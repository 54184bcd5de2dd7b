"""DICOM series discovery and reading with SimpleITK (files may lack extensions).

Patient fields are never copied into our outputs: only geometry and the acquisition parameters the
pipeline needs are read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..errors import DicomError

TAG_ECHO_TIME = "0018|0081"
TAG_REPETITION_TIME = "0018|0080"
TAG_FLIP_ANGLE = "0018|1314"
TAG_ECHO_NUMBER = "0018|0086"
TAG_POSITION = "0020|0032"
TAG_ORIENTATION = "0020|0037"
TAG_SERIES_DESCRIPTION = "0008|103e"


@dataclass
class DicomSeries:
    series_uid: str
    files: List[str]
    description: str = ""


def is_dicom_file(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def find_series(folder: str | os.PathLike) -> List[DicomSeries]:
    """All DICOM series under ``folder`` (recursively), largest first."""
    import SimpleITK as sitk

    folder = str(folder)
    dirs = [folder] + [os.path.join(r, d) for r, ds, _ in os.walk(folder) for d in ds]
    found: Dict[str, DicomSeries] = {}
    for d in dirs:
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(d) or ()
        except RuntimeError:
            uids = ()
        for uid in uids:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, uid, False, False, False))
            s = found.setdefault(uid, DicomSeries(uid, []))
            s.files.extend(files)
    return sorted(found.values(), key=lambda s: -len(s.files))


def single_series(folder: str | os.PathLike, shown_as: Optional[str] = None) -> DicomSeries:
    """The one DICOM series under ``folder``; none or several is an error (which one to use is never
    guessed). ``shown_as`` names the input in messages (e.g. the zip it was unpacked from)."""
    name = shown_as or Path(folder).name
    series = find_series(folder)
    if not series:
        raise DicomError("No DICOM files were found in %s." % name,
                         hint="Point the pipeline at a folder holding one DICOM series (files may lack .dcm).")
    if len(series) > 1:
        raise DicomError("%s holds %d DICOM series (%s); which one to analyse is ambiguous."
                         % (name, len(series), ", ".join("%d files" % len(s.files) for s in series)),
                         hint="Give the folder (or one file) of a single series.")
    listed = {os.path.realpath(f) for f in series[0].files}
    strays = sorted(str(f) for f in Path(folder).rglob("*")
                    if f.is_file() and os.path.realpath(str(f)) not in listed and is_dicom_file(f))
    if strays:   # GDCM leaves out files it cannot parse (e.g. truncated): never analyse the rest silently
        from .validate import check_dicom_pixel_data

        check_dicom_pixel_data(strays)
        raise DicomError("%d DICOM file(s) in %s are not part of its series (e.g. %s)."
                         % (len(strays), name, Path(strays[0]).name),
                         hint="Check the file(s) (truncated or from another series) and export the series again.")
    return series[0]


def parse_echo_time(value: Optional[str], filename: str) -> Optional[float]:
    """EchoTime (0018,0081) in ms: None when the tag is absent or empty; a malformed value is an error
    (never read as missing)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        te = float(str(value).split("\\")[0])
    except ValueError:
        raise DicomError("DICOM file %s has a malformed echo time (0018,0081): %r." % (Path(filename).name, value[:40]),
                         hint="The echo time must be a number of milliseconds; fix or re-export the series.") from None
    if not np.isfinite(te) or te < 0:
        raise DicomError("DICOM file %s has an impossible echo time (0018,0081): %r." % (Path(filename).name, value[:40]),
                         hint="The echo time must be a non-negative number of milliseconds.")
    return te


def read_tags(path: str, tags: List[str]) -> Dict[str, Optional[str]]:
    import SimpleITK as sitk

    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.LoadPrivateTagsOn()
    try:
        r.ReadImageInformation()
    except RuntimeError as exc:
        raise DicomError("Cannot read DICOM header of %s: %s" % (Path(path).name, exc)) from exc
    return {t: (r.GetMetaData(t).strip() if r.HasMetaDataKey(t) else None) for t in tags}


@dataclass
class EchoGroup:
    echo_number: Optional[int]      # EchoNumbers (0018,0086), None where absent
    echo_time_ms: Optional[float]   # EchoTime (0018,0081), None where absent
    files: List[str]


def echo_groups(files: List[str]) -> List[EchoGroup]:
    """A series' files grouped into echoes as the reference does (DOSMA ``group_by="EchoNumbers"``, then
    ``"EchoTime"``): by EchoNumbers, then by EchoTime within it; files without either tag form one group (a
    series without EchoTime is one image, never one "echo" per file). Ordered by echo time, then number."""
    groups: Dict[tuple, EchoGroup] = {}
    for f in files:
        tags = read_tags(f, [TAG_ECHO_NUMBER, TAG_ECHO_TIME])
        te = parse_echo_time(tags[TAG_ECHO_TIME], f)
        try:
            num: Optional[int] = int(float(str(tags[TAG_ECHO_NUMBER]).split("\\")[0]))
        except (TypeError, ValueError):
            num = None
        key = (num, None if te is None else round(te, 4))
        groups.setdefault(key, EchoGroup(num, key[1], [])).files.append(f)
    return sorted(groups.values(), key=lambda g: (g.echo_time_ms is None, g.echo_time_ms or 0.0,
                                                  g.echo_number if g.echo_number is not None else -1))


def group_by_echo(files: List[str]) -> Dict[float, List[str]]:
    """Files per echo (:func:`echo_groups`), keyed by echo time (ms) where the echoes' times differ, else by
    echo number; one group (key NaN) when the series carries neither."""
    gs = echo_groups(files)
    tes = [g.echo_time_ms for g in gs]
    if len(gs) > 1 and all(t is not None for t in tes) and len(set(tes)) == len(gs):
        return {float(g.echo_time_ms): g.files for g in gs}
    nums = [g.echo_number for g in gs]
    if len(gs) > 1 and all(v is not None for v in nums) and len(set(nums)) == len(gs):
        return {float(g.echo_number): g.files for g in gs}
    if len(gs) > 1:
        return {float(n + 1): g.files for n, g in enumerate(gs)}
    return {float(tes[0]) if tes and tes[0] is not None else float("nan"): gs[0].files if gs else []}


def check_slice_spacing(files: List[str]) -> None:
    """Raise when slice positions show gaps (missing slices) or duplicates."""
    if len(files) < 3:
        return
    tags = [read_tags(f, [TAG_POSITION, TAG_ORIENTATION]) for f in files]
    try:
        orient = np.array([float(v) for v in tags[0][TAG_ORIENTATION].split("\\")])
        pos = np.array([[float(v) for v in t[TAG_POSITION].split("\\")] for t in tags])
    except (AttributeError, ValueError):
        return  # no geometry tags: SimpleITK decides
    normal = np.cross(orient[:3], orient[3:])
    d = np.sort(pos @ normal)
    gaps = np.diff(d)
    if np.any(gaps < 1e-3):
        raise DicomError("The DICOM series has %d slices at duplicate positions." % int(np.sum(gaps < 1e-3)),
                         hint="The folder may mix several series or echoes; give one series per folder.")
    med = float(np.median(gaps))
    if np.any(gaps > 1.5 * med):
        raise DicomError("The DICOM series has missing slices (a gap of %.2f mm where slices are %.2f mm apart)."
                         % (float(gaps.max()), med), hint="Export the complete series again.")


def read_series_files(files: List[str]):
    """Read an ordered list of slice files into a SimpleITK image."""
    import SimpleITK as sitk

    from .validate import check_dicom_pixel_data

    check_slice_spacing(files)
    check_dicom_pixel_data(files)   # GDCM may zero-fill a slice whose pixel data is cut short
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise DicomError("Cannot read the DICOM series: %s" % str(exc).strip().splitlines()[-1]) from exc
