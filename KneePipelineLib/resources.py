"""How much memory a step will need, estimated from its input before it starts, and the refusal when the
machine does not have it (a clear ``insufficient_memory`` error instead of the kernel's out-of-memory killer
taking the machine down).

The estimates are upper bounds of each step's peak working set, built from the arrays it allocates:
* morphometry: per structure, the native crop (mask + smoothed float32 field) and the 1 mm / 0.5 mm resampled
  fields the bone meshes are contoured on, plus the whole-volume label and region maps;
* t2: the echo stack (float32) with two working copies plus ~16 float64 per-voxel fit arrays (the bench's
  1.0 M-voxel, 8-echo MESE fit peaks at 441 MB RSS; the estimate is 0.85 GB);
* segmentation: the image resampled to the model's spacing (a knee model works at <= 0.7 mm) times the
  class logits (float16) and probabilities (float32) nnU-Net keeps for the whole volume.

On the sample knee (384 x 384 x 160 voxels of 0.36 x 0.36 x 0.7 mm) the morphometry estimate is 0.87 GB
(measured peak RSS of analyze: 0.69-0.76 GB, bench/results/analyze-*.json); with 10 mm voxels it is 420 GB.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import numpy as np

from .errors import InsufficientMemoryError

BASELINE_BYTES = 600 * 1024 ** 2      # interpreter, libraries, meshes and rays of a normal knee
SAFETY = 0.9                          # use at most this fraction of the available memory
BONE_FINE_STEP_MM = 0.5               # finest grid bone meshes are resampled to (target vertex counts)
MODEL_MAX_SPACING_MM = 0.7
SEGMENTATION_CLASSES = 11

_SIMULATED_AVAILABLE: Optional[int] = None


@contextlib.contextmanager
def simulated_available_memory(nbytes: Optional[int]) -> Iterator[None]:
    """Within the block the machine reports ``nbytes`` available (a small machine, for tests)."""
    global _SIMULATED_AVAILABLE
    old = _SIMULATED_AVAILABLE
    _SIMULATED_AVAILABLE = nbytes
    try:
        yield
    finally:
        _SIMULATED_AVAILABLE = old


def _cgroup_room() -> Optional[int]:
    """Bytes left under a cgroup v2 memory limit (containers, SLURM jobs), None when unlimited."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_bytes() -> int:
    """Memory this process may still allocate: the machine's available memory, or less under a cgroup limit."""
    if _SIMULATED_AVAILABLE is not None:
        return int(_SIMULATED_AVAILABLE)
    avail: Optional[int] = None
    try:
        import psutil
        avail = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            avail = None
    room = _cgroup_room()
    values = [v for v in (avail, room) if v is not None]
    return min(values) if values else 1 << 62


def _gb(n: float) -> str:
    return "%.1f GB" % (n / 1e9)


def require_memory(needed_bytes: int, step: str, what: str) -> None:
    """Refuse ``step`` before it starts when ``needed_bytes`` exceeds what this machine has free."""
    avail = available_bytes()
    if needed_bytes > SAFETY * avail:
        raise InsufficientMemoryError(
            "The %s step would need about %s of memory for %s; this machine has %s available."
            % (step, _gb(needed_bytes), what, _gb(avail)),
            hint="Check the input's voxel spacing and size (an implausible header makes the volume huge), "
                 "close other programs, or use a machine with more memory.")


def morphometry_bytes(labels_array: np.ndarray, spacing_mm, smooth_var_mm2: float = 0.5) -> int:
    """Upper estimate of the morphometry step's peak memory for a canonical label map."""
    from scipy import ndimage

    arr = np.asarray(labels_array)
    spacing_kji = np.asarray(spacing_mm, dtype=float)[::-1]
    margin = np.ceil(4.0 * np.sqrt(max(smooth_var_mm2, 0.0)) / spacing_kji) + 2
    whole = int(arr.size) * (arr.itemsize + 1 + 4)   # labels + a mask + the regions map
    peak = 0
    boxes = ndimage.find_objects(arr.astype(np.int32, copy=False) if arr.dtype.kind == "b" else arr, max_label=10)
    for code, box in enumerate(boxes, start=1):
        if box is None:
            continue
        n_kji = np.array([s.stop - s.start for s in box], dtype=float) + 2 * margin
        native = float(np.prod(n_kji)) * (1 + 4 + 4)        # mask, field, smoothed copy
        extent_mm = n_kji * spacing_kji
        if code in (7, 8, 9):   # bones: contoured on 1 mm, then finer resampled grids
            fine = float(np.prod(extent_mm / BONE_FINE_STEP_MM + 1)) * 4 * 3
            coarse = float(np.prod(extent_mm / 1.0 + 1)) * 4 * 3
            struct_bytes = native + max(fine, coarse)
        else:
            struct_bytes = native * 2                        # field + its cartilage volume copy
        peak = max(peak, int(struct_bytes))
    return BASELINE_BYTES + whole + peak


def segmentation_bytes(shape_ijk, spacing_mm, n_classes: int = SEGMENTATION_CLASSES,
                       model_spacing_mm: Optional[float] = None) -> int:
    """Upper estimate of a segmentation model's peak memory for an image of ``shape_ijk`` voxels."""
    spacing = np.asarray(spacing_mm, dtype=float)[:3]
    target = np.minimum(spacing, float(model_spacing_mm or MODEL_MAX_SPACING_MM))
    n = float(np.prod(np.asarray(shape_ijk, dtype=float)[:3] * spacing / target))
    # image (+ normalised copy), float16 logits accumulated over tiles, float32 probabilities at export, labels
    per_voxel = 4 * 2 + n_classes * (2 + 4) + 1
    return BASELINE_BYTES + int(n * per_voxel)


def t2_bytes(n_echo: int, n_voxels: int) -> int:
    """Upper estimate of the T2 step's peak memory for ``n_echo`` echoes of ``n_voxels`` voxels."""
    return BASELINE_BYTES + int(n_voxels) * (int(n_echo) * 4 * 3 + 8 * 16)
