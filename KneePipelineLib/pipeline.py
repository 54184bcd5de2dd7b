"""One pipeline run: options in, the steps in order, a manifest out.

The CLI (`run`, `analyze`), the Slicer module (through the runner) and the batch driver all call
:func:`run`. The steps themselves live in :mod:`KneePipelineLib.steps` (one module per stage: input,
segmentation, morphometry, t2, nsm, results, report/bundle); this module walks them with progress weights,
time limits and cancellation, and guarantees the run-folder contract: a failed or cancelled run leaves a
manifest saying so and never a ``results.json``.
"""
from __future__ import annotations

import gc
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from . import __version__
from .errors import (CancelledError, KneePipelineError, OutputUnwritableError, PipelineTimeoutError,
                     classify)
from .io.writers import RunFolderLock
from .manifest import MANIFEST_NAME, Manifest, load_manifest, now_iso
from .options import RunOptions
from .progress import NullProgress, Progress
from .steps import (BUNDLE_NAME, NSM_MODELS, RESULTS_CSV, RESULTS_JSON, STEPS, WORK_DIR,  # noqa: F401
                    RunContext, Step, flatten_results, jsonable, release_memory, resolve_bscore_dir,
                    resolve_nsm_dir, segmentation_key)



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
        if p.is_file() and p.parent == out_dir:
            raise OutputUnwritableError("The output folder %s is the folder of the input %s." % (out_dir, p.name),
                                        hint="Choose an output folder outside the input folder (e.g. a new sub-folder); "
                                             "inputs are never modified.")
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
    lock = RunFolderLock(out_dir).acquire()   # one writer per run folder; a second run gets `busy`
    try:
        return _run_in_folder(options, progress, command, out_dir, lock)
    finally:
        lock.release()


def _previous_manifest(out_dir: Path) -> Optional[Manifest]:
    """The folder's earlier KneePipeline manifest (None for none, or for another program's manifest.json:
    only files our own manifest listed are ever removed)."""
    import json

    try:
        with open(out_dir / MANIFEST_NAME, "r", encoding="utf-8") as fh:
            if not str(json.load(fh).get("schema", "")).startswith("kneepipeline-manifest/"):
                return None
        return load_manifest(str(out_dir))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _remove_stale(out_dir: Path, previous: Optional[Manifest], current: Optional[Manifest]) -> None:
    """Remove what an earlier run left that the current run did not write (again): its listed outputs,
    results, bundle, and leftover temporary files; so old meshes or an old report never sit beside a
    new manifest. Only files a manifest listed (or our own temporary names) are ever removed."""
    keep = {o.path for o in current.outputs} if current is not None else set()
    stale = {RESULTS_JSON, RESULTS_CSV, BUNDLE_NAME} | ({o.path for o in previous.outputs} if previous else set())
    for rel in sorted(stale - keep):
        f = out_dir / rel
        try:
            if f.is_file() and out_dir in f.resolve().parents:
                f.unlink()
        except OSError:
            pass
    for sub in (out_dir, out_dir / "meshes", out_dir / "nsm", out_dir / "report"):
        for tmp in (sub.glob(".tmp-*") if sub.is_dir() else ()):
            try:
                tmp.unlink()
            except OSError:
                pass
        if sub != out_dir and sub.is_dir():
            try:
                sub.rmdir()   # only when empty
            except OSError:
                pass


def _run_in_folder(options: RunOptions, progress: Progress, command: str, out_dir: Path,
                   lock: RunFolderLock) -> Manifest:
    steps = [s for s in STEPS if s.enabled(options)]
    if options.resume and complete_and_matching(out_dir, options):
        progress.set_steps([("resume", 1)])
        progress.hello(command, __version__)
        manifest = load_manifest(str(out_dir))
        progress.step("resume", 1.0, "outputs complete and options unchanged: nothing to do")
        progress.result(out_dir=str(out_dir), manifest=str(out_dir / MANIFEST_NAME), resumed=True)
        return manifest

    # A new run: what an earlier run left is removed first (with --resume, at the end: its segmentation may
    # be reused), so no stale results.json, mesh or report can be mistaken for this run's.
    previous = _previous_manifest(out_dir)
    _remove_stale(out_dir, None if options.resume else previous, None)
    progress.set_steps([(s.name, s.weight) for s in steps])
    progress.hello(command, __version__)
    manifest = Manifest(library_version=__version__, command=command, created=now_iso(),
                        options=options.to_dict(), environment=environment_info(), process=dict(lock.identity))
    if previous is not None and previous.status == "running":   # we hold the lock: its writer is gone
        proc = previous.process or {}
        msg = ("The previous run in this folder (started %s%s) ended without finishing (killed or crashed); "
               "its outputs were replaced." % (previous.created or "at an unknown time",
                                              ", process %s on %s" % (proc.get("pid"), proc.get("host")) if proc else ""))
        progress.warning(msg)
        manifest.warnings.append(msg)
    work = out_dir / WORK_DIR
    work.mkdir(exist_ok=True)
    ctx = RunContext(options, out_dir, progress, manifest, work)
    if options.resume:
        ctx.previous = previous
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
        if options.resume:
            _remove_stale(out_dir, previous, manifest)
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
        _remove_stale(out_dir, previous if options.resume else None, manifest)
        try:
            manifest.write(str(out_dir))
        except (OSError, KneePipelineError):
            log_failure = "the failure manifest could not be written"
            progress.warning(log_failure)
        if err is exc:
            raise
        raise err from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        release_memory()


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
