"""Step nsm: fit the neural shape model(s) to the femur, mesh the fit and compute the B-score."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..devices import MPS_STEP_ERRORS, mps_fallback_warning
from ..errors import ConfigurationError
from ..options import RunOptions
from .context import RunContext, release_memory


NSM_MODELS = {"bone_cartilage": ["nsm_bone_cartilage"], "bone_only": ["nsm_bone_only"],
              "both": ["nsm_bone_cartilage", "nsm_bone_only"]}
NSM_CONFIG = "model_params_config.json"


def _find_model_root(folder: Path, marker: str) -> Optional[Path]:
    if (folder / marker).is_file():
        return folder
    hits = sorted(folder.rglob(marker))
    return hits[0].parent if len(hits) == 1 else None


def resolve_nsm_dir(model_id: str, options: RunOptions, progress=None) -> Path:
    """``--nsm-dir`` (the model folder, or a parent holding one sub-folder per registry id) or the hub."""
    from ..errors import ModelMissingError
    from ..registry import get_model

    entry = get_model(model_id)
    if options.nsm_dir:
        d = Path(options.nsm_dir)
        if (d / NSM_CONFIG).is_file():
            if len(NSM_MODELS[options.nsm]) > 1:
                raise ConfigurationError("--nsm both needs two models, but --nsm-dir %s is a single model folder." % d,
                                         hint="Give a folder holding nsm_bone_cartilage/ and nsm_bone_only/.")
            return d
        if (d / model_id / NSM_CONFIG).is_file():
            return d / model_id
        raise ModelMissingError("No %s model found in %s (looked for %s and %s/%s)." % (model_id, d, NSM_CONFIG, model_id, NSM_CONFIG))
    from ..hub import ensure_model

    root = ensure_model(entry, offline=options.offline, progress=progress)
    found = _find_model_root(Path(root), NSM_CONFIG)
    if found is None:
        raise ModelMissingError("The downloaded %s holds no single %s." % (model_id, NSM_CONFIG))
    return found


def bscore_folder(model_id: str, bscore_dir: Optional[str] = None, offline: bool = False, single: bool = True,
                  progress=None) -> Optional[Path]:
    """The B-score folder of the NSM ``model_id``: ``bscore_dir`` (a folder with model.json when ``single``, or
    a parent of the published folder names; None when not there), else the sample-data locations, the model
    cache or a download on first use (ModelMissingError when offline / unreachable, ModelInvalidError on a
    sha256 mismatch). The one resolution used by the pipeline's nsm step and ``kneepipeline nsm``."""
    from ..registry import get_model
    from ..shape.bscore import ensure_bscore_folder, find_bscore_folder

    bscore_id = get_model(model_id).config["bscore"]
    if bscore_dir:
        d = Path(bscore_dir)
        if (d / "model.json").is_file() and single:
            return d
        return find_bscore_folder(bscore_id, [d])
    return ensure_bscore_folder(bscore_id, offline=offline, progress=progress)


def resolve_bscore_dir(model_id: str, options: RunOptions, progress=None) -> Optional[Path]:
    """:func:`bscore_folder` with a run's options (``--bscore-dir``, ``--offline``, ``--nsm``)."""
    return bscore_folder(model_id, options.bscore_dir, options.offline, len(NSM_MODELS[options.nsm]) == 1, progress)


def nsm_id_for(model) -> str:
    """The registry id of the NSM a loaded model is (by its objects): bone+cartilage or bone only."""
    return "nsm_bone_cartilage" if model.arch.n_objects >= 2 else "nsm_bone_only"


def load_bscore_for(model_id: str, model, bscore_dir: Optional[str] = None, offline: bool = False,
                    single: bool = True, progress=None, warn=None):
    """The B-score model that scores ``model``'s latents, or None with a warning (a B-score model found by
    default that belongs to another NSM). ``bscore_dir`` given: its model must fit (NsmError otherwise).
    Raises ModelMissingError when none can be had: the pipeline warns and fits anyway, ``kneepipeline nsm``
    stops before fitting."""
    from ..errors import ModelMissingError
    from ..shape.bscore import check_compatible, load_bscore_model

    warn = warn or (lambda m: None)
    bs_dir = bscore_folder(model_id, bscore_dir, offline, single, progress)
    if bs_dir is None:
        raise ModelMissingError("No B-score model for %s in %s." % (model_id, bscore_dir),
                                hint="Pass --bscore-dir with the folder holding model.json (or the published "
                                     "BSCORE_MODELS/<name>/ folders).")
    bs_model = load_bscore_model(bs_dir)
    if bscore_dir or bs_model.latent_size == model.latent_size:
        check_compatible(bs_model, model.latent_size)   # an explicit mismatch is an error
        for w in bs_model.warnings:
            warn(w)
        return bs_model
    # a found-by-default B-score model that belongs to another NSM: skip, say so
    warn("The B-score model found at %s scores %d-value latents but this NSM has %d: B-score not computed "
         "(pass --bscore-dir)." % (bs_dir, bs_model.latent_size, model.latent_size))
    return None


def _nsm_files(model_dir: Path):
    from ..shape.model import CONFIG_NAME, find_checkpoint

    return [model_dir / CONFIG_NAME, find_checkpoint(model_dir, None)]


def _check_nsm_objects(model_id: str, model, model_dir: Path) -> None:
    """The model folder must model the objects its registry id promises (bone+cartilage vs bone only)."""
    from ..errors import ModelInvalidError
    from ..registry import get_model

    want = list(get_model(model_id).config.get("objects") or [])
    if want and model.arch.n_objects != len(want):
        raise ModelInvalidError("--nsm %s needs a %s model, but %s models %s." % (
            "bone_cartilage" if len(want) > 1 else "bone_only", " + ".join(want), model_dir,
            " + ".join(model.object_names)),
            hint="Point --nsm-dir at a %s NSM, or choose --nsm %s." % (
                " + ".join(want), "bone_only" if model.arch.n_objects == 1 else "bone_cartilage"))


def step_nsm(ctx: RunContext) -> None:
    from ..morphometry import write_mesh
    from ..errors import ModelMissingError
    from ..hub import provenance
    from ..registry import get_model
    from ..shape import load_nsm
    from ..shape.model import resolve_device
    from ..shape.bscore import bscore

    o = ctx.options
    morph = ctx.data["morphometry"]
    femur = morph.meshes.get("femur")
    if femur is None:
        from ..errors import NsmError
        raise NsmError("The shape model needs the femur surface, which the segmentation lacks.")
    cart = morph.meshes.get("femoral_cartilage")
    ids = NSM_MODELS[o.nsm]
    ctx.results["nsm"] = {}
    for n, model_id in enumerate(ids):
        sub = (lambda f, m="", n=n: ctx.progress.step("nsm", (n + f) / len(ids), m))
        model_dir = resolve_nsm_dir(model_id, o, progress=sub)
        try:
            model = load_nsm(model_dir, device=o.device)
        except MPS_STEP_ERRORS as exc:  # a torch that cannot hold the model on the Apple GPU: the CPU, said so
            if resolve_device(o.device).type != "mps":
                raise
            ctx.warn(mps_fallback_warning("the %s model" % model_id, exc))
            model = load_nsm(model_dir, device="cpu")
        _check_nsm_objects(model_id, model, model_dir)
        from ..shape.memory import check_fit_memory

        est = check_fit_memory(model, femur, cart, o.nsm_samples, o.nsm_mesh_resolution, o.nsm_precision,
                               what="The nsm step's %s fit" % model_id)   # insufficient_memory before it starts
        ctx.step_extra.setdefault("nsm", {}).setdefault("memory_estimate_bytes", {})[model_id] = \
            est["host_bytes"] + est["gpu_bytes"]
        bscore_id = get_model(model_id).config["bscore"]
        try:
            bs_model = load_bscore_for(model_id, model, o.bscore_dir, o.offline, len(ids) == 1,
                                       progress=lambda f, m="", sub=sub: sub(0.0, m), warn=ctx.warn)
        except ModelMissingError as exc:  # offline or unreachable: the fit is still worth having
            bs_model = None
            ctx.warn("No B-score model found for %s: B-score not computed (%s %s)." % (model_id, exc.message, exc.hint))

        def fit_on(m):
            return m.fit(femur, cart if m.arch.n_objects >= 2 else None, laterality=morph.laterality.side,
                         seed=o.seed, iterations=o.nsm_iterations, samples=o.nsm_samples, patience=o.nsm_patience,
                         progress=sub, warn=ctx.warn, mesh_resolution=o.nsm_mesh_resolution,
                         precision=o.nsm_precision, threads=o.threads)

        try:
            fit = fit_on(model)
        except MPS_STEP_ERRORS as exc:  # an operation/dtype the Apple GPU lacks: this fit on the CPU, said so
            if model.device.type != "mps":
                raise
            ctx.warn(mps_fallback_warning("the %s fit" % model_id, exc))
            model = load_nsm(model_dir, device="cpu")
            fit = fit_on(model)
        doc = fit.to_json()
        doc["model_dir"] = str(model_dir)
        doc["epoch"] = model.epoch
        for obj, v in fit.assd_mm.items():
            doc["assd_%s_mm" % obj] = v
        if bs_model is not None:
            bs_prov = provenance(get_model(bscore_id), bs_model.path.parent, files=[bs_model.path])
            doc["bscore"] = bscore(fit.latent, bs_model)
            doc["bscore_model"] = {"path": str(bs_model.path), "sha256": bs_model.sha256,
                                   "registry_id": bs_model.registry_id, "source": bs_prov["source"],
                                   "revision": bs_prov["revision"]}
            ctx.manifest.models[bscore_id] = bs_prov
        ctx.results["nsm"][model_id] = doc
        ctx.manifest.models[model_id] = {**provenance(get_model(model_id), model_dir, files=_nsm_files(model_dir)),
                                         "epoch": model.epoch, "device": fit.device}
        ctx.manifest.environment.setdefault("device", fit.device)
        for obj, poly in fit.meshes.items():
            ctx.output("nsm/%s_%s.%s" % (model_id, obj, o.mesh_format), "mesh",
                       lambda p, poly=poly: write_mesh(poly, p, o.mesh_format), step="nsm",
                       structure="nsm_%s_%s" % (model_id, obj), coordinate_system="LPS",
                       description="%s reconstructed by %s" % (obj, model_id))
        del model
        release_memory()
