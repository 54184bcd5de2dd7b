"""Step segmentation: run the chosen model on the image (or reuse the previous run's result on --resume)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from ..options import RunOptions
from .context import RunContext
from .results import jsonable


def _file_fingerprint(path: Optional[str]) -> Any:
    if not path:
        return None
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return [str(p)] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def segmentation_key(options: RunOptions) -> str:
    """What decides a segmentation: the input (path, sizes, times) and the model options."""
    import hashlib

    keep = {k: getattr(options, k) for k in ("model", "model_dir", "folds", "checkpoint", "tta", "step_size",
                                               "postprocess")}
    keep["step_size"] = options.effective_step_size()  # --profile fast is step 1.0
    keep["image"] = _file_fingerprint(options.image)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def _reuse_segmentation(ctx: RunContext, key: str) -> bool:
    """--resume: take the previous run's segmentation when it was made from the same input and options."""
    from ..io.readers import read_labels

    prev = ctx.previous
    if not (ctx.options.resume and prev is not None):
        return False
    st = prev.steps.get("segmentation") or {}
    entries = [o for o in prev.outputs if o.path == "segmentation.nii.gz"]
    if st.get("status") != "complete" or st.get("key") != key or not entries:
        return False
    if not (ctx.out_dir / entries[0].path).is_file():
        return False
    labels = read_labels(ctx.out_dir / entries[0].path)
    if not labels.same_geometry(ctx.data["image"], tol=1e-3):
        return False
    ctx.data["labels"] = labels
    ctx.manifest.add(entries[0])
    ctx.manifest.models["segmentation"] = prev.models.get("segmentation", {})
    ctx.step_extra["segmentation"] = {"key": key, "reused": True}
    ctx.progress.step("segmentation", 1.0, "segmentation reused from the previous run (same input and options)")
    return True


def step_segmentation(ctx: RunContext) -> None:
    from ..io.readers import write_volume
    from ..segmentation import segment
    from .. import labels as L

    key = segmentation_key(ctx.options)
    if _reuse_segmentation(ctx, key):
        return
    ctx.step_extra["segmentation"] = {"key": key}
    from ..resources import require_memory, segmentation_bytes

    image = ctx.data["image"]
    require_memory(segmentation_bytes(image.shape_ijk, image.spacing_mm), "segmentation",
                   "a %s-voxel image" % " x ".join(map(str, image.shape_ijk)))
    from ..modelfiles import recording_models, used_provenance

    with recording_models() as used:   # every model file the backend resolved (ensemble members too)
        res = segment(ctx.data["image"], ctx.options, progress=ctx.progress.sub("segmentation"))
    ctx.data["labels"] = res.labels
    for w in (res.model or {}).get("warnings", []) or []:
        ctx.warn(w)
    ctx.manifest.models["segmentation"] = jsonable(res.model)
    ctx.manifest.models["segmentation"]["model_files"] = used_provenance(used)   # source, revision, sha256
    if (res.model or {}).get("device"):
        ctx.manifest.environment["device"] = str(res.model["device"])
    ctx.output("segmentation.nii.gz", "labelmap", lambda p: write_volume(res.labels, p), step="segmentation",
               description="Segmentation (canonical labels)", coordinate_system="LPS", structure="tissues",
               labels={str(k): v for k, v in L.TISSUES.items()})
    agreement = getattr(res, "agreement", None)
    if agreement is not None:
        ctx.output("segmentation_agreement.nii.gz", "volume", lambda p: write_volume(agreement, p),
                   step="segmentation", coordinate_system="LPS", structure="agreement",
                   description="Fraction of ensemble members agreeing with the ensemble label per voxel")
