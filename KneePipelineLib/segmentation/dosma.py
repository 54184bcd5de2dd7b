"""DOSMA 2D U-Net inference (Keras ``.h5`` weights run on PyTorch), REFERENCE section 2.

Procedure, for a model of plane P and input size (H, W) (read from the file's input shape, else the
registry's ``config["size"]``):

1. Put the image in the model's frame (registry ``frame``; :mod:`.frame`, shared with nnU-Net): the
   reference's ``TARGET_ORIENTATION`` of the plane's class -- sagittal ('SI','AP','LR'), coronal
   ('LR','SI','AP'), axial ('LR','AP','SI') in DOSMA codes, which name where an array axis points
   (``"SI"`` = superior -> inferior). Exact transpose + flips, chosen from the direction matrix so oblique
   scans work. Slices run along the last axis (sagittal: LR, coronal: AP, axial: SI); rows along the first
   (coronal and axial: LR, resized to 160 rows), columns along the second.
2. Resize every slice to (H, W) with ``skimage.transform.resize(order=3)`` -- the reference's own call
   (cubic spline, Gaussian anti-aliasing when shrinking, output clipped to the input range). skimage is
   a pinned dependency; using it keeps the network's input identical to the reference rather than
   "close" (scipy ``zoom`` differs in its anti-aliasing; torch bicubic is a different kernel).
3. z-score with the whole resized volume's mean and std (eps 1e-8).
4. Batched slice prediction (``options.batch_size``; default 4 on CPU, 16 on a GPU), softmax -> argmax.
   On a CPU the slices go in channels-last memory order, BatchNormalization is folded into the convolution
   before it, and bf16 autocast is used only where the CPU has native bf16 (docs/SPEED.md, "DOSMA 2D nets").
5. Back to the slice size with nearest neighbour (index of the half-pixel-centred source), undo the
   reorientation, remap to canonical labels, largest component per label + bone hole filling.

The output label Volume has exactly the input's array shape, spacing, origin and direction.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import GpuOutOfMemoryError, InvalidInputError, ModelInvalidError, SegmentationError
from ..io.volume import Volume
from .frame import (ANATOMY, DOSMA_AXIAL, DOSMA_CORONAL, DOSMA_SAGITTAL, FrameMap, check_codes, frame_map,
                    frame_spacing, from_frame, plane_warning)

ProgressFn = Optional[Callable[..., None]]

# The reference's slice layouts (DOSMA bone_seg ``models/stanford_qdess_bone.py`` TARGET_ORIENTATION of the
# Sagittal / Coronal / Axial classes; the registry's ``frame`` of each entry). Last axis = slices; each slice
# has rows = axis 0, columns = axis 1 and is resized to the model's (H, W) (coronal/axial: 160 x 512).
PLANE_ORIENTATION = {"sagittal": DOSMA_SAGITTAL, "coronal": DOSMA_CORONAL, "axial": DOSMA_AXIAL}

# What the DOSMA / Goyal models were trained on (sagittal qDESS, ~0.3 mm in-plane, FOV ~140-160 mm).
TRAINED = {"inplane_spacing_mm": (0.2, 0.6), "fov_mm": (110.0, 200.0), "slice_spacing_mm": (0.4, 1.6)}


# ----------------------------------------------------------------------------------------------------
# geometry (the frame step itself is segmentation/frame.py, shared with nnU-Net and the ensemble)
# ----------------------------------------------------------------------------------------------------
def plane_orientation(entry_or_plane: Any) -> Tuple[str, str, str]:
    """The frame (DOSMA codes) of a registry entry (``frame``, else ``config["orientation"]``, else its
    plane's reference layout) or of a plane name."""
    if isinstance(entry_or_plane, str):
        plane, cfg, frame = entry_or_plane, {}, ()
    else:
        plane, cfg = entry_or_plane.plane, dict(entry_or_plane.config or {})
        frame = tuple(getattr(entry_or_plane, "frame", ()) or ())
    if frame:
        return check_codes(frame)
    if cfg.get("orientation"):
        return check_codes(cfg["orientation"])
    if plane not in PLANE_ORIENTATION:
        raise ModelInvalidError("2D model has no known plane (%r)." % (plane,),
                                hint="Registry entries of 2D models need plane sagittal, coronal or axial.")
    return PLANE_ORIENTATION[plane]


def model_slices(image: Volume, orientation: Sequence[str]) -> Tuple[np.ndarray, FrameMap]:
    """The slices a 2D net of frame ``orientation`` sees, before resizing: (slices, rows, cols) float32
    (rows along ``orientation[0]``, columns along ``orientation[1]``, slices along ``orientation[2]``)."""
    fmap = frame_map(image.direction, orientation)
    vol = fmap.forward(np.asarray(image.array, dtype=np.float32))
    return np.ascontiguousarray(np.moveaxis(vol, -1, 0)), fmap


def geometry_warnings(image: Volume, orientation: Sequence[str], fmap: FrameMap) -> List[str]:
    """Warnings when the field of view or spacing is far from the training data."""
    msgs = []
    sp = frame_spacing(image, fmap)
    shape = tuple(image.array.shape[p] for p in fmap.perm)
    lo, hi = TRAINED["inplane_spacing_mm"]
    flo, fhi = TRAINED["fov_mm"]
    for ax in range(3):
        code = orientation[ax]
        if code in ("LR", "RL"):
            slo, shi = TRAINED["slice_spacing_mm"]
            if not slo <= sp[ax] <= shi:
                msgs.append("The %s spacing is %.2f mm; the 2D U-Nets were trained on ~0.7 mm sagittal slices "
                            "(expected %.1f-%.1f mm): results may be poor." % (ANATOMY[code], sp[ax], slo, shi))
            continue
        fov = sp[ax] * shape[ax]
        if not lo <= sp[ax] <= hi:
            msgs.append("The %s spacing is %.2f mm; the 2D U-Nets were trained on ~0.3 mm in-plane images "
                        "(expected %.1f-%.1f mm): results may be poor." % (ANATOMY[code], sp[ax], lo, hi))
        if not flo <= fov <= fhi:
            msgs.append("The %s field of view is %.0f mm; the 2D U-Nets were trained on ~140-160 mm "
                        "(expected %.0f-%.0f mm) and do not normalise spacing: results may be poor."
                        % (ANATOMY[code], fov, flo, fhi))
    return msgs


# ----------------------------------------------------------------------------------------------------
# resizing
# ----------------------------------------------------------------------------------------------------
def resize_slices_cubic(stack: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(S, h, w) -> (S, H, W) float32 with the reference's ``skimage.transform.resize(order=3)``."""
    from skimage.transform import resize

    out = np.empty((stack.shape[0],) + tuple(size), dtype=np.float32)
    for s in range(stack.shape[0]):
        out[s] = resize(stack[s].astype(np.float64, copy=False), size, order=3)  # anti_aliasing: auto
    return out


def nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel for a half-pixel-centred nearest-neighbour resize."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_slices_nearest(stack: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(S, H, W) -> (S, h, w) nearest neighbour (labels)."""
    r = nearest_indices(size[0], stack.shape[1])
    c = nearest_indices(size[1], stack.shape[2])
    return stack[:, r][:, :, c]


def zscore(vol: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    v = vol.astype(np.float64)
    mean, std = float(v.mean()), float(v.std())
    return ((vol - mean) / (std + eps)).astype(np.float32)


def root_sum_of_squares(echoes: Any) -> Any:
    """qDESS two-echo image -> sqrt(E1^2 + E2^2).

    ``echoes``: a sequence of Volumes with one geometry (returns a Volume), or an array whose *first*
    axis is the echo (returns an array). DICOM series with two echoes are already combined this way by
    :func:`KneePipelineLib.io.readers.read_image`.
    """
    if isinstance(echoes, np.ndarray):
        a = echoes.astype(np.float64)
        return np.sqrt(np.sum(a * a, axis=0)).astype(np.float32)
    vols = list(echoes)
    if not vols:
        raise InvalidInputError("No echo images given.")
    for v in vols[1:]:
        if not vols[0].same_geometry(v):
            raise InvalidInputError("The echo images do not share one geometry.",
                                    hint="Give the echoes of one qDESS series.")
    arr = root_sum_of_squares(np.stack([v.array for v in vols]))
    out = vols[0].with_array(arr)
    out.metadata["echo_combination"] = "root-sum-of-squares of %d echoes" % len(vols)
    return out


# ----------------------------------------------------------------------------------------------------
# network
# ----------------------------------------------------------------------------------------------------
def model_file(entry: Any, model_path: Path) -> Path:
    p = Path(model_path)
    if p.is_dir():
        name = (entry.config or {}).get("file")
        cand = p / name if name else None
        if cand is None or not cand.is_file():
            found = sorted(p.glob("*.h5"))
            if cand is None and len(found) == 1:
                return found[0]
            raise ModelInvalidError("Model file %s not found in %s." % (name or "*.h5", p),
                                    hint="Download the model again or point --model-dir at the folder holding it.")
        return cand
    return p


def model_input_size(net: Any, entry: Any) -> Tuple[int, int]:
    """(rows, columns) of the slices the net takes: the file's fixed input shape (else the registry's
    ``config["size"]``). A file whose input is the registry's size transposed is refused: it would be fed
    transposed slices."""
    size = (entry.config or {}).get("size")
    shape = net.input_shapes[0] if getattr(net, "input_shapes", None) else None
    if shape is not None and len(shape) == 4:
        hw = shape[2:4] if net.data_format == "channels_first" else shape[1:3]
        if all(v is not None for v in hw):
            file_hw, reg_hw = [int(v) for v in hw], [int(v) for v in (size or [])]
            if reg_hw and reg_hw[0] != reg_hw[1] and file_hw == reg_hw[::-1]:
                raise ModelInvalidError(
                    "The model file of %s takes %d x %d slices, but the registry (the reference's layout for "
                    "the %s plane) expects %d x %d (rows x columns)." % (entry.id, int(hw[0]), int(hw[1]),
                                                                          entry.plane, int(size[0]), int(size[1])),
                    hint="This file is another plane's model or not the registry's file "
                         "(kneepipeline models --check DIR).")
            return int(hw[0]), int(hw[1])
    if not size:
        raise ModelInvalidError("The model %s has no fixed input size." % entry.id,
                                hint="Add config['size'] = [H, W] to its registry entry.")
    return int(size[0]), int(size[1])


def _report(progress: ProgressFn, fraction: float, message: str = "") -> None:
    if progress is not None:
        progress(float(fraction), message)


def cpu_arithmetic(device: Any) -> Dict[str, Any]:
    """How the 2D nets run on ``device``: on a CPU, slices in channels-last memory order (oneDNN's native 2-D
    layout: measured faster, identical arithmetic) and bf16 autocast only where the CPU has native bf16
    (:func:`.cpu_speed.use_cpu_bf16`, ``KNEEPIPELINE_CPU_BF16``); elsewhere what the device does."""
    from .cpu_speed import use_cpu_bf16

    if getattr(device, "type", "cpu") != "cpu":
        return {"precision": "fp32", "channels_last": False}
    return {"precision": "bf16-autocast" if use_cpu_bf16() else "fp32", "channels_last": True}


def predict_slices(net: Any, slices: np.ndarray, batch_size: int, device: Any, progress: ProgressFn = None,
                   lo: float = 0.0, hi: float = 1.0, keep_probabilities: bool = False,
                   arithmetic: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """(S, H, W) normalised slices -> labels (S, H, W) uint8, or probabilities (S, C, H, W) float16.
    ``arithmetic``: :func:`cpu_arithmetic`'s choice (default: the one for ``device``)."""
    import contextlib

    import torch

    how = cpu_arithmetic(device) if arithmetic is None else arithmetic
    if how.get("channels_last"):
        # the kernels in channels-last order make every convolution after the first (1-channel input) produce
        # channels-last feature maps, which the following layers keep (a 1-channel input alone cannot)
        net = net.to(memory_format=torch.channels_last)
    channels_first = net.data_format == "channels_first"
    out = None
    n = slices.shape[0]
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size])).to(device)
            x = x.unsqueeze(1) if channels_first else x.unsqueeze(-1)
            if how.get("channels_last") and channels_first:  # (channels-last Keras files already are)
                x = x.contiguous(memory_format=torch.channels_last)
            bf16 = how.get("precision") == "bf16-autocast"
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                y = net(x)
            if not channels_first:
                y = y.permute(0, 3, 1, 2)
            if keep_probabilities:
                part = y.float().cpu().numpy().astype(np.float16)
                if out is None:
                    out = np.empty((n,) + part.shape[1:], dtype=np.float16)
            else:
                part = torch.argmax(y, dim=1).to(torch.uint8).cpu().numpy()
                if out is None:
                    out = np.empty((n,) + part.shape[1:], dtype=np.uint8)
            out[start:start + part.shape[0]] = part
            _report(progress, lo + (hi - lo) * min(start + batch_size, n) / n,
                    "slices %d/%d" % (min(start + batch_size, n), n))
    return out


def default_batch_size(options: Any, device: Any) -> int:
    b = getattr(options, "batch_size", None)
    if b:
        return max(1, int(b))
    return 16 if getattr(device, "type", "cpu") == "cuda" else 4


def _load(path: Path, device: Any):
    from .keras_h5 import load_keras_model

    return load_keras_model(path, device=device)


def run_plane(image: Volume, entry: Any, model_path: Path, options: Any, progress: ProgressFn = None,
              probabilities: bool = False) -> Dict[str, Any]:
    """Run one 2D model over ``image``. Returns a dict with ``labels`` (k, j, i uint8, model numbering,
    before post-processing) or ``probabilities`` (C, k, j, i float16, bilinear back to the slice grid),
    plus ``info`` (what ran) and ``warnings``."""
    import torch

    from ..devices import MPS_STEP_ERRORS, mps_fallback_warning
    from .nnunet import select_device

    if image.array.ndim != 3:
        raise SegmentationError("2D U-Net segmentation needs a 3D image; got shape %s." % (image.array.shape,),
                                hint="Multi-echo qDESS: combine the echoes (root-sum-of-squares) first.")
    t0 = time.time()
    path = model_file(entry, model_path)
    device = select_device(getattr(options, "device", "auto"))
    _report(progress, 0.0, "loading %s" % path.name)
    mps_failed = None
    try:
        net = _load(path, device)
    except MPS_STEP_ERRORS as exc:  # a torch/GPU that cannot hold the net on MPS: the CPU, said so
        if device.type != "mps":
            raise
        mps_failed, device = mps_fallback_warning(entry.id, exc), torch.device("cpu")
        net = _load(path, device)
    size = model_input_size(net, entry)
    orientation = plane_orientation(entry)
    stack, fmap = model_slices(image, orientation)                               # (slices, rows, cols)
    warnings = geometry_warnings(image, orientation, fmap)
    if mps_failed:
        warnings.append(mps_failed)
    acq = plane_warning(image, getattr(entry, "acquisition_plane", None), getattr(entry, "display_name", entry.id))
    if acq:
        warnings.append(acq)
    slice_shape = stack.shape[1:]
    _report(progress, 0.05, "resizing %d slices to %dx%d" % (stack.shape[0], size[0], size[1]))
    x = zscore(resize_slices_cubic(stack, size))
    batch = default_batch_size(options, device)
    try:
        pred = predict_slices(net, x, batch, device, progress, 0.15, 0.9, keep_probabilities=probabilities)
    except Exception as exc:  # classify GPU OOM by type
        oom = getattr(torch.cuda, "OutOfMemoryError", None)
        if oom is not None and isinstance(exc, oom) and device.type == "cuda":
            if not getattr(options, "cpu_fallback", True):
                raise GpuOutOfMemoryError("The GPU ran out of memory running %s." % entry.id,
                                          hint="Lower --batch-size, or allow the CPU fallback.") from exc
            torch.cuda.empty_cache()
            warnings.append("GPU out of memory; %s ran on the CPU instead." % entry.id)
            device = torch.device("cpu")
            net = net.to(device)
            pred = predict_slices(net, x, batch, device, progress, 0.15, 0.9, keep_probabilities=probabilities)
        elif device.type == "mps" and isinstance(exc, MPS_STEP_ERRORS):   # an op/dtype MPS lacks: CPU, said so
            warnings.append(mps_fallback_warning(entry.id, exc))
            device = torch.device("cpu")
            net = _load(path, device)
            pred = predict_slices(net, x, batch, device, progress, 0.15, 0.9, keep_probabilities=probabilities)
        else:
            raise
    del x
    info = {"id": entry.id, "backend": "keras_unet", "plane": entry.plane, "file": path.name,
            "orientation": list(orientation), "frame": fmap.describe(), "model_input_size": list(size), "device": str(device),
            "batch_size": batch, "keras_version": getattr(net, "keras_info", {}).get("keras_version"),
            "data_format": net.data_format, "arithmetic": cpu_arithmetic(device),
            "folded_batchnorms": len(getattr(net, "folded", {}) or {}),
            "resize": "skimage.transform.resize order=3 (anti-aliased when shrinking); back: "
                      + ("bilinear probabilities" if probabilities else "nearest labels")}
    out: Dict[str, Any] = {"info": info, "warnings": warnings}
    if probabilities:
        out["probabilities"] = _probabilities_to_input(pred, slice_shape, fmap, device)
    else:
        lab = resize_slices_nearest(pred, slice_shape)                  # (slices, rows, cols)
        out["labels"] = from_frame(np.moveaxis(lab, 0, -1), fmap)
    info["seconds"] = round(time.time() - t0, 2)
    _report(progress, 0.95, "predicted %s" % entry.id)
    return out


def _probabilities_to_input(pred: np.ndarray, slice_shape, fmap: FrameMap, device) -> np.ndarray:
    """(S, C, H, W) float16 -> (C, k, j, i) float16 in the input array order (bilinear, half-pixel)."""
    import torch
    import torch.nn.functional as F

    S, C = pred.shape[:2]
    res = np.empty((C, S) + tuple(slice_shape), dtype=np.float16)
    with torch.inference_mode():
        for s0 in range(0, S, 8):
            p = torch.from_numpy(pred[s0:s0 + 8].astype(np.float32))
            q = F.interpolate(p, size=tuple(slice_shape), mode="bilinear", align_corners=False)
            res[:, s0:s0 + q.shape[0]] = q.permute(1, 0, 2, 3).numpy().astype(np.float16)
    # (C, slices, rows, cols) -> (C, rows, cols, slices) -> input order
    res = np.moveaxis(res, 1, -1)
    return from_frame(res, fmap)


def canonical(labels: np.ndarray, entry: Any) -> np.ndarray:
    from ..labels import CONVENTIONS

    conv = CONVENTIONS.get(getattr(entry, "label_convention", "dosma") or "dosma", CONVENTIONS["dosma"])
    lut = np.arange(256, dtype=np.uint8)
    for src, dst in conv.items():
        lut[src] = dst
    return lut[labels]


def postprocess_labels(labels: np.ndarray) -> np.ndarray:
    from .postprocess import postprocess

    return postprocess(labels)


def predict_dosma(image: Volume, entry: Any, model_path: Path, options: Any, progress: ProgressFn = None):
    """Segment ``image`` with one DOSMA 2D U-Net; labels in the input's exact geometry."""
    from . import SegmentationResult

    out = run_plane(image, entry, model_path, options, progress)
    labels = canonical(out["labels"], entry)
    if getattr(options, "postprocess", True):
        _report(progress, 0.96, "largest component per label, bone hole filling")
        labels = postprocess_labels(labels)
    info = dict(out["info"])
    info["warnings"] = list(out["warnings"])
    info["postprocess"] = bool(getattr(options, "postprocess", True))
    _report(progress, 1.0, "segmented with %s" % entry.id)
    return SegmentationResult(labels=image.with_array(labels.astype(np.uint8)), model=info)
