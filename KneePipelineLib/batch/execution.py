"""Execution: submit one Dask task per knee, follow the knees (events, counters, status line), record the
outcome of every knee (a failure manifest for a task that died), and :func:`run_batch`, which does it all.

Worker deaths: the Dask scheduler reschedules the knees of a worker that died on another worker (up to
``distributed.scheduler.allowed-failures`` deaths per knee, then the knee is reported failed). Each task first
empties its knee folder, so a re-run of a knee overwrites it cleanly.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from .. import __version__
from ..errors import ConfigurationError, InternalError, KneePipelineError, OutputUnwritableError, classify
from ..manifest import MANIFEST_NAME, load_manifest, now_iso
from ..options import RunOptions
from ..progress import JSON_FACE, Progress, format_duration
from .cluster import ClusterSpec, _check_gpu_workers, _describe_client, _gpu_slot, open_client
from .cohort import CANCELLED, COMPLETE, FAILED, KNEES_DIR, KneeJob, PlannedKnee, needs_gpu, plan_cohort
from .tables import _cohort_report, cohort_rows, cohort_summary, write_cohort_tables
from .longitudinal import compare_cohort, merge_change_columns, write_cohort_longitudinal

log = logging.getLogger("kneepipeline.batch")

LOCK_NAME = ".batch.lock"


# ----------------------------------------------------------------------------------------------
# the task (runs on a worker)
# ----------------------------------------------------------------------------------------------
def _empty_folder(path: Path, opts: RunOptions) -> None:
    """Remove a previous attempt's folder so a re-run starts clean (never an input, never through a link)."""
    if path.is_symlink():
        raise OutputUnwritableError("The knee folder %s is a symbolic link; refusing to empty it." % path)
    folder = path.resolve()
    for inp in [opts.image, opts.labels] + list(opts.echoes or []):
        if inp and (Path(inp).resolve() == folder or folder in Path(inp).resolve().parents):
            raise OutputUnwritableError("The input %s is inside the knee's output folder %s." % (inp, path),
                                        hint="Keep inputs outside DIR/knees/; inputs are never modified.")
    if path.exists():
        trash = path.with_name(".trash-%s-%s" % (path.name, uuid.uuid4().hex[:8]))
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def run_knee(knee_id: str, options: Dict[str, Any], topic: Optional[str] = None, gpu_slots: int = 0,
             tasks_per_gpu: int = 1, local_gpu_offset: bool = False, step_interval_s: float = 0.5) -> Dict[str, Any]:
    """One knee: empty its folder, call :func:`pipeline.run`, return a small outcome dict.

    Never raises for a knee's failure: a :class:`KneePipelineError` (the manifest records it too)
    becomes ``{"status": "failed", "category", "message", "hint"}``. Progress events (tagged with
    ``knee_id``) are forwarded to the client under ``topic`` through the scheduler's event log.
    """
    from .. import pipeline

    worker = None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    address = getattr(worker, "address", None)
    last_step = [0.0]

    def forward(event: Dict[str, Any]) -> None:
        if worker is None or not topic:
            return
        if event.get("event") == "step":
            frac = event.get("step_fraction")
            now = time.time()
            if frac not in (0.0, 1.0) and now - last_step[0] < step_interval_s:
                return
            last_step[0] = now
        try:
            worker.log_event(topic, event)
        except Exception:  # noqa: BLE001 - progress must never fail a knee
            pass

    # a knee asks for the protocol: events only (the driver shows its warnings, prefixed with the knee id)
    progress = Progress(tags={"knee_id": knee_id}, sink=forward, face=JSON_FACE)
    t0 = time.time()
    outcome: Dict[str, Any] = {"id": knee_id, "worker": address, "pid": os.getpid(), "started": t0}
    progress.emit("knee", status="started", worker=address, pid=os.getpid())
    try:
        opts = RunOptions.from_dict(dict(options))
        _empty_folder(Path(opts.out_dir), opts)
        offset = 0
        if local_gpu_offset and worker is not None:
            try:
                offset = int(worker.name) * max(1, gpu_slots // max(1, tasks_per_gpu))
            except (TypeError, ValueError):
                offset = 0
        with _gpu_slot(gpu_slots, tasks_per_gpu, offset) as gpu:
            if gpu is not None:
                outcome["gpu"] = gpu
            pipeline.run(opts, progress, command="batch")
        outcome.update(status="complete", category=None, message=None, hint=None)
    except Exception as exc:  # noqa: BLE001 - one knee's failure never stops the cohort
        err = classify(exc)
        outcome.update(status="cancelled" if err.category == "cancelled" else "failed",
                       category=err.category, message=err.message, hint=err.hint)
    outcome["seconds"] = round(time.time() - t0, 3)
    return outcome


def ping() -> int:
    """A trivial task (scheduler overhead benchmarks)."""
    return 1


# ----------------------------------------------------------------------------------------------
# progress on the client
# ----------------------------------------------------------------------------------------------


class CohortProgress:
    """Cohort counters, the one-line status on stderr, and JSON events on stdout (thread-safe)."""

    def __init__(self, total_to_run: int, skipped: int, held: int, progress: Optional[Progress],
                 status_stream: Optional[TextIO], on_event: Optional[Callable[[Dict[str, Any]], None]] = None):
        self.total = total_to_run
        self.skipped = skipped
        self.held = held
        self.progress = progress
        self.stream = status_stream
        self.on_event = on_event
        self.lock = threading.RLock()
        self.running: Dict[str, Dict[str, Any]] = {}
        self.starts: Dict[str, int] = {}
        self.done = 0
        self.failed = 0
        self.t0 = time.time()
        self._last_line = ""
        self._last_print = 0.0
        self._tty = bool(status_stream is not None and getattr(status_stream, "isatty", lambda: False)())

    def _write_event(self, event: Dict[str, Any]) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # noqa: BLE001
                log.exception("on_event callback failed")
        if self.progress is not None:
            self.progress.deliver(event)

    def worker_event(self, item: Any) -> None:
        """Handler for events forwarded from workers: ``(timestamp, event)``."""
        event = item[1] if isinstance(item, (tuple, list)) and len(item) == 2 else item
        if not isinstance(event, dict):
            return
        with self.lock:
            kid = event.get("knee_id")
            if event.get("event") == "knee" and event.get("status") == "started" and kid:
                self.running[kid] = event
                self.starts[kid] = self.starts.get(kid, 0) + 1
            self._write_event(event)
            if event.get("event") == "warning" and self.stream is not None:
                self.stream.write("%s[%s] WARNING: %s\n" % ("\r" if self._tty else "", kid, event.get("message")))
                self._last_line = ""
        self.status_line()

    def finished(self, outcome: Dict[str, Any]) -> None:
        with self.lock:
            self.running.pop(outcome["id"], None)
            self.done += 1
            if outcome.get("status") != "complete":
                self.failed += 1
            ev = {"event": "knee", "time": round(time.time(), 3), "knee_id": outcome["id"],
                  "status": outcome.get("status"), "category": outcome.get("category"),
                  "message": outcome.get("message"), "seconds": outcome.get("seconds"),
                  "worker": outcome.get("worker")}
            self._write_event(ev)
            self._write_event(self.cohort_event())
            if outcome.get("status") != "complete" and self.stream is not None:
                self.stream.write("%s[%s] %s (%s): %s\n" % ("\r" if self._tty else "", outcome["id"],
                                                          str(outcome.get("status")).upper(), outcome.get("category"),
                                                          outcome.get("message")))
                self._last_line = ""
            last = self.done >= self.total
        if not last:  # the final line is printed by run_batch
            self.status_line(force=True)

    def skipped_event(self, knee_id: str, state: str) -> None:
        self._write_event({"event": "knee", "time": round(time.time(), 3), "knee_id": knee_id,
                           "status": "skipped" if state == COMPLETE else "held", "state": state})

    def eta_s(self) -> Optional[float]:
        if self.done == 0:
            return None
        elapsed = time.time() - self.t0
        return elapsed / self.done * (self.total - self.done)

    def cohort_event(self) -> Dict[str, Any]:
        eta = self.eta_s()
        frac = self.done / self.total if self.total else 1.0
        return {"event": "cohort", "time": round(time.time(), 3), "total": self.total, "done": self.done,
                "failed": self.failed, "running": len(self.running), "skipped": self.skipped, "held": self.held,
                "fraction": round(frac, 4), "eta_s": None if eta is None else round(eta, 1)}

    def status_line(self, force: bool = False, final: bool = False) -> None:
        if self.stream is None:
            return
        with self.lock:
            queued = max(0, self.total - self.done - len(self.running))
            line = "cohort: %d/%d done (%d failed), %d running, %d queued, %d skipped | elapsed %s ETA %s" % (
                self.done, self.total, self.failed, len(self.running), queued, self.skipped,
                format_duration(time.time() - self.t0), format_duration(self.eta_s()) if not final else "0:00:00")
            now = time.time()
            if self._tty:
                self.stream.write("\r" + line.ljust(len(self._last_line)) + ("\n" if final else ""))
            elif final or (line != self._last_line and (force or now - self._last_print > 10)):
                self.stream.write(line + "\n")
            else:
                return
            self.stream.flush()
            self._last_line = line
            self._last_print = now


# ----------------------------------------------------------------------------------------------
# the batch
# ----------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    rows: List[Dict[str, Any]]
    summary: Dict[str, Any]
    outcomes: Dict[str, Dict[str, Any]]        # knees run by this invocation
    plans: List[PlannedKnee]
    paths: Dict[str, str]

    @property
    def ok(self) -> bool:
        return not any(r["status"] in (FAILED, CANCELLED) for r in self.rows)


@contextlib.contextmanager
def _batch_lock(out_dir: Path) -> Iterator[None]:
    """One batch per output folder at a time (advisory lock; no-op where flock is unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fh = open(out_dir / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigurationError("Another batch is writing to %s." % out_dir,
                                     hint="Wait for it to finish or choose another --out folder.") from None
        yield
    finally:
        fh.close()


def run_batch(jobs: Sequence[KneeJob], out_dir: str | os.PathLike, spec: Optional[ClusterSpec] = None, *,
              retry_failed: bool = False, client: Any = None, progress: Optional[Progress] = None,
              status_stream: Optional[TextIO] = None, on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
              retries: int = 1, cohort_csv: Optional[str] = None, report: bool = True) -> BatchResult:
    """Run the knees that need it on Dask and write the cohort table and summary.

    ``client``: an already connected ``distributed.Client`` (then ``spec`` only describes it); else a
    cluster is started from ``spec`` -- only when some knee needs work. ``on_event`` receives every
    event (forwarded worker events and the driver's ``knee`` / ``cohort`` events).
    """
    spec = spec or ClusterSpec()
    out = Path(out_dir).resolve()
    try:
        (out / KNEES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritableError("Cannot create the batch folder %s (%s)." % (out, exc.strerror or exc)) from exc
    started_iso, t0 = now_iso(), time.time()
    with _batch_lock(out):
        plans = plan_cohort(jobs, retry_failed)
        to_run = [p for p in plans if p.action == "run"]
        tracker = CohortProgress(len(to_run), sum(p.action == "skip" for p in plans),
                                 sum(p.action == "hold" for p in plans), progress, status_stream, on_event)
        if progress is not None:
            progress.hello("batch", __version__)
        for p in plans:
            if p.action != "run":
                tracker.skipped_event(p.job.knee_id, p.state)
        outcomes: Dict[str, Dict[str, Any]] = {}   # filled as knees finish
        cluster_info: Dict[str, Any] = {"kind": spec.kind, "workers": None, "started": False, "used": False}

        change_rows: List[Dict[str, Any]] = []     # cohorts with visits: filled after the knees

        def tables(interrupted: bool) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]:
            rows = merge_change_columns(cohort_rows(plans, outcomes, tracker.starts), change_rows)
            summary = cohort_summary(rows, plans, outcomes, time.time() - t0, started_iso, cluster_info, spec,
                                     retry_failed, cohort_csv, jobs)
            summary["interrupted"] = interrupted
            return rows, summary, write_cohort_tables(out, rows, summary)

        try:
            if to_run:
                if client is not None:
                    cluster_info.update(_describe_client(client, spec), used=True)
                    _submit_and_collect(client, to_run, spec, tracker, retries, outcomes)
                else:
                    with open_client(spec) as (cl, info):
                        cluster_info.update(info, used=True, started=spec.kind != "address")
                        if info.get("dashboard") and status_stream is not None:
                            status_stream.write("Dask dashboard: %s\n" % info["dashboard"])
                        tracker._write_event({"event": "log", "time": round(time.time(), 3),
                                              "message": "Dask scheduler %s" % info.get("address"),
                                              "scheduler": info.get("address"), "dashboard": info.get("dashboard")})
                        _submit_and_collect(cl, to_run, spec, tracker, retries, outcomes)
        except BaseException:
            # Ctrl-C / a lost scheduler: still leave a table of where every knee stands, then stop.
            with contextlib.suppress(Exception):
                tables(interrupted=True)
            raise
        tracker.status_line(final=True)
        if any(j.visit is not None for j in jobs):
            change_rows.extend(compare_cohort(jobs, out))
        rows, summary, paths = tables(interrupted=False)
        if change_rows:
            paths.update(write_cohort_longitudinal(jobs, out, report=report, rows=change_rows))
        if report:
            paths.update(_cohort_report(out, paths, progress, status_stream))
    if progress is not None:
        tracker._write_event({"event": "result", "time": round(time.time(), 3), "status": "complete",
                              "fraction": 1.0, "out_dir": str(out), **{k: v for k, v in paths.items()},
                              "counts": summary["counts_by_status"]})
    return BatchResult(rows, summary, outcomes, plans, paths)


def _submit_and_collect(client: Any, to_run: Sequence[PlannedKnee], spec: ClusterSpec, tracker: CohortProgress,
                        retries: int, outcomes: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Submit one task per knee and collect outcomes into ``outcomes`` as they finish."""
    from distributed import wait

    token = uuid.uuid4().hex[:10]
    topic = "kneepipeline-progress-" + token
    client.subscribe_topic(topic, tracker.worker_event)
    gpu_jobs = [p for p in to_run if spec.gpu_slots and needs_gpu(p.job.options)]
    if gpu_jobs and spec.kind == "address":
        _check_gpu_workers(client, spec)
    futures = {}
    for p in to_run:
        gpu = bool(spec.gpu_slots) and needs_gpu(p.job.options)
        fut = client.submit(run_knee, p.job.knee_id, p.job.options.to_dict(), topic,
                            spec.gpu_slots if gpu else 0, spec.tasks_per_gpu, spec.kind == "local",
                            key="knee-%s-%s" % (p.job.knee_id, token), pure=False, retries=retries,
                            resources={"GPU": 1} if gpu else None)
        futures[fut] = p
    pending = set(futures)
    try:
        while pending:
            try:
                res = wait(list(pending), timeout=2.0, return_when="FIRST_COMPLETED")
                done, pending = set(res.done), set(res.not_done)
            except TimeoutError:
                tracker.status_line()
                continue
            for fut in done:
                p = futures[fut]
                outcome = _future_outcome(fut, p)
                outcomes[p.job.knee_id] = outcome
                tracker.finished(outcome)
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(topic)
    return outcomes


def _future_outcome(fut: Any, p: PlannedKnee) -> Dict[str, Any]:
    kid = p.job.knee_id
    try:
        outcome = fut.result()
        if isinstance(outcome, dict) and outcome.get("id") == kid:
            return outcome
        err: KneePipelineError = InternalError("The task of knee %s returned %r." % (kid, type(outcome).__name__))
    except Exception as exc:  # noqa: BLE001
        try:
            from distributed import KilledWorker
        except ImportError:  # pragma: no cover
            KilledWorker = ()  # type: ignore
        if isinstance(exc, KilledWorker):
            err = InternalError("The workers running knee %s died repeatedly (out of memory or a crash); the "
                                "knee was given up." % kid,
                                hint="Run this knee alone (`kneepipeline run`) to see the problem, or give the "
                                     "workers more memory (--memory).")
        else:
            err = classify(exc)
    _record_failure(p.job, err)
    return {"id": kid, "status": "failed", "category": err.category, "message": err.message, "hint": err.hint,
            "seconds": None, "worker": None}


def _record_failure(job: KneeJob, err: KneePipelineError) -> None:
    """A knee whose task died before writing a final manifest gets one saying so (resume sees a failure)."""
    out = Path(job.options.out_dir)
    try:
        m = load_manifest(str(out)) if (out / MANIFEST_NAME).is_file() else None
    except (OSError, ValueError, TypeError):
        m = None
    if m is not None and m.status in ("complete", FAILED, CANCELLED):
        return
    from ..manifest import Manifest

    if m is None:
        m = Manifest(library_version=__version__, command="batch", created=now_iso(), options=job.options.to_dict())
    m.status, m.error, m.finished = FAILED, err.to_dict(), now_iso()
    try:
        out.mkdir(parents=True, exist_ok=True)
        m.write(str(out))
    except OSError:
        pass
