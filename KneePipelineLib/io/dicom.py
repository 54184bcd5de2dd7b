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


def group_by_echo(files: List[str]) -> Dict[float, List[str]]:
    """Group a series' files by echo time (ms)."""
    groups: Dict[float, List[str]] = {}
    for f in files:
        te = read_tags(f, [TAG_ECHO_TIME])[TAG_ECHO_TIME]
        key = round(float(te), 4) if te not in (None, "") else float("nan")
        groups.setdefault(key, []).append(f)
    return groups


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

    check_slice_spacing(files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise DicomError("Cannot read the DICOM series: %s" % str(exc).strip().splitlines()[-1]) from exc
