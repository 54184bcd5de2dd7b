"""Read MRI volumes and label maps from NIfTI, NRRD, DICOM (folder, file, zip) into :class:`Volume`.

Every failure becomes a typed error with a hint; nothing is written next to the input.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import InputUnreadableError, InvalidInputError, UnsupportedFormatError
from . import dicom
from .safezip import safe_extract
from .validate import check_file_complete, check_geometry
from .volume import Volume

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (".nii.gz",):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _read_file_sitk(path: Path):
    import SimpleITK as sitk

    check_file_complete(path)   # short data / NaN that SimpleITK would turn into zeros
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise InputUnreadableError("Cannot read %s: the file is corrupt or truncated (%s)." % (path.name, last)) from exc


def _read_dicom_folder(folder: Path, echo_policy: str = "rss", shown_as: Optional[str] = None):
    """Read the one DICOM series under ``folder``; two echoes are combined per ``echo_policy``.
    ``shown_as`` names the input in messages (the zip, not the folder it was unpacked into)."""
    import SimpleITK as sitk

    chosen = dicom.single_series(folder, shown_as or folder.name)
    notes = {}
    groups = dicom.group_by_echo(chosen.files)
    if len(groups) > 1:
        tes = sorted(groups)
        images = [dicom.read_series_files(groups[te]) for te in tes]
        if echo_policy == "rss" and len(images) == 2:
            a = [sitk.GetArrayFromImage(im).astype(np.float32) for im in images]
            rss = sitk.GetImageFromArray(np.sqrt(a[0] ** 2 + a[1] ** 2))
            rss.CopyInformation(images[0])
            notes["echo_combination"] = "root-sum-of-squares of echoes TE=%s ms" % tes
            return rss, notes
        notes["echo_combination"] = "first echo (TE=%s ms) of %d" % (tes[0], len(tes))
        return images[0], notes
    return dicom.read_series_files(chosen.files), notes


def _read_any(path: Path, workdir: Optional[Path]):
    if not path.exists():
        raise InputUnreadableError("The input %s does not exist." % path, hint="Check the path.")
    if path.is_dir():
        return _read_dicom_folder(path)
    if path.stat().st_size == 0:
        raise InputUnreadableError("The input file %s is empty (0 bytes)." % path.name,
                                   hint="Copy or export the file again.")
    if zipfile.is_zipfile(path) or _suffix(path) == ".zip":
        tmp = Path(tempfile.mkdtemp(prefix="kneepipeline-zip-", dir=str(workdir) if workdir else None))
        safe_extract(path, tmp)
        return _read_dicom_folder(tmp, shown_as="the zip archive " + path.name)
    if dicom.is_dicom_file(path) or _suffix(path) == ".dcm":
        import SimpleITK as sitk

        uid = dicom.read_tags(str(path), ["0020|000e"])["0020|000e"]
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path.parent), uid or "")) if uid else []
        if len(files) > 1:
            groups = dicom.group_by_echo(files)
            mine = next((g for g in groups.values() if any(Path(f).resolve() == path.resolve() for f in g)), files)
            note = "read the series of %s" % path.name
            if len(groups) > 1:
                note += " (its echo only: %d of %d files)" % (len(mine), len(files))
            return dicom.read_series_files(mine), {"dicom_note": note}
        return _read_file_sitk(path), {}
    if _suffix(path) not in VOLUME_SUFFIXES:
        raise UnsupportedFormatError("The file type of %s is not supported." % path.name)
    return _read_file_sitk(path), {}


def _check_geometry(image, path: Path, allow_4d: bool) -> List[str]:
    """Raise for a shape or geometry the pipeline cannot use; return warnings for odd but usable ones."""
    dim = image.GetDimension()
    if dim == 2:
        raise InvalidInputError("%s is a 2D image; the pipeline needs a 3D volume." % path.name,
                                hint="Give the whole 3D series, not one slice.")
    if dim == 4 and not allow_4d:
        raise InvalidInputError("%s is a 4D volume; a 3D volume was expected here." % path.name,
                                hint="Multi-echo data goes to --echoes (T2); give one 3D image for segmentation.")
    if dim not in (3, 4):
        raise InvalidInputError("%s has %d dimensions; a 3D volume was expected." % (path.name, dim))
    size = image.GetSize()[:3]
    if min(size) < 2:
        raise InvalidInputError("%s is only %s voxels: not a 3D volume." % (path.name, "x".join(map(str, size))),
                                hint="Give the whole 3D series.")
    dim3 = np.array(image.GetDirection()).reshape(dim, dim)[:3, :3]
    warnings = check_geometry(image.GetSpacing()[:3], size, dim3, path.name)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError("%s has %d components per voxel; a scalar volume was expected."
                                % (path.name, image.GetNumberOfComponentsPerPixel()))
    return warnings


def read_volume(path: str | os.PathLike, role: str = "image", workdir: Optional[str | os.PathLike] = None,
                allow_4d: bool = False) -> Volume:
    """Read an MRI (``role='image'``) or a label map (``role='labels'``) into LPS-mm geometry."""
    path = Path(path)
    image, notes = _read_any(path, Path(workdir) if workdir else None)
    geometry_warnings = _check_geometry(image, path, allow_4d)
    if image.GetDimension() == 4:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(image)  # (t, k, j, i)
        sp, org = image.GetSpacing()[:3], image.GetOrigin()[:3]
        d4 = np.array(image.GetDirection()).reshape(4, 4)[:3, :3]
        vol = Volume(arr, sp, org, d4)
    else:
        vol = Volume.from_sitk(image)
    vol.metadata.update(notes)
    vol.metadata["source"] = path.name
    if geometry_warnings:
        vol.metadata["warnings"] = list(geometry_warnings)
    arr = vol.array
    if role == "labels":
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
                raise InvalidInputError("%s holds non-integer values; a label map was expected." % path.name,
                                        hint="Pass the segmentation (label map), not the MRI, to --labels.")
        if arr.min() < 0 or arr.max() > 65535:
            raise InvalidInputError("%s holds label values outside 0..65535." % path.name)
        vol.array = arr.astype(np.uint16 if arr.max() > 255 else np.uint8, copy=False)
    else:
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise InvalidInputError("%s contains %d NaN or infinite intensities." % (path.name, bad),
                                    hint="Re-export the image; intensities must be finite numbers.")
        if float(arr.max()) == float(arr.min()):
            raise InvalidInputError("%s has the same intensity in every voxel." % path.name,
                                    hint="The image is blank; check the export.")
    return vol


def read_image(path, workdir=None) -> Volume:
    return read_volume(path, "image", workdir)


def read_labels(path, workdir=None) -> Volume:
    return read_volume(path, "labels", workdir)


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> None:
    """Write atomically through the one writer layer (free-space check, temp name, rename)."""
    from .writers import write_volume as _write

    _write(volume, path, compress)
