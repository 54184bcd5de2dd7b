"""Segmentation: one entry point, :func:`segment`, dispatching to the backend named in the registry.

Backends (imported lazily, by registry ``backend``):

* ``nnunet`` / ``nnunet_cascade`` -- :mod:`.nnunet` (nnU-Net v2, in-process)
* ``keras_unet`` -- :mod:`.dosma` (``predict_dosma``)
* ``ensemble`` -- :mod:`.ensemble` (``predict_ensemble``)

Every backend is called as ``fn(image, entry, model_path, options, progress)`` and returns a
:class:`SegmentationResult` whose ``labels`` are canonical and in exactly the input's geometry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np

from ..errors import ConfigurationError, SegmentationError
from ..io.volume import Volume
from ..options import RunOptions
from ..registry import ModelEntry, get_model

ProgressFn = Optional[Callable[..., None]]


@dataclass
class SegmentationResult:
    labels: Volume                              # canonical labels (labels.py), the input's exact geometry
    model: Dict[str, Any] = field(default_factory=dict)   # id, revision, files, sha256s, device, seconds, ...
    probabilities: Optional[np.ndarray] = None  # (classes, k, j, i) float, when a backend provides them


def _model_path(entry: ModelEntry, options: RunOptions, progress: ProgressFn):
    from ..hub import ensure_model

    def sub(fraction, message=""):  # downloads are the first 30 % of the step
        if progress is not None:
            progress(0.3 * float(fraction), message)

    folds = options.folds
    if not folds and options.model_dir and entry.backend in ("nnunet", "nnunet_cascade"):
        from .settings import model_dir_folds   # the fold the folder's own model_config.json names

        folds = model_dir_folds(entry, options.model_dir)
    return ensure_model(entry, model_dir=options.model_dir, offline=options.offline, progress=sub,
                        folds=folds, checkpoint=options.checkpoint)


def check_result(image: Volume, result: SegmentationResult, entry: ModelEntry) -> SegmentationResult:
    lab = result.labels
    if not image.same_geometry(lab, tol=1e-6):
        raise SegmentationError("Backend %s returned labels in a different geometry than the input." % entry.backend,
                                hint="This is a bug in KneePipeline; please report it.")
    return result


def segment(image: Volume, options: RunOptions, progress: ProgressFn = None) -> SegmentationResult:
    """Segment ``image`` with the model ``options.model``; ``progress(fraction, message)`` is optional."""
    entry = get_model(options.model)
    if entry.kind != "segmentation":
        raise ConfigurationError("Model %r is a %s model, not a segmentation model." % (entry.id, entry.kind),
                                 hint="Choose a segmentation model (kneepipeline models).")
    if image.array.ndim != 3:
        raise SegmentationError("Segmentation needs a 3D image; got an array of shape %s." % (image.array.shape,))
    if entry.backend in ("nnunet", "nnunet_cascade"):
        from .nnunet import predict_nnunet

        root = _model_path(entry, options, progress)

        def rest(fraction, message=""):
            if progress is not None:
                progress(0.3 + 0.7 * float(fraction), message)

        return check_result(image, predict_nnunet(image, entry, root, options, rest), entry)
    if entry.backend == "keras_unet":
        from .dosma import predict_dosma

        root = _model_path(entry, options, progress)
        return check_result(image, predict_dosma(image, entry, root, options, progress), entry)
    if entry.backend == "ensemble":
        from .ensemble import predict_ensemble

        import pathlib
        root = pathlib.Path(options.model_dir) if options.model_dir else None
        return check_result(image, predict_ensemble(image, entry, root, options, progress), entry)
    raise ConfigurationError("Model %r has backend %r, which this version cannot run." % (entry.id, entry.backend))


__all__ = ["SegmentationResult", "segment"]
