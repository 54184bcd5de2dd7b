"""Checks of everything read, before anyone computes with it: the file holds all the data its header
promises (in every format: NIfTI plain or gzipped, MetaImage, NRRD, DICOM), float voxels are finite, and the
geometry is one a knee MRI can have (spacing, field of view, direction matrix).

SimpleITK zero-fills a short NIfTI (gzipped or not) and reads NaN/Inf in a NIfTI as 0, and a short
MetaImage fails with "No such file or directory"; those would give wrong numbers or wrong messages, so
the raw bytes are checked here, by our own reading of the header.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import InputUnreadableError, InvalidInputError

# Geometry a knee MRI (or a label map made from one) can have. The finest clinical/research knee
# sequences are ~0.1 mm in plane; the thickest 2D slices ~6 mm (with gaps). A knee field of view is
# under ~300 mm; 1000 mm per axis leaves room for whole-leg scouts while rejecting metres.
MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 8.0
MAX_EXTENT_MM = 1000.0
SHEAR_TOLERANCE = 1e-3      # |cos| between direction axes above this: not orthogonal
_CHUNK = 1 << 22

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8", 32: "c8", 1792: "c16", 128: "u1", 2304: "u1"}
_META_DTYPES = {"MET_UCHAR": "u1", "MET_CHAR": "i1", "MET_SHORT": "i2", "MET_USHORT": "u2", "MET_INT": "i4",
                "MET_UINT": "u4", "MET_LONG": "i4", "MET_ULONG": "u4", "MET_LONG_LONG": "i8",
                "MET_ULONG_LONG": "u8", "MET_FLOAT": "f4", "MET_DOUBLE": "f8"}


def _truncated(path: Path, have: int, need: int, unit: str = "bytes of voxel data") -> InputUnreadableError:
    pct = 100.0 * have / need if need else 0.0
    return InputUnreadableError(
        "%s is truncated: it holds %d of the %d %s its header promises (%.0f %%)." % (path.name, have, need, unit, pct),
        hint="Copy or export the file again; the end of the file is missing.")


class _Counter:
    """Counts data bytes and non-finite values of a float stream arriving in arbitrary chunks."""

    def __init__(self, dtype: Optional[np.dtype]) -> None:
        self.dtype = dtype if dtype is not None and dtype.kind in "fc" else None
        self.carry = b""
        self.nbytes = 0
        self.nonfinite = 0

    def feed(self, data: bytes) -> None:
        self.nbytes += len(data)
        if self.dtype is None or not data:
            return
        buf = self.carry + data
        usable = len(buf) - len(buf) % self.dtype.itemsize
        if usable:
            vals = np.frombuffer(buf[:usable], dtype=self.dtype)
            self.nonfinite += int(vals.size - np.count_nonzero(np.isfinite(vals)))
        self.carry = buf[usable:]


def _nifti_header(head: bytes, path: Path) -> Optional[Tuple[int, np.dtype, int]]:
    """(data offset, dtype, voxel count) from a NIfTI-1/2 header, or None when it is not one we know."""
    if len(head) < 348:
        raise InputUnreadableError("%s is truncated: only %d bytes, less than a NIfTI header." % (path.name, len(head)),
                                   hint="Copy or export the file again.")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            code = struct.unpack(endian + "h", head[70:72])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if sizeof_hdr == 540 and len(head) >= 540:
            code = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = int(struct.unpack(endian + "q", head[168:176])[0])
            break
    else:
        return None
    if code not in _NIFTI_DTYPES:
        return None
    n = 1
    for d in dims[1:1 + max(0, min(int(dims[0]), 7))]:
        n *= max(int(d), 1)
    dtype = np.dtype(_NIFTI_DTYPES[code]).newbyteorder(endian)
    if code == 128:
        n *= 3
    elif code == 2304:
        n *= 4
    return max(offset, 348 if sizeof_hdr == 348 else 540), dtype, n


def _stream(fh, counter: _Counter, path: Path) -> None:
    """Feed ``fh`` to ``counter`` to its end; a gzip stream cut short just ends (the count tells)."""
    try:
        while True:
            chunk = fh.read(_CHUNK)
            if not chunk:
                return
            counter.feed(chunk)
    except EOFError:   # a gzip stream cut before its end marker: what was decompressed is counted
        return
    except (OSError, zlib.error) as exc:
        raise InputUnreadableError("%s is corrupt: its compressed data cannot be read (%s)."
                                   % (path.name, type(exc).__name__),
                                   hint="Copy or export the file again.") from exc


def check_nifti(path: Path) -> None:
    gz = path.name.lower().endswith(".gz")
    opener = gzip.open if gz else open
    try:
        with opener(str(path), "rb") as fh:
            try:
                head = fh.read(540)
            except (EOFError, OSError, zlib.error) as exc:
                raise InputUnreadableError("%s is corrupt or truncated: its header cannot be read." % path.name,
                                           hint="Copy or export the file again.") from exc
            info = _nifti_header(head, path)
            if info is None:
                return  # not a header we understand: SimpleITK decides
            offset, dtype, n = info
            need = n * dtype.itemsize
            counter = _Counter(dtype)
            if len(head) > offset:
                counter.feed(head[offset:])
            else:
                skip = offset - len(head)
                pad = fh.read(skip)
                if len(pad) < skip:
                    raise _truncated(path, 0, need)
            _stream(fh, counter, path)
    except OSError as exc:
        raise InputUnreadableError("Cannot read %s (%s)." % (path.name, os.strerror(exc.errno or 0) if exc.errno
                                                              else type(exc).__name__)) from exc
    if counter.nbytes < need:
        raise _truncated(path, counter.nbytes, need)
    if counter.nonfinite:
        raise InvalidInputError("%s contains %d NaN or infinite voxel values." % (path.name, counter.nonfinite),
                                hint="Re-export the volume; every voxel must be a finite number.")


def _meta_header(path: Path) -> Tuple[Dict[str, str], int]:
    """MetaImage header fields and the offset where local data starts."""
    with open(str(path), "rb") as fh:
        head = fh.read(1 << 16)
    fields: Dict[str, str] = {}
    pos = 0
    while pos < len(head):
        end = head.find(b"\n", pos)
        if end < 0:
            break
        line = head[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" in line:
            key, val = (x.strip() for x in line.split("=", 1))
            fields[key] = val
            if key == "ElementDataFile":
                return fields, pos
    raise InputUnreadableError(
        "%s is truncated or not a MetaImage file: its header ends before ElementDataFile." % path.name,
        hint="Copy or export the file again.")


def check_metaimage(path: Path) -> None:
    fields, data_at = _meta_header(path)
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        dtype = np.dtype(_META_DTYPES[fields.get("ElementType", "")])
        channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    except (KeyError, ValueError):
        raise InputUnreadableError("%s has a malformed MetaImage header (DimSize / ElementType)." % path.name,
                                   hint="Copy or export the file again.") from None
    if fields.get("BinaryDataByteOrderMSB", "False").lower() == "true":
        dtype = dtype.newbyteorder(">")
    need = int(np.prod(dims)) * channels * dtype.itemsize if dims else 0
    source = fields["ElementDataFile"]
    if source.upper() == "LOCAL":
        data_path, start = path, data_at
    elif source.upper().startswith("LIST") or "%" in source or " " in source:
        return  # one file per slice: SimpleITK checks each
    else:
        data_path = path.parent / source
        if not data_path.is_file():
            raise InputUnreadableError("The data file %s named by %s does not exist." % (source, path.name),
                                       hint="Keep the .raw/.zraw file beside its .mhd header.")
        hs = int(fields.get("HeaderSize", "0") or 0)
        start = max(hs, 0) if hs >= 0 else max(data_path.stat().st_size - need, 0)
    counter = _Counter(dtype)
    with open(str(data_path), "rb") as fh:
        fh.seek(start)
        if fields.get("CompressedData", "False").lower() == "true":
            d = zlib.decompressobj()
            try:
                while True:
                    chunk = fh.read(_CHUNK)
                    if not chunk:
                        break
                    counter.feed(d.decompress(chunk))
                counter.feed(d.flush())
            except zlib.error as exc:
                raise InputUnreadableError("%s is corrupt: its compressed data cannot be read." % path.name,
                                           hint="Copy or export the file again.") from exc
        else:
            _stream(fh, counter, path)
    if counter.nbytes < need:
        raise _truncated(path, counter.nbytes, need)
    if counter.nonfinite:
        raise InvalidInputError("%s contains %d NaN or infinite voxel values." % (path.name, counter.nonfinite),
                                hint="Re-export the volume; every voxel must be a finite number.")


def check_file_complete(path: Path) -> None:
    """Raise when a volume file holds less data than its header promises, or non-finite floats."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check_nifti(path)
    elif name.endswith((".mha", ".mhd")):
        check_metaimage(path)
    # NRRD: teem's reader already refuses short data ("fread got only ..."), raw or gzip, and NaN is kept.


def check_dicom_pixel_data(files: List[str]) -> None:
    """Every slice of a DICOM series holds the pixel bytes its Rows x Columns x bits promise."""
    import pydicom

    for f in files:
        try:
            ds = pydicom.dcmread(f, defer_size="1 KB")
        except Exception as exc:   # noqa: BLE001 - pydicom raises many types for a broken file
            raise InputUnreadableError("DICOM file %s cannot be read: it is truncated or corrupt." % Path(f).name,
                                       hint="Export the complete series again.") from exc
        elem = ds.get("PixelData")
        if elem is None or "TransferSyntaxUID" not in ds.get("file_meta", {}):
            continue  # no pixel data: the series reader says so; unknown syntax: GDCM decides
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            continue
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            bits = int(ds.BitsAllocated)
            spp = int(ds.get("SamplesPerPixel", 1))
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError):
            continue
        need = rows * cols * spp * frames * bits // 8
        have = len(ds.PixelData)
        if have < need:
            raise InputUnreadableError(
                "DICOM file %s is truncated: %d of the %d bytes of pixel data its header promises." % (
                    Path(f).name, have, need), hint="Export the complete series again.")


# -- geometry ------------------------------------------------------------------------------------
def check_geometry(spacing_mm, size_ijk, direction, name: str) -> List[str]:
    """Raise for geometry no knee MRI has; return warnings for geometry that is odd but usable."""
    spacing = np.asarray(spacing_mm, dtype=float)[:3]
    size = np.asarray(size_ijk, dtype=float)[:3]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(spacing)) or np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InvalidInputError(
            "%s has a voxel spacing of %s mm, which no knee MRI has." % (name, tuple(round(float(s), 4) for s in spacing)),
            hint="Check the header's spacing (it must be in mm, between %g and %g mm per axis)."
                 % (MIN_SPACING_MM, MAX_SPACING_MM))
    extent = spacing * size
    if np.any(extent > MAX_EXTENT_MM):
        raise InvalidInputError(
            "%s covers %s mm, far more than a knee." % (name, " x ".join("%.0f" % e for e in extent)),
            hint="Check the header's spacing and size (mm); a knee MRI covers well under %g mm per axis."
                 % MAX_EXTENT_MM)
    if not np.all(np.isfinite(d)):
        raise InvalidInputError("%s has a direction matrix with non-finite entries." % name,
                                hint="Fix or re-export the file's orientation.")
    norms = np.linalg.norm(d, axis=0)
    if np.any(norms < 1e-6) or abs(float(np.linalg.det(d / np.maximum(norms, 1e-12)))) < 1e-3:
        raise InvalidInputError("%s has a degenerate direction matrix (its axes are not independent)." % name,
                                hint="Fix or re-export the file's orientation.")
    warnings: List[str] = []
    unit = d / norms
    gram = unit.T @ unit
    off = np.abs(gram - np.eye(3)).max()
    if off > SHEAR_TOLERANCE:
        angle = float(np.degrees(np.arcsin(np.clip(off, 0.0, 1.0))))   # |cos| between axes -> degrees off 90
        warnings.append("%s has sheared (non-orthogonal) axes: they deviate from right angles by up to %.2f degrees; "
                        "geometry is computed in physical space, but check the export (gantry tilt?)." % (name, angle))
    return warnings
