"""nnU-Net v2 backend: in-process ``nnUNetPredictor`` on a results folder (no ``nnUNet_*`` variables).

Geometry: nnU-Net never reorients -- it takes the array axes as given -- so the image first goes into the
model's frame (``ModelEntry.frame``, :mod:`.frame`: exact permutation + flips; the reference feeds every
image as DOSMA's ``to_sitk("sagittal")`` array, axes (LR, SI, AP)). The network then gets what nnU-Net's
default reader (``SimpleITKIO``) would give for that volume: ``GetArrayFromImage`` order with the spacing
reversed to match. The prediction comes back on the frame's grid and is permuted/flipped back, so the label
map has the input's exact geometry. Plans that name another reader (e.g. ``NibabelIO``) are run through
that reader on a temporary NIfTI of the reoriented volume.

Settings and checks (:mod:`.settings`): fold from ``model_config.json`` (registry fallback), checkpoint,
configuration; every stage folder's plans/dataset checked before predicting.

Cascade: the ``3d_lowres`` label map (input grid, float32, shape (1, k, j, i), exactly what nnU-Net's
``read_seg`` yields from a written prediction) is passed as ``segmentation_previous_stage`` to
``predict_single_npy_array`` of the ``3d_cascade_fullres`` predictor; nnU-Net crops, resamples and
one-hot encodes it itself.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import pathlib
import pickle
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..devices import MPS_STEP_ERRORS, mps_fallback_warning
from ..errors import ConfigurationError, GpuOutOfMemoryError, ModelInvalidError, SegmentationError
from ..hub import file_manifest, nnunet_config_folder, snapshot_revision
from ..io.volume import Volume
from ..labels import load_convention, remap
from ..options import RunOptions
from ..registry import ModelEntry

log = logging.getLogger("kneepipeline.nnunet")
ProgressFn = Optional[Callable[..., None]]
SITK_READERS = ("SimpleITKIO",)


# -- devices ---------------------------------------------------------------------------------------
def select_device(name: str = "auto"):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError("--device cuda was requested but no CUDA GPU is available.",
                                 hint="Use --device auto or cpu (or install a CUDA build of torch).")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigurationError("--device mps was requested but Apple MPS is not available.",
                                     hint="Use --device auto or cpu.")
    if name not in ("cuda", "mps", "cpu"):
        raise ConfigurationError("Unknown device %r." % name, hint="Use auto, cuda, mps or cpu.")
    return torch.device(name)


def _oom_types() -> tuple:
    import torch

    types = []
    for owner in (torch, torch.cuda):
        t = getattr(owner, "OutOfMemoryError", None)
        if isinstance(t, type) and t not in types:
            types.append(t)
    return tuple(types)


def release_memory(device=None) -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if device is not None and getattr(device, "type", "") == "mps" and mps is not None:
        with contextlib.suppress(Exception):
            mps.empty_cache()


# -- a predictor that reports tiles -----------------------------------------------------------------
def _predictor_class():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class ReportingPredictor(nnUNetPredictor):
        """nnUNetPredictor that counts sliding-window tiles (results are untouched)."""

        kp_callback: ProgressFn = None
        kp_total = 0
        kp_done = 0
        kp_cpu_bf16 = False          # bf16 autocast around the network (CPU with native bf16 only)

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            if not self.kp_total:  # called once per fold with the same image
                self.kp_total = len(slicers) * max(1, len(self.list_of_parameters or [None]))
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            if self.kp_cpu_bf16:
                import torch

                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = super()._internal_maybe_mirror_and_predict(x)
                out = out.float()  # gaussian weighting and accumulation exactly as nnU-Net's
            else:
                out = super()._internal_maybe_mirror_and_predict(x)
            self.kp_done += 1
            if self.kp_callback is not None:
                self.kp_callback(self.kp_done, self.kp_total)
            return out

    return ReportingPredictor


@contextlib.contextmanager
def _quiet_stdout():
    """nnU-Net prints to stdout, which carries our JSON-lines protocol: send its prints to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _call_on_stdout(real_stdout, fn, *args) -> None:
    if fn is None:
        return
    with contextlib.redirect_stdout(real_stdout):
        fn(*args)


# -- one stage ---------------------------------------------------------------------------------------
def _reader_name(folder: pathlib.Path) -> str:
    try:
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
        dataset = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelInvalidError("Cannot read plans.json/dataset.json in %s: %s." % (folder, type(exc).__name__)) from exc
    channels = dataset.get("channel_names", dataset.get("modality", {"0": "MRI"}))
    if len(channels) != 1:
        raise SegmentationError("Model in %s expects %d input channels; KneePipeline supplies one image."
                                % (folder, len(channels)), hint="Use a single-channel knee model.")
    return str(plans.get("image_reader_writer", "SimpleITKIO"))


def _fold_args(folds: Sequence[str]) -> tuple:
    return tuple(f if f == "all" else int(f) for f in folds)


def _run_stage(folder: pathlib.Path, image: Volume, prev: Optional[np.ndarray], device, options: RunOptions,
               folds: Sequence[str], checkpoint_name: str, tick: Callable[[int, int], None]) -> Dict[str, Any]:
    """Predict one configuration; returns {"seg": (k, j, i) array, "tiles": n}. Frees the model after."""
    import torch

    from .cpu_speed import use_cpu_bf16

    reader = _reader_name(folder)
    cls = _predictor_class()
    predictor = cls(tile_step_size=options.effective_step_size(), use_gaussian=True, use_mirroring=bool(options.tta),
                    perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                    verbose_preprocessing=False, allow_tqdm=False)
    predictor.kp_callback = tick
    predictor.kp_cpu_bf16 = device.type == "cpu" and use_cpu_bf16()
    try:
        try:
            predictor.initialize_from_trained_model_folder(str(folder), use_folds=_fold_args(folds),
                                                           checkpoint_name=checkpoint_name)
        except (KeyError, RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError,
                pickle.UnpicklingError) as exc:
            raise ModelInvalidError("nnU-Net could not load the model in %s (%s)." % (folder, type(exc).__name__),
                                    hint="The results folder is incomplete or corrupt: download it again.") from exc
        if reader in SITK_READERS:
            arr = np.ascontiguousarray(image.array)[None].astype(np.float32)
            props = {"spacing": [abs(float(s)) for s in image.spacing_mm[::-1]]}
            seg = predictor.predict_single_npy_array(arr, props, prev, None, False)
        else:
            seg = _predict_via_reader(predictor, image, prev)
        return {"seg": np.asarray(seg), "tiles": predictor.kp_total}
    finally:
        predictor.network = None
        predictor.list_of_parameters = None
        del predictor
        release_memory(device)


def _predict_via_reader(predictor, image: Volume, prev: Optional[np.ndarray]) -> np.ndarray:
    """Plans with a non-SimpleITK reader: round-trip through a temporary NIfTI and the plans' reader."""
    import SimpleITK as sitk

    rw = predictor.plans_manager.image_reader_writer_class()
    with tempfile.TemporaryDirectory(prefix="kneepipeline-nnunet-") as tmp:
        img_path = os.path.join(tmp, "case_0000.nii.gz")
        sitk.WriteImage(image.to_sitk(), img_path)
        data, props = rw.read_images([img_path])
        prev_seg = None
        if prev is not None:
            prev_path = os.path.join(tmp, "prev.nii.gz")
            sitk.WriteImage(image.with_array(prev[0].astype(np.uint8)).to_sitk(), prev_path)
            prev_seg, _ = rw.read_seg(prev_path)
        out = os.path.join(tmp, "pred")
        predictor.predict_single_npy_array(data, props, prev_seg, out, False)
        pred = sitk.GetArrayFromImage(sitk.ReadImage(out + predictor.dataset_json["file_ending"]))
    return pred


# -- the backend ----------------------------------------------------------------------------------
def stage_folders(entry: ModelEntry, root: pathlib.Path) -> List[pathlib.Path]:
    confs = list(entry.config.get("configurations", []))
    if not confs:
        raise ModelInvalidError("Registry entry %s names no nnU-Net configuration." % entry.id)
    return [pathlib.Path(root) / nnunet_config_folder(entry, c) for c in confs]


def predict_nnunet(image: Volume, entry: ModelEntry, model_root: pathlib.Path, options: RunOptions,
                   progress: ProgressFn = None) -> "SegmentationResult":
    import torch

    from . import SegmentationResult
    from .postprocess import postprocess

    from .frame import plane_warning, to_frame
    from .settings import check_folder, nnunet_settings

    t0 = time.time()
    folders = stage_folders(entry, model_root)
    settings = nnunet_settings(entry, model_root, options.folds, options.checkpoint)
    folds, ck = settings.folds, settings.checkpoint
    checks = [check_folder(entry, f, c, folds, ck) for f, c in zip(folders, settings.configurations)]
    warnings = []
    fmap = None
    if entry.frame:
        frame_image, fmap = to_frame(image, entry.frame)
    else:
        frame_image = image
    msg = plane_warning(image, entry.acquisition_plane, entry.display_name)
    if msg:
        warnings.append(msg)
        log.warning(msg)
    device = select_device(options.device)
    old_threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(int(options.threads))
    real_stdout = sys.stdout
    n_stages = len(folders)

    def report(fraction: float, message: str) -> None:
        _call_on_stdout(real_stdout, progress, min(max(fraction, 0.0), 1.0), message)

    tiles: List[int] = []
    prev = None
    used_device = device
    try:
        for si, folder in enumerate(folders):
            conf = folder.name.split("__")[-1]

            def tick(done, total, si=si, conf=conf):
                frac = (si + (done / total if total else 0.0)) / n_stages
                report(0.95 * frac, "nnU-Net %s: tile %d of %d" % (conf, done, total))

            report(0.95 * si / n_stages, "nnU-Net %s on %s (folds %s, %s)" % (conf, used_device.type, ",".join(folds), ck))
            with _quiet_stdout():
                out = _run_with_fallback(folder, frame_image, prev, used_device, options, folds, ck, tick, report)
            if out.get("fallback_warning"):
                warnings.append(out["fallback_warning"])
            used_device = out["device"]
            tiles.append(out["tiles"])
            prev = out["seg"][None].astype(np.float32)  # what nnU-Net's read_seg gives for a prediction file
        seg = prev[0].astype(np.uint8)
        if fmap is not None:
            seg = np.ascontiguousarray(fmap.inverse(seg))
    finally:
        torch.set_num_threads(old_threads)
    canonical = remap(seg, load_convention(entry.label_convention), entry.label_convention)
    if options.postprocess:
        report(0.96, "post-processing (largest component per label, bone hole filling)")
        canonical = postprocess(canonical)
    labels = image.with_array(canonical.astype(np.uint8))
    labels.metadata = {"source": "segmentation:" + entry.id}
    seconds = time.time() - t0
    report(0.98, "recording model provenance")
    try:
        import nnunetv2
        nnunet_version = getattr(nnunetv2, "__version__", None)
        if nnunet_version is None:
            from importlib.metadata import version
            nnunet_version = version("nnunetv2")
    except Exception:  # noqa: BLE001 - provenance only
        nnunet_version = None
    model = {
        "id": entry.id, "backend": entry.backend,
        "repo_id": entry.source.repo_id if entry.source else None,
        "revision": snapshot_revision(model_root) or ("local" if options.model_dir else None),
        "source": "model_dir" if options.model_dir else "hub",
        "path": str(model_root), "configurations": [f.name for f in folders],
        "folds": folds, "checkpoint": ck, "sha256": file_manifest(model_root, entry, folds, options.checkpoint),
        "device": used_device.type, "tta": bool(options.tta), "step_size": options.effective_step_size(),
        "profile": options.profile, "precision": _precision(used_device),
        "postprocess": bool(options.postprocess), "tiles": tiles, "seconds": round(seconds, 3),
        "threads": options.threads or old_threads, "nnunetv2": nnunet_version, "torch": torch.__version__,
        "label_convention": entry.label_convention,
        "frame": fmap.describe() if fmap is not None else None, "settings": settings.record(),
        "checks": checks, "warnings": warnings,
    }
    model["files"] = sorted(model["sha256"])
    report(1.0, "nnU-Net done in %.1f s" % seconds)
    return SegmentationResult(labels=labels, model=model)


def _precision(device) -> str:
    """What arithmetic the network ran in (nnU-Net: fp16 autocast on CUDA; ours: bf16 autocast on a native-bf16 CPU)."""
    from .cpu_speed import use_cpu_bf16

    if device.type == "cuda":
        return "fp16-autocast"
    return "bf16-autocast" if device.type == "cpu" and use_cpu_bf16() else "fp32"


def _run_with_fallback(folder, image, prev, device, options, folds, ck, tick, report) -> Dict[str, Any]:
    oom = _oom_types()
    try:
        out = _run_stage(folder, image, prev, device, options, folds, ck, tick)
        out["device"] = device
        return out
    except oom as exc:
        release_memory(device)
        if device.type != "cpu" and options.cpu_fallback:
            import torch

            log.warning("GPU out of memory in %s; retrying on the CPU (slower).", folder.name)
            report(0.0, "GPU out of memory: retrying on the CPU")
            out = _run_stage(folder, image, prev, torch.device("cpu"), options, folds, ck, tick)
            out.update(device=torch.device("cpu"), fallback_warning="The %s ran out of memory in nnU-Net %s; it ran "
                       "on the CPU instead (slower)." % (device.type.upper(), folder.name))
            return out
        raise GpuOutOfMemoryError("The %s ran out of memory running nnU-Net %s." % (device.type.upper(), folder.name)) from exc
    except MPS_STEP_ERRORS as exc:  # an Apple GPU lacking an operation/dtype: this stage on the CPU, said so
        if device.type != "mps":
            raise
        import torch

        release_memory(device)
        msg = mps_fallback_warning("nnU-Net %s" % folder.name, exc)
        log.warning(msg)
        report(0.0, "Apple GPU (MPS) failed: retrying on the CPU")
        out = _run_stage(folder, image, prev, torch.device("cpu"), options, folds, ck, tick)
        out.update(device=torch.device("cpu"), fallback_warning=msg)
        return out
