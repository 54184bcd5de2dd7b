"""Read multi-echo data: a DICOM series holding several echoes (folder or zip, files may lack
extensions), a 4D NIfTI/NRRD plus echo times, or several 3D files (one per echo)."""
from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..errors import DicomError, InvalidInputError, T2Error
from ..io import dicom
from ..io.volume import Volume
from .types import MultiEcho

# Sequence parameters copied into MultiEcho.source (never patient fields).
SOURCE_TAGS = {
    "0008|0060": "modality",
    "0008|0070": "manufacturer",
    "0008|1090": "model",
    "0018|0020": "scanning_sequence",
    "0018|0021": "sequence_variant",
    "0018|0022": "scan_options",
    "0018|0023": "acquisition_type",
    "0018|0024": "sequence_name",
    "0018|0050": "slice_thickness_mm",
    "0018|0080": "repetition_time_ms",
    "0018|0087": "field_strength_t",
    "0018|0088": "spacing_between_slices_mm",
    "0018|0091": "echo_train_length",
    "0018|1314": "flip_angle_deg",
    "0008|103e": "series_description",
    "0019|10b7": "ge_gradient_duration_us",   # qDESS Tg (GE private)
    "0019|10b6": "ge_gradient_area",          # qDESS GlArea (GE private)
}
NUMERIC = {"slice_thickness_mm", "repetition_time_ms", "field_strength_t", "spacing_between_slices_mm",
           "echo_train_length", "flip_angle_deg", "ge_gradient_duration_us", "ge_gradient_area"}
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _num(value: Optional[str]) -> Optional[float]:
    if value in (None, ""):
        return None
    try:
        return float(str(value).split("\\")[0])
    except ValueError:
        return None


def _quiet_sitk():
    """Context: silence ITK's console warnings (e.g. 1e-3 slice non-uniformity) while reading."""
    import contextlib

    import SimpleITK as sitk

    @contextlib.contextmanager
    def cm():
        po = sitk.ProcessObject
        old = po.GetGlobalWarningDisplay()
        po.SetGlobalWarningDisplay(False)
        try:
            yield
        finally:
            po.SetGlobalWarningDisplay(old)
    return cm()


def _source_from_header(path: str) -> Dict[str, Any]:
    tags = dicom.read_tags(path, list(SOURCE_TAGS))
    out: Dict[str, Any] = {}
    for tag, name in SOURCE_TAGS.items():
        v = tags.get(tag)
        if v in (None, ""):
            continue
        out[name] = _num(v) if name in NUMERIC else v
    return {k: v for k, v in out.items() if v is not None}


def _volume_from_sitk(image) -> Volume:
    return Volume.from_sitk(image)


def _read_dicom_echoes(folder: Path, user_tes: Optional[np.ndarray] = None, shown_as: Optional[str] = None
                       ) -> MultiEcho:
    images, geoms, tes, source = _read_dicom_groups(folder, shown_as)
    if user_tes is not None and len(user_tes) == len(tes) and np.any(~np.isfinite(tes)):
        tes = np.asarray(user_tes, dtype=float)          # the series lacks echo times: the user's
        source["echo_times_from"] = "user"
    return _assemble(images, geoms, tes, source)


def _read_dicom_groups(folder: Path, shown_as: Optional[str] = None):
    """(images, volumes, echo_times_ms, source) of the DICOM series under ``folder``, one entry per echo;
    ``shown_as`` names the input in messages (the zip, not the folder it was unpacked into)."""
    name = shown_as or folder.name
    series = dicom.find_series(folder)
    if not series:
        raise DicomError("No DICOM files were found in %s." % name,
                         hint="Point --echoes at a folder holding the multi-echo DICOM series.")
    # Echoes are sometimes exported as separate series: gather every series on the same grid.
    files: List[str] = []
    notes: Dict[str, Any] = {}
    if len(series) == 1:
        files = list(series[0].files)
    else:
        files = list(series[0].files)
        notes["dicom_series_note"] = "%d series found" % len(series)
    tags = [dicom.read_tags(f, [dicom.TAG_ECHO_TIME, dicom.TAG_POSITION, dicom.TAG_ORIENTATION, dicom.TAG_ECHO_NUMBER])
            for f in files]
    if len(series) > 1:
        te0 = {t[dicom.TAG_ECHO_TIME] for t in tags}
        siblings = [s for s in series[1:] if len(s.files) == len(series[0].files)]
        # Echoes exported as one series each: every series is one echo on the same number of slices.
        # Anything else (two acquisitions in one folder) is ambiguous, as for `run` and `analyze`.
        if len(te0) != 1 or len(siblings) != len(series) - 1:
            raise DicomError("%s holds %d DICOM series (%s); which one to analyse is ambiguous."
                             % (name, len(series), ", ".join("%d files" % len(s.files) for s in series)),
                             hint="Give the folder (or zip) of a single multi-echo series, or one folder per echo.")
        for s in siblings:
            files.extend(s.files)
            tags.extend(dicom.read_tags(f, [dicom.TAG_ECHO_TIME, dicom.TAG_POSITION, dicom.TAG_ORIENTATION,
                                            dicom.TAG_ECHO_NUMBER]) for f in s.files)
        notes["dicom_series_note"] = "%d series found; echoes gathered from series with %d slices" % (
            len(series), len(series[0].files))
    # Echoes as the reference groups them: EchoNumbers, then EchoTime (DOSMA group_by="EchoNumbers" /
    # "EchoTime"); a file without EchoTime is never an echo of its own.
    index = {f: n for n, f in enumerate(files)}
    missing_te = [n for n, t in enumerate(tags)
                  if dicom.parse_echo_time(t[dicom.TAG_ECHO_TIME], files[n]) is None]   # malformed: an error
    if 0 < len(missing_te) < len(files):   # some slices lost their echo time: never guess which echo
        raise T2Error("DICOM file %s has no echo time (0018,0081)." % Path(files[missing_te[0]]).name,
                      hint="Export the series with its echo times, or give a 4D NIfTI/NRRD with --echo-times-ms.")
    egroups = dicom.echo_groups(files)
    counts = {_echo_label(g): len(g.files) for g in egroups}
    if len(set(counts.values())) > 1:
        raise DicomError("The echoes of the DICOM series have different numbers of slices: %s."
                         % ", ".join("%s: %d" % kv for kv in counts.items()),
                         hint="Export the complete multi-echo series again.")
    images, geoms = [], []
    with _quiet_sitk():
        for g in egroups:
            ix = [index[f] for f in g.files]
            try:
                orient = np.array([float(v) for v in tags[ix[0]][dicom.TAG_ORIENTATION].split("\\")])
                normal = np.cross(orient[:3], orient[3:])
                pos = np.array([[float(v) for v in tags[i][dicom.TAG_POSITION].split("\\")] for i in ix])
                ix = [ix[o] for o in np.argsort(pos @ normal, kind="stable")]
            except (AttributeError, ValueError):
                pass  # no geometry tags: keep GDCM's order
            img = dicom.read_series_files([files[i] for i in ix])
            vol = _volume_from_sitk(img)
            images.append(vol.array.astype(np.float32))
            geoms.append(vol)
    tes = np.array([np.nan if g.echo_time_ms is None else g.echo_time_ms for g in egroups], dtype=float)
    nums = [g.echo_number for g in egroups]
    by_number = len(egroups) > 1 and len({t for t in tes if np.isfinite(t)}) < len(egroups)
    notes["echo_grouping"] = "EchoNumbers" if by_number else ("EchoTime" if len(egroups) > 1 else "one group")
    if by_number and any(n is not None for n in nums):
        notes["echo_numbers"] = [n for n in nums]
    if np.any(~np.isfinite(tes)):
        notes["missing_echo_time_file"] = Path(files[index[egroups[int(np.argmax(~np.isfinite(tes)))].files[0]]]).name
    source = _source_from_header(egroups[0].files[0])
    source.update(notes)
    source["input_format"] = "dicom"
    return images, geoms, tes, source


def _echo_label(g) -> str:
    if g.echo_time_ms is not None:
        return "TE %s ms" % _fmt(g.echo_time_ms) + ("" if g.echo_number is None else " (echo %d)" % g.echo_number)
    return "echo %s" % g.echo_number if g.echo_number is not None else "no echo tags"


def _assemble(images: List[np.ndarray], geoms: List[Volume], tes: np.ndarray, source: Dict[str, Any]) -> MultiEcho:
    ref = geoms[0]
    for n, g in enumerate(geoms[1:], start=1):
        if not ref.same_geometry(g, tol=1e-3):
            raise InvalidInputError(
                "Echo %d (TE %s ms) has a different grid from echo 1 (size %s vs %s, spacing %s vs %s mm)."
                % (n + 1, _fmt(tes[n]), g.shape_ijk, ref.shape_ijk, np.round(g.spacing_mm, 3).tolist(),
                   np.round(ref.spacing_mm, 3).tolist()),
                hint="All echoes must share one grid (size, spacing, origin, orientation).")
    if len(tes) > 1 and np.any(~np.isfinite(tes)):
        raise T2Error("DICOM file %s has no echo time (0018,0081)." % source.get("missing_echo_time_file", "?")
                      if source.get("missing_echo_time_file") else "Some echoes have no echo time.",
                      hint="Export the series with its echo times, or pass --echo-times-ms with one value per echo.")
    order = np.argsort(tes, kind="stable")
    tes = tes[order]
    arr = np.stack([images[o] for o in order]).astype(np.float32, copy=False)
    if len(tes) < 2:
        raise T2Error("Only one echo was found (TE %s ms); T2 mapping needs at least two echoes." % _fmt(tes[0]) if
                      len(tes) and np.isfinite(tes[0]) else "Only one echo was found; T2 mapping needs at least two.",
                      hint="Give the whole multi-echo series (all echo times), or a 4D volume with --echo-times-ms.")
    if not np.all(np.isfinite(tes)) or np.any(tes < 0):
        raise T2Error("Echo times must be finite, non-negative numbers of milliseconds; got %s." % tes.tolist())
    qdess_pair = len(tes) == 2 and source.get("echo_grouping") == "EchoNumbers"   # qDESS: one TE tag for both
    if np.any(np.diff(tes) <= 0) and not (qdess_pair and tes[0] == tes[1]):
        raise T2Error("Two echoes share the echo time %s ms." % _fmt(tes[np.argmin(np.diff(tes))]),
                      hint="Each echo needs its own echo time.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("The echo images contain NaN or infinite intensities.")
    geom = ref.with_array(arr[0])
    geom.metadata = {}
    source = dict(source)
    source["n_echo"] = int(len(tes))
    source["echo_times_ms"] = [float(t) for t in tes]
    return MultiEcho(arr, tes.astype(float), geom, source)


def _fmt(x: float) -> str:
    return ("%.3f" % x).rstrip("0").rstrip(".")


def _read_file(path: Path) -> Volume:
    from ..io.readers import read_volume

    return read_volume(path, "image", allow_4d=True)


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def load_echoes(paths: Sequence[str | os.PathLike], echo_times_ms: Optional[Sequence[float]] = None) -> MultiEcho:
    """Read multi-echo data into a :class:`MultiEcho`.

    * one DICOM folder (or zip of one, or one DICOM file of the series) holding several echoes: grouped by
      echo time (0018,0081); ``echo_times_ms``, when given, must match the number of echoes and overrides;
    * one 4D NIfTI/NRRD (echo as the 4th axis) plus ``echo_times_ms``;
    * several 3D files or DICOM folders, one per echo, plus ``echo_times_ms`` (DICOM echo times are used
      when not given).
    """
    paths = [Path(p) for p in (paths or [])]
    if not paths:
        raise T2Error("No echo images were given.", hint="Pass --echoes PATH [PATH ...].")
    for p in paths:
        if not p.exists():
            raise T2Error("The echo input %s does not exist." % p, hint="Check the path.")
    user_tes = None if echo_times_ms is None else np.asarray(list(echo_times_ms), dtype=float)

    if len(paths) == 1:
        p = paths[0]
        tmp: Optional[str] = None
        try:
            if p.is_file() and (zipfile.is_zipfile(p) or p.suffix.lower() == ".zip"):
                from ..io.safezip import safe_extract

                tmp = tempfile.mkdtemp(prefix="kneepipeline-echoes-")
                safe_extract(p, Path(tmp))
                me = _read_dicom_echoes(Path(tmp), user_tes, "the zip archive " + p.name)
            elif p.is_dir():
                me = _read_dicom_echoes(p, user_tes)
            elif dicom.is_dicom_file(p) and not _is_volume_file(p):
                me = _read_dicom_echoes(p.parent, user_tes)
            else:
                me = None
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
        if me is not None:
            return _override_tes(me, user_tes)
        vol = _read_file(p)
        if vol.array.ndim == 3:
            raise T2Error("%s is a single 3D image (one echo); T2 mapping needs at least two echoes." % p.name,
                          hint="Give a 4D volume (echoes on the 4th axis) or one file per echo, with --echo-times-ms.")
        n = vol.array.shape[0]
        if user_tes is None:
            raise T2Error("%s holds %d echoes but no echo times were given (NIfTI/NRRD files do not carry them)."
                          % (p.name, n), hint="Pass --echo-times-ms with %d values." % n)
        if len(user_tes) != n:
            raise T2Error("%s holds %d echoes but %d echo times were given." % (p.name, n, len(user_tes)),
                          hint="Pass one echo time per echo.")
        geoms = [Volume(vol.array[e], vol.spacing_mm, vol.origin_mm, vol.direction) for e in range(n)]
        return _assemble([g.array.astype(np.float32) for g in geoms], geoms, user_tes,
                         {"input_format": "4d-volume", "echo_times_from": "user"})

    # several inputs: one echo each
    images, geoms, tes, sources = [], [], [], []
    for p in paths:
        if p.is_dir() or (dicom.is_dicom_file(p) and not _is_volume_file(p)):
            ims, gs, ts, src = _read_dicom_groups(p if p.is_dir() else p.parent)
            if len(ims) != 1:
                raise T2Error("%s already holds %d echoes; give it alone, not with other echo inputs."
                              % (p.name, len(ims)), hint="Pass the multi-echo series as the only --echoes input.")
            images.append(ims[0])
            geoms.append(gs[0])
            tes.append(float(ts[0]))
            sources.append(src)
        else:
            vol = _read_file(p)
            if vol.array.ndim != 3:
                raise T2Error("%s is 4D; with several --echoes inputs each must be one 3D echo." % p.name)
            images.append(vol.array.astype(np.float32))
            geoms.append(vol)
            tes.append(None)
    if user_tes is not None:
        if len(user_tes) != len(paths):
            raise T2Error("%d echo files were given but %d echo times." % (len(paths), len(user_tes)),
                          hint="Pass one echo time per echo file, in the same order.")
        tes_arr, origin = user_tes, "user"
    else:
        missing = [paths[n].name for n, t in enumerate(tes) if t is None]
        if missing:
            raise T2Error("No echo times for %s (NIfTI/NRRD files do not carry them)." % ", ".join(missing),
                          hint="Pass --echo-times-ms with one value per echo file.")
        tes_arr, origin = np.array(tes, dtype=float), "dicom"
    source = dict(sources[0]) if sources else {}
    source.update({"input_format": "one-file-per-echo", "echo_times_from": origin})
    return _assemble(images, geoms, tes_arr, source)


def _override_tes(me: MultiEcho, user_tes: Optional[np.ndarray]) -> MultiEcho:
    me.source.setdefault("echo_times_from", "dicom")
    if user_tes is None:
        return me
    if len(user_tes) != me.n_echo:
        raise T2Error("The series holds %d echoes but %d echo times were given." % (me.n_echo, len(user_tes)),
                      hint="Leave out --echo-times-ms to use the DICOM echo times, or give one per echo.")
    order = np.argsort(user_tes, kind="stable")
    if np.any(np.diff(user_tes[order]) <= 0):
        raise T2Error("Two echoes share the echo time %s ms." % user_tes.tolist())
    me.source["dicom_echo_times_ms"] = [float(t) for t in me.echo_times_ms]
    me.echo_times_ms = user_tes[order].astype(float)
    me.images = me.images[order]
    me.source["echo_times_ms"] = [float(t) for t in me.echo_times_ms]
    me.source["echo_times_from"] = "user"
    return me
