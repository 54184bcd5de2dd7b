"""One pipeline run: input -> segmentation -> morphometry -> T2 -> NSM + B-score -> results -> report -> bundle.

The CLI (`run`, `analyze`), the Slicer module (through the runner) and the batch driver all call
:func:`run`. Each step is a unit with a weight (for honest progress), reads what earlier steps left in
the :class:`RunContext`, writes its outputs atomically into the run folder and registers them in the
manifest. A failed or cancelled run leaves a manifest saying so and never a ``results.json``.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from . import __version__
from .errors import (CancelledError, ConfigurationError, InvalidInputError, KneePipelineError,
                     OutputUnwritableError, PipelineTimeoutError, classify)
from .manifest import MANIFEST_NAME, Manifest, OutputEntry, load_manifest, now_iso
from .options import RunOptions
from .progress import NullProgress, Progress

log = logging.getLogger("kneepipeline")

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
BUNDLE_NAME = "results_bundle.zip"
WORK_DIR = ".work"
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass
class RunContext:
    options: RunOptions
    out_dir: Path
    progress: Progress
    manifest: Manifest
    work_dir: Path
    data: Dict[str, Any] = field(default_factory=dict)   # in-memory hand-over between steps
    previous: Optional[Manifest] = None                  # the folder's earlier manifest (--resume)
    step_extra: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # merged into manifest.steps[name]
    results: Dict[str, Any] = field(default_factory=dict)  # what goes into results.json

    # -- atomic outputs -----------------------------------------------------------------------
    def output(self, relpath: str, kind: str, writer: Callable[[Path], None], step: str = "", **meta: Any) -> Path:
        """Write ``relpath`` through ``writer(tmp_path)`` then rename into place; record it in the manifest."""
        final = self.out_dir / relpath
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(".tmp-" + final.name)
        try:
            writer(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)   # temp files are 0600; results are ordinary files
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.manifest.add(OutputEntry(path=relpath.replace(os.sep, "/"), kind=kind, step=step, **meta))
        return final

    def warn(self, message: str) -> None:
        self.progress.warning(message)
        if message not in self.manifest.warnings:
            self.manifest.warnings.append(message)


@dataclass
class Step:
    name: str
    weight: float
    fn: Callable[[RunContext], None]
    enabled: Callable[[RunOptions], bool] = lambda o: True
    fatal: bool = True          # a non-fatal step's failure becomes a warning


# ----------------------------------------------------------------------------------------------
# steps
# ----------------------------------------------------------------------------------------------
def step_input(ctx: RunContext) -> None:
    from .io.readers import read_image, read_labels, write_volume
    from . import labels as L

    o = ctx.options
    sub = ctx.progress.sub("input")
    if o.image:
        sub(0.1, "reading image")
        ctx.data["image"] = read_image(o.image, workdir=ctx.work_dir)
    if o.labels:
        sub(0.5, "reading label map")
        vol = read_labels(o.labels, workdir=ctx.work_dir)
        table = L.load_convention(o.label_convention)
        vol = vol.with_array(L.remap(vol.array, table, o.label_convention))
        ctx.data["labels"] = vol
        if "image" in ctx.data and not ctx.data["image"].same_geometry(vol, tol=1e-3):
            raise InvalidInputError("The image and the label map have different grids (size, spacing, origin or "
                                    "orientation).", hint="Give the label map that was segmented from this image.")
    sub(1.0, "inputs read")


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
    keep["image"] = _file_fingerprint(options.image)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def _reuse_segmentation(ctx: RunContext, key: str) -> bool:
    """--resume: take the previous run's segmentation when it was made from the same input and options."""
    from .io.readers import read_labels

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
    from .io.readers import write_volume
    from .segmentation import segment
    from . import labels as L

    key = segmentation_key(ctx.options)
    if _reuse_segmentation(ctx, key):
        return
    ctx.step_extra["segmentation"] = {"key": key}
    res = segment(ctx.data["image"], ctx.options, progress=ctx.progress.sub("segmentation"))
    ctx.data["labels"] = res.labels
    for w in (res.model or {}).get("warnings", []) or []:
        ctx.warn(w)
    ctx.manifest.models["segmentation"] = _jsonable(res.model)
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


def step_morphometry(ctx: RunContext) -> None:
    from .io.readers import write_volume
    import numpy as np

    from .errors import MissingStructuresError
    from . import labels as L

    o = ctx.options
    labels = ctx.data["labels"]
    L.require(labels.array, [L.FEMUR], "cartilage thickness")
    if not any(np.any(labels.array == c) for c in L.CARTILAGES):
        raise MissingStructuresError("The label map has no cartilage (none of: %s)."
                                     % ", ".join(L.TISSUES[c] for c in L.CARTILAGES))
    if "segmentation" not in ctx.manifest.steps or ctx.manifest.steps["segmentation"].get("status") != "complete":
        ctx.output("labels.nii.gz", "labelmap", lambda p: write_volume(labels, p), step="morphometry",
                   description="Input label map in canonical labels", coordinate_system="LPS", structure="tissues",
                   labels={str(k): v for k, v in L.TISSUES.items()})
    from .morphometry import MeshSettings, analyze_labels, write_mesh

    settings = MeshSettings(bone_smooth_var_mm2=o.bone_smooth_var_mm2,
                            cartilage_smooth_var_mm2=o.cartilage_smooth_var_mm2)
    res = analyze_labels(labels, settings, progress=ctx.progress.sub("morphometry"))
    ctx.data["morphometry"] = res
    for w in res.warnings:
        ctx.warn(w)
    ctx.output("regions.nii.gz", "labelmap", lambda p: write_volume(res.regions_volume, p), step="morphometry",
               description="Cartilage sub-regions", coordinate_system="LPS", structure="regions",
               labels={str(k): v for k, v in L.region_label_names().items()})
    ext = o.mesh_format
    for name, poly in res.meshes.items():
        arrays = [poly.GetPointData().GetArrayName(i) for i in range(poly.GetPointData().GetNumberOfArrays())]
        arrays = [a for a in arrays if a and a.lower() != "normals"]
        ctx.output("meshes/%s.%s" % (name, ext), "mesh", lambda p, poly=poly: write_mesh(poly, p, ext),
                   step="morphometry", structure=name, coordinate_system="LPS", scalars=arrays,
                   units={"thickness_mm": "mm"} if "thickness_mm" in arrays else {},
                   description=name.replace("_", " ") + " surface")
    ctx.results["laterality"] = {"side": res.laterality.side, "evidence": res.laterality.evidence,
                                 "confidence": round(res.laterality.confidence, 3)}
    ctx.results["regions"] = [_region_row(r) for r in res.regions]


def step_t2(ctx: RunContext) -> None:
    from .io.readers import write_volume
    from . import t2 as T2

    o = ctx.options
    sub = ctx.progress.sub("t2")
    sub(0.05, "reading echoes")
    echoes = T2.load_echoes(list(o.echoes or []), o.echo_times_ms)
    if len(echoes.echo_times_ms) == 2:   # qDESS: the analytic two-echo estimator
        sub(0.3, "qDESS T2 from two echoes")
        geo = echoes.geometry
        maps = T2.qdess_t2(geo.with_array(echoes.images[0]), geo.with_array(echoes.images[1]),
                           T2.qdess_params(echoes.source, **(o.qdess_params or {})))
    else:
        sub(0.3, "fitting T2")
        maps = T2.fit_mese(echoes, drop_first_echo=o.t2_drop_first_echo)
    morph = ctx.data.get("morphometry")
    regions_vol = morph.regions_volume if morph is not None else None
    if regions_vol is not None and not maps.t2_ms.same_geometry(regions_vol, tol=1e-3):
        maps = T2.resample_to(maps, regions_vol)
    sub(0.8, "regional T2")
    ctx.output("t2_ms.nii.gz", "volume", lambda p: write_volume(maps.t2_ms, p), step="t2",
               description="T2 map (ms)", coordinate_system="LPS", units={"t2": "ms"})
    ctx.results["t2_method"] = {"method": maps.method, "params": _jsonable(maps.params)}
    if maps.valid is not None:
        ctx.output("t2_valid.nii.gz", "labelmap", lambda p: write_volume(maps.valid.with_array(
            maps.valid.array.astype("uint8")), p), step="t2", coordinate_system="LPS", structure="t2_valid",
            labels={"1": "valid_fit"}, description="Voxels with a valid T2 fit")
    if regions_vol is not None:
        from .morphometry import write_mesh
        from vtk.util.numpy_support import numpy_to_vtk

        rows, point_arrays = T2.regional_t2(maps, regions_vol, morph.meshes)
        ctx.results["t2"] = _jsonable(rows)
        for bone, values in point_arrays.items():   # T2 projected onto the bone surfaces
            poly = morph.meshes[bone]
            arr = numpy_to_vtk(values.astype("float32"), deep=True)
            arr.SetName("t2_ms")
            poly.GetPointData().AddArray(arr)
            entry = ctx.manifest.find(kind="mesh", structure=bone)[0]
            ctx.output(entry.path, "mesh", lambda p, poly=poly: write_mesh(poly, p, o.mesh_format),
                       step=entry.step, structure=bone, coordinate_system="LPS",
                       scalars=list(entry.scalars) + ["t2_ms"], units=dict(entry.units, t2_ms="ms"),
                       description=entry.description)
    sub(1.0, "T2 done")


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
    from .errors import ModelMissingError
    from .registry import get_model

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
    from .hub import ensure_model

    root = ensure_model(entry, offline=options.offline, progress=progress)
    found = _find_model_root(Path(root), NSM_CONFIG)
    if found is None:
        raise ModelMissingError("The downloaded %s holds no single %s." % (model_id, NSM_CONFIG))
    return found


def resolve_bscore_dir(model_id: str, options: RunOptions) -> Optional[Path]:
    """The B-score folder of an NSM: ``--bscore-dir`` (folder with model.json or a parent of the published
    folder names) or the sample-data locations; None when not found."""
    from .registry import get_model
    from .shape.bscore import find_bscore_folder

    bscore_id = get_model(model_id).config["bscore"]
    if options.bscore_dir:
        d = Path(options.bscore_dir)
        if (d / "model.json").is_file() and len(NSM_MODELS[options.nsm]) == 1:
            return d
        return find_bscore_folder(bscore_id, [d])
    return find_bscore_folder(bscore_id)


def _check_nsm_objects(model_id: str, model, model_dir: Path) -> None:
    """The model folder must model the objects its registry id promises (bone+cartilage vs bone only)."""
    from .errors import ModelInvalidError
    from .registry import get_model

    want = list(get_model(model_id).config.get("objects") or [])
    if want and model.arch.n_objects != len(want):
        raise ModelInvalidError("--nsm %s needs a %s model, but %s models %s." % (
            "bone_cartilage" if len(want) > 1 else "bone_only", " + ".join(want), model_dir,
            " + ".join(model.object_names)),
            hint="Point --nsm-dir at a %s NSM, or choose --nsm %s." % (
                " + ".join(want), "bone_only" if model.arch.n_objects == 1 else "bone_cartilage"))


def step_nsm(ctx: RunContext) -> None:
    from .morphometry import write_mesh
    from .shape import load_nsm
    from .shape.bscore import bscore, check_compatible, load_bscore_model

    o = ctx.options
    morph = ctx.data["morphometry"]
    femur = morph.meshes.get("femur")
    if femur is None:
        from .errors import NsmError
        raise NsmError("The shape model needs the femur surface, which the segmentation lacks.")
    cart = morph.meshes.get("femoral_cartilage")
    ids = NSM_MODELS[o.nsm]
    ctx.results["nsm"] = {}
    for n, model_id in enumerate(ids):
        sub = (lambda f, m="", n=n: ctx.progress.step("nsm", (n + f) / len(ids), m))
        model_dir = resolve_nsm_dir(model_id, o, progress=sub)
        model = load_nsm(model_dir, device=o.device)
        _check_nsm_objects(model_id, model, model_dir)
        bs_dir = resolve_bscore_dir(model_id, o)
        bs_model = None
        if bs_dir is None:
            ctx.warn("No B-score model found for %s: B-score not computed (pass --bscore-dir)." % model_id)
        else:
            bs_model = load_bscore_model(bs_dir)
            if o.bscore_dir or bs_model.latent_size == model.latent_size:
                check_compatible(bs_model, model.latent_size)   # an explicit mismatch is an error
                for w in bs_model.warnings:
                    ctx.warn(w)
            else:   # a found-by-default B-score model that belongs to another NSM: skip, say so
                ctx.warn("The B-score model found at %s scores %d-value latents but this NSM has %d: B-score not "
                         "computed (pass --bscore-dir)." % (bs_dir, bs_model.latent_size, model.latent_size))
                bs_model = None
        fit = model.fit(femur, cart if model.arch.n_objects >= 2 else None, laterality=morph.laterality.side,
                        seed=o.seed, iterations=o.nsm_iterations, samples=o.nsm_samples, patience=o.nsm_patience,
                        progress=sub, warn=ctx.warn, mesh_resolution=o.nsm_mesh_resolution,
                        precision=o.nsm_precision, threads=o.threads)
        doc = fit.to_json()
        doc["model_dir"] = str(model_dir)
        doc["epoch"] = model.epoch
        for obj, v in fit.assd_mm.items():
            doc["assd_%s_mm" % obj] = v
        if bs_model is not None:
            doc["bscore"] = bscore(fit.latent, bs_model)
            doc["bscore_model"] = {"path": str(bs_model.path), "sha256": bs_model.sha256,
                                   "registry_id": bs_model.registry_id}
        ctx.results["nsm"][model_id] = doc
        ctx.manifest.models[model_id] = {"path": str(model_dir), "epoch": model.epoch, "device": fit.device}
        ctx.manifest.environment.setdefault("device", fit.device)
        for obj, poly in fit.meshes.items():
            ctx.output("nsm/%s_%s.%s" % (model_id, obj, o.mesh_format), "mesh",
                       lambda p, poly=poly: write_mesh(poly, p, o.mesh_format), step="nsm",
                       structure="nsm_%s_%s" % (model_id, obj), coordinate_system="LPS",
                       description="%s reconstructed by %s" % (obj, model_id))
        del model
        _release_memory()


def step_results(ctx: RunContext) -> None:
    ctx.results["warnings"] = list(ctx.manifest.warnings)
    doc = {
        "schema": "kneepipeline-results/1",
        "library_version": __version__,
        "units": {"thickness": "mm", "area": "mm^2", "volume": "mm^3", "t2": "ms", "coverage": "fraction 0-1"},
        **ctx.results,
    }
    doc = _jsonable(doc)
    row = flatten_results(doc)
    ctx.output(RESULTS_CSV, "table", lambda p: _write_csv(p, row), step="results",
               description="One-row results table")
    ctx.output(RESULTS_JSON, "json", lambda p: p.write_text(json.dumps(doc, indent=2, allow_nan=False)),
               step="results", description="All results (strict JSON)")
    ctx.progress.sub("results")(1.0, "results written")


def step_report(ctx: RunContext) -> None:
    from .report import build_report

    build_report(ctx.out_dir, ctx.manifest, progress=ctx.progress.sub("report"))


def step_bundle(ctx: RunContext) -> None:
    def write_zip(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for entry in sorted(ctx.manifest.outputs, key=lambda e: e.path):
                if entry.path == BUNDLE_NAME:
                    continue
                zf.write(ctx.out_dir / entry.path, arcname=entry.path)
            zf.writestr(MANIFEST_NAME, json.dumps(ctx.manifest.to_dict(), indent=2, allow_nan=False))

    ctx.output(BUNDLE_NAME, "archive", write_zip, step="bundle", description="Zip of the run's outputs")


STEPS: List[Step] = [
    Step("input", 1, step_input),
    Step("segmentation", 30, step_segmentation, enabled=lambda o: bool(o.image) and not o.labels),
    Step("morphometry", 10, step_morphometry),
    Step("t2", 4, step_t2, enabled=lambda o: bool(o.echoes)),
    Step("nsm", 25, step_nsm, enabled=lambda o: o.nsm != "none"),
    Step("results", 1, step_results),
    Step("report", 4, step_report, enabled=lambda o: o.report, fatal=False),
    Step("bundle", 1, step_bundle),
]


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------
class _Deadline:
    """Whole-run and per-step timeouts, and SIGTERM/SIGINT handling (main thread only; elsewhere, e.g.
    inside a Dask worker thread, the caller's own limits apply)."""

    def __init__(self, timeout_s: Optional[float], step_limits: Optional[Dict[str, float]] = None):
        self.timeout_s = timeout_s
        self.step_limits = dict(step_limits or {})
        self._old = {}
        self._end = None
        self._step = None
        self.active = threading.current_thread() is threading.main_thread()

    def arm(self, step: str) -> None:
        """Set the alarm for ``step``: the smaller of its own limit and what is left of the run's."""
        if not self.active:
            return
        self._step = step
        limits = []
        if self._end is not None:
            limits.append(max(self._end - time.monotonic(), 1e-3))
        if step in self.step_limits:
            limits.append(float(self.step_limits[step]))
        signal.setitimer(signal.ITIMER_REAL, min(limits) if limits else 0)

    def __enter__(self):
        if not self.active:
            return self

        def on_term(signum, frame):
            raise CancelledError("The run was cancelled (signal %d)." % signum)

        def on_alarm(signum, frame):
            if self._step in self.step_limits and (self._end is None or time.monotonic() < self._end - 1e-3):
                raise PipelineTimeoutError("The %s step exceeded its time limit of %.0f s."
                                           % (self._step, self.step_limits[self._step]))
            raise PipelineTimeoutError("The run exceeded its time limit of %.0f s." % self.timeout_s)

        for sig, fn in ((signal.SIGTERM, on_term), (signal.SIGINT, on_term), (signal.SIGALRM, on_alarm)):
            self._old[sig] = signal.signal(sig, fn)
        if self.timeout_s:
            self._end = time.monotonic() + float(self.timeout_s)
            signal.setitimer(signal.ITIMER_REAL, float(self.timeout_s))
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for sig, old in self._old.items():
                signal.signal(sig, old)
        return False


def _check_output_location(options: RunOptions, out_dir: Path) -> None:
    for inp in [options.image, options.labels] + list(options.echoes or []):
        if not inp:
            continue
        p = Path(inp).resolve()
        if p == out_dir or (p.is_dir() and (p in out_dir.parents)):
            raise OutputUnwritableError("The output folder %s is inside the input %s." % (out_dir, p),
                                        hint="Choose an output folder outside the input folder; inputs are never modified.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise OutputUnwritableError("Cannot write to the output folder %s (%s)." % (out_dir, exc.strerror or exc)) from exc


def environment_info(device: Optional[str] = None) -> Dict[str, Any]:
    info: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "library_version": __version__}
    for mod in ("numpy", "SimpleITK", "vtk", "torch", "nnunetv2", "scipy"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", None) or getattr(m, "Version", lambda: None)()
    if "vtk" in sys.modules:
        info["vtk"] = sys.modules["vtk"].vtkVersion.GetVTKVersion() if hasattr(sys.modules["vtk"], "vtkVersion") else info.get("vtk")
    if device:
        info["device"] = device
    return info


def run(options: RunOptions, progress: Optional[Progress] = None, command: str = "run") -> Manifest:
    """Run the pipeline; returns the final manifest. Raises a :class:`KneePipelineError` on failure
    (after writing a manifest that records the failure)."""
    progress = progress or NullProgress()
    options.validate()
    out_dir = Path(options.out_dir).resolve()
    _check_output_location(options, out_dir)

    steps = [s for s in STEPS if s.enabled(options)]
    if options.resume and complete_and_matching(out_dir, options):
        progress.set_steps([("resume", 1)])
        progress.hello(command, __version__)
        manifest = load_manifest(str(out_dir))
        progress.step("resume", 1.0, "outputs complete and options unchanged: nothing to do")
        progress.result(out_dir=str(out_dir), manifest=str(out_dir / MANIFEST_NAME), resumed=True)
        return manifest

    # A new run: previous results are removed first so no stale results.json can be mistaken for this run.
    for stale in (RESULTS_JSON, RESULTS_CSV, BUNDLE_NAME):
        if (out_dir / stale).exists():
            (out_dir / stale).unlink()
    progress.set_steps([(s.name, s.weight) for s in steps])
    progress.hello(command, __version__)
    manifest = Manifest(library_version=__version__, command=command, created=now_iso(),
                        options=options.to_dict(), environment=environment_info())
    work = out_dir / WORK_DIR
    work.mkdir(exist_ok=True)
    ctx = RunContext(options, out_dir, progress, manifest, work)
    if options.resume:
        try:
            ctx.previous = load_manifest(str(out_dir))
        except (OSError, ValueError, TypeError):
            ctx.previous = None
    manifest.write(str(out_dir))
    try:
        with _Deadline(options.timeout_s, options.step_timeouts_s) as deadline:
            for s in steps:
                deadline.arm(s.name)
                t0 = time.time()
                manifest.steps[s.name] = {"status": "running"}
                progress.step(s.name, 0.0, "starting " + s.name)
                try:
                    s.fn(ctx)
                except KneePipelineError as exc:
                    if s.fatal or isinstance(exc, (CancelledError, PipelineTimeoutError)):
                        raise
                    ctx.warn("%s step failed: %s" % (s.name, exc.message))
                    manifest.steps[s.name] = {"status": "failed", "seconds": round(time.time() - t0, 3),
                                              "error": exc.to_dict()}
                    continue
                except Exception as exc:  # noqa: BLE001
                    if s.fatal:
                        raise
                    ctx.warn("%s step failed: %s" % (s.name, classify(exc).message))
                    manifest.steps[s.name] = {"status": "failed", "seconds": round(time.time() - t0, 3)}
                    continue
                finally:
                    gc.collect()
                manifest.steps[s.name] = dict(ctx.step_extra.get(s.name, {}), status="complete",
                                              seconds=round(time.time() - t0, 3))
                progress.step(s.name, 1.0, s.name + " done")
                manifest.write(str(out_dir))
        manifest.environment = environment_info(manifest.environment.get("device"))
        manifest.status = "complete"
        manifest.finished = now_iso()
        manifest.write(str(out_dir))
        progress.result(out_dir=str(out_dir), manifest=str(out_dir / MANIFEST_NAME),
                        warnings=list(manifest.warnings))
        return manifest
    except BaseException as exc:
        err = classify(exc)
        manifest.status = "cancelled" if err.category == "cancelled" else "failed"
        manifest.error = err.to_dict()
        manifest.finished = now_iso()
        for name, st in manifest.steps.items():
            if st.get("status") == "running":
                st["status"] = manifest.status
        # never leave results that look complete
        for stale in (RESULTS_JSON, RESULTS_CSV, BUNDLE_NAME):
            if (out_dir / stale).exists():
                (out_dir / stale).unlink()
        manifest.outputs = [o for o in manifest.outputs if o.path not in (RESULTS_JSON, RESULTS_CSV, BUNDLE_NAME)]
        try:
            manifest.write(str(out_dir))
        except OSError:
            pass
        if err is exc:
            raise
        raise err from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        _release_memory()


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def complete_and_matching(out_dir: Path, options: RunOptions) -> bool:
    try:
        m = load_manifest(str(out_dir))
    except (OSError, ValueError, TypeError):
        return False
    if m.status != "complete":
        return False
    try:
        old = RunOptions.from_dict(m.options)
    except KneePipelineError:
        return False
    if old.computation_key() != options.computation_key():
        return False
    return all((out_dir / o.path).exists() for o in m.outputs)


# ----------------------------------------------------------------------------------------------
# results helpers
# ----------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    import math

    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if np is not None and isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _region_row(r: Any) -> Dict[str, Any]:
    from dataclasses import asdict
    from . import labels as L

    row = asdict(r)
    reg = L.REGION_BY_NAME.get(row.get("name"))
    if reg is not None:
        row.setdefault("display", reg.display)
        row.setdefault("chondrometrics", reg.chondrometrics)
    return _jsonable(row)


def flatten_results(doc: Dict[str, Any]) -> Dict[str, Any]:
    """One flat row: laterality, per-region measures as ``<region>_<measure>``, T2, NSM/B-score."""
    row: Dict[str, Any] = {}
    lat = doc.get("laterality") or {}
    row["laterality"] = lat.get("side")
    region_names = {r["name"] for r in doc.get("regions", []) if r.get("kind", "region") == "region"}
    for r in doc.get("regions", []):
        if r.get("kind") == "plate" and r["name"] in region_names:
            continue  # a plate that is a single region (tibia_medial, patella) is already there
        for k, v in r.items():
            if k in ("name", "code", "display", "chondrometrics") or isinstance(v, (dict, list)):
                continue
            row["%s_%s" % (r["name"], k)] = v
    for r in doc.get("t2", []) or []:
        layer = r.get("layer", "all")
        prefix = r.get("region", "?") + ("" if layer == "all" else "_" + layer)
        for k in ("t2_mean_ms", "t2_std_ms", "t2_median_ms", "n_voxels"):
            if k in r:
                row["%s_%s" % (prefix, k)] = r[k]
    nsm = doc.get("nsm") or {}
    for model_id, fit in nsm.items() if isinstance(nsm, dict) else []:
        if isinstance(fit, dict):
            for k in ("bscore", "assd_bone_mm", "assd_cartilage_mm", "iterations"):
                if k in fit:
                    row["%s_%s" % (model_id, k)] = fit[k]
    return row


def _write_csv(path: Path, row: Dict[str, Any]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(list(row))
        w.writerow(["" if v is None else v for v in row.values()])
