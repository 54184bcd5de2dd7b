"""Cohorts on Dask: one task per knee, each calling :func:`KneePipelineLib.pipeline.run`.

The driver reads a cohort CSV into one :class:`RunOptions` per knee, decides which knees need work
(resume), submits one ``dask.distributed`` task per knee (locally by default; a running scheduler,
SLURM or PBS through ``dask-jobqueue`` when asked), forwards the knees' progress events, and writes the
cohort table (CSV + Parquet) and summary atomically.

Layout of the batch folder ``DIR``::

    DIR/knees/<id>/          one ordinary run folder per knee (manifest.json, results.json, meshes ...)
    DIR/cohort_results.csv   one row per knee of the cohort CSV
    DIR/cohort_results.parquet
    DIR/cohort_summary.json  counts by status, timings, throughput, scheduler, workers

Resume rules (also in ``kneepipeline batch --help``): a knee whose manifest is complete, whose outputs
exist and whose computation options match is skipped. By default every other knee runs (never run,
failed, cancelled, interrupted, or stale because the options changed). ``retry_failed=True`` runs only
knees whose last run failed, was cancelled or was interrupted; knees never run or stale are held.

Worker deaths: the Dask scheduler reschedules the knees of a worker that died on another worker (up to
``distributed.scheduler.allowed-failures`` deaths per knee, then the knee is reported failed). Each
task first empties its knee folder, so a re-run of a knee overwrites it cleanly.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from . import __version__
from .errors import ConfigurationError, InternalError, KneePipelineError, OutputUnwritableError, classify
from .manifest import MANIFEST_NAME, atomic_write_text, load_manifest, now_iso
from .options import RunOptions
from .progress import JSON_FACE, Progress

log = logging.getLogger("kneepipeline.batch")

KNEES_DIR = "knees"
COHORT_CSV = "cohort_results.csv"
COHORT_PARQUET = "cohort_results.parquet"
COHORT_SUMMARY = "cohort_summary.json"
LOCK_NAME = ".batch.lock"
SUMMARY_SCHEMA = "kneepipeline-cohort-summary/1"
JOBQUEUE_PIP = "pip install dask-jobqueue==0.9.0"

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# RunOptions fields a cohort row may not set: the batch owns them.
RESERVED_COLUMNS = ("out_dir", "resume")
PATH_FIELDS = ("image", "labels", "model_dir", "nsm_dir", "bscore_dir")
LIST_PATH_FIELDS = ("echoes",)
KNOWN_CONVENTIONS = ("dosma", "nnunet", "pymskt")
# knee states found on disk
MISSING, COMPLETE, STALE, FAILED, CANCELLED, INTERRUPTED = (
    "missing", "complete", "stale", "failed", "cancelled", "interrupted")
RETRYABLE = (FAILED, CANCELLED, INTERRUPTED)


# ----------------------------------------------------------------------------------------------
# the cohort CSV
# ----------------------------------------------------------------------------------------------
@dataclass
class KneeJob:
    knee_id: str
    options: RunOptions       # out_dir = DIR/knees/<id>, absolute paths
    line: int                 # line number in the cohort CSV (header = 1)


def _field_types() -> Dict[str, Any]:
    return typing.get_type_hints(RunOptions)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _parse_scalar(text: str, tp: Any, column: str) -> Any:
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "y", "on"):
            return True
        if low in ("0", "false", "no", "n", "off"):
            return False
        raise ValueError("%s: %r is not a yes/no value (true/false, yes/no, 1/0)" % (column, text))
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("%s: %r is not an integer" % (column, text)) from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("%s: %r is not a number" % (column, text)) from None
    return text


def parse_cell(text: str, column: str, types: Optional[Dict[str, Any]] = None) -> Any:
    """One cohort cell into the RunOptions field's type; lists are ';'-separated."""
    tp = _unwrap_optional((types or _field_types())[column])
    if typing.get_origin(tp) in (list, List):
        (item,) = typing.get_args(tp) or (str,)
        parts = [p.strip() for p in text.split(";") if p.strip()]
        return [_parse_scalar(p, item, column) for p in parts]
    return _parse_scalar(text, tp, column)


def _resolve(path: str, base_dir: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base_dir / p).resolve())


def _absolute_paths(values: Dict[str, Any], base_dir: Path) -> Dict[str, Any]:
    """Make the path-valued options absolute (relative ones are taken from ``base_dir``)."""
    out = dict(values)
    for name in PATH_FIELDS:
        if out.get(name):
            out[name] = _resolve(str(out[name]), base_dir)
    for name in LIST_PATH_FIELDS:
        if out.get(name):
            out[name] = [_resolve(str(v), base_dir) for v in out[name]]
    conv = out.get("label_convention")
    if conv and conv not in KNOWN_CONVENTIONS:
        out["label_convention"] = _resolve(str(conv), base_dir)
    return out


def knee_dir(out_dir: str | os.PathLike, knee_id: str) -> Path:
    return Path(out_dir) / KNEES_DIR / knee_id


def read_cohort(csv_path: str | os.PathLike, base: RunOptions, out_dir: str | os.PathLike) -> List[KneeJob]:
    """Read and validate a cohort CSV; every problem found is reported at once (ConfigurationError).

    Columns: ``id`` (required, unique, a safe folder name), ``image`` and/or ``labels``, and any
    RunOptions field (``label_convention``, ``echoes`` (';'-separated), ``echo_times_ms``, ``nsm`` ...)
    overriding ``base`` for that row. Empty cells keep ``base``'s value. Relative paths are taken from
    the CSV's folder. Missing input *files* are not checked here: the knee's run reports them.
    """
    csv_path = Path(csv_path)
    out_dir = Path(out_dir).resolve()
    try:
        with open(csv_path, "r", encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise ConfigurationError("The cohort file %s does not exist." % csv_path,
                                 hint="Pass the path of a CSV with one knee per row.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigurationError("Cannot read the cohort file %s: %s." % (csv_path, exc),
                                 hint="Save the cohort as a UTF-8 CSV file.") from exc
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ConfigurationError("The cohort file %s is empty." % csv_path,
                                 hint="The first line names the columns: id,image or id,labels,label_convention ...")
    header = [h.strip().lower().replace("-", "_").replace(" ", "_") for h in rows[0]]
    types = _field_types()
    allowed = [n for n in types if n not in RESERVED_COLUMNS]
    if "id" not in header:
        raise ConfigurationError("The cohort file %s has no 'id' column." % csv_path,
                                 hint="Add a column 'id' with a unique folder-safe name per knee.")
    dupes = sorted({h for h in header if header.count(h) > 1 and h})
    unknown = [h for h in header if h != "id" and h not in allowed]
    if dupes or unknown:
        parts = []
        if unknown:
            parts.append("unknown column(s): %s" % ", ".join(repr(u) for u in unknown))
        if dupes:
            parts.append("repeated column(s): %s" % ", ".join(dupes))
        raise ConfigurationError("The cohort file %s has %s." % (csv_path, "; ".join(parts)),
                                 hint="Columns are 'id' and run option names: %s (the batch sets out_dir "
                                      "and resume itself)." % ", ".join(allowed))
    base_dir = csv_path.resolve().parent
    base_values = _absolute_paths(base.to_dict(), Path.cwd())
    problems: List[str] = []
    jobs: List[KneeJob] = []
    seen: Dict[str, int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) > len(header):
            problems.append("line %d: %d cells but %d columns" % (lineno, len(row), len(header)))
            continue
        cells = {h: c.strip() for h, c in zip(header, row)}
        kid = cells.get("id", "")
        if not ID_RE.match(kid) or kid in (".", ".."):
            problems.append("line %d: id %r is not a safe folder name (letters, digits, '.', '_', '-'; "
                            "starts with a letter or digit; at most 100 characters)" % (lineno, kid))
            continue
        if kid.lower() in seen:
            problems.append("line %d: id %r repeats line %d (ids must be unique, ignoring case)"
                            % (lineno, kid, seen[kid.lower()]))
            continue
        seen[kid.lower()] = lineno
        values = dict(base_values)
        row_values: Dict[str, Any] = {}
        try:
            for h, text in cells.items():
                if h == "id" or text == "":
                    continue
                row_values[h] = parse_cell(text, h, types)
        except ValueError as exc:
            problems.append("line %d: %s" % (lineno, exc))
            continue
        values.update(_absolute_paths(row_values, base_dir))
        values["out_dir"] = str(knee_dir(out_dir, kid))
        values["resume"] = False
        opts = RunOptions(**values)
        try:
            opts.validate()
        except KneePipelineError as exc:
            problems.append("line %d (%s): %s" % (lineno, kid, exc.message))
            continue
        jobs.append(KneeJob(kid, opts, lineno))
    if problems:
        shown = problems[:20] + (["... and %d more" % (len(problems) - 20)] if len(problems) > 20 else [])
        raise ConfigurationError("The cohort file %s has %d problem(s):\n  %s" % (csv_path, len(problems), "\n  ".join(shown)),
                                 hint="Fix these rows; nothing was run.")
    if not jobs:
        raise ConfigurationError("The cohort file %s lists no knees." % csv_path, hint="Add one row per knee.")
    return jobs


# ----------------------------------------------------------------------------------------------
# planning (resume)
# ----------------------------------------------------------------------------------------------
def knee_state(job: KneeJob) -> str:
    """What the knee's folder holds: missing, complete (and matching), stale, failed, cancelled, interrupted."""
    from .pipeline import complete_and_matching

    out = Path(job.options.out_dir)
    if not (out / MANIFEST_NAME).is_file():
        return MISSING
    try:
        m = load_manifest(str(out))
    except (OSError, ValueError, TypeError):
        return INTERRUPTED
    if m.status == "complete":
        return COMPLETE if complete_and_matching(out, job.options) else STALE
    if m.status in (FAILED, CANCELLED):
        return m.status
    return INTERRUPTED   # "running" left behind by a killed batch


@dataclass
class PlannedKnee:
    job: KneeJob
    state: str        # knee_state before this invocation
    action: str       # "run" | "skip" (complete) | "hold" (not run: --retry-failed and not a failure)


def plan_cohort(jobs: Sequence[KneeJob], retry_failed: bool = False) -> List[PlannedKnee]:
    plans = []
    for job in jobs:
        st = knee_state(job)
        if st == COMPLETE:
            action = "skip"
        elif retry_failed:
            action = "run" if st in RETRYABLE else "hold"
        else:
            action = "run"
        plans.append(PlannedKnee(job, st, action))
    return plans


def needs_gpu(opts: RunOptions) -> bool:
    """Does this knee run a model (segmentation or shape model) on a GPU if one is offered?"""
    if opts.device == "cpu":
        return False
    segmentation = bool(opts.image) and not opts.labels
    return segmentation or opts.nsm != "none"


# ----------------------------------------------------------------------------------------------
# the task (runs on a worker)
# ----------------------------------------------------------------------------------------------
_GPU_LOCK = threading.Lock()
_GPU_BUSY: set = set()


@contextlib.contextmanager
def _gpu_slot(slots: int, per_gpu: int, offset: int) -> Iterator[Optional[int]]:
    """Pick a free GPU slot of this worker process; yields the CUDA device index (or None)."""
    if slots <= 0:
        yield None
        return
    with _GPU_LOCK:
        free = [s for s in range(slots) if s not in _GPU_BUSY]
        slot = free[0] if free else 0
        _GPU_BUSY.add(slot)
    try:
        gpus = max(1, slots // max(1, per_gpu))
        index = offset + slot % gpus
        torch = None
        try:
            import torch  # noqa: F401  (only on GPU workers)
        except ImportError:
            pass
        if torch is not None and torch.cuda.is_available() and torch.cuda.device_count() > 1:
            index %= torch.cuda.device_count()
            with torch.cuda.device(index):
                yield index
        else:
            yield index
    finally:
        with _GPU_LOCK:
            _GPU_BUSY.discard(slot)


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
    from . import pipeline

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
# the cluster
# ----------------------------------------------------------------------------------------------
@dataclass
class ClusterSpec:
    scheduler: str = "local"            # local | slurm | pbs | tcp://host:port | scheduler JSON file
    workers: Optional[int] = None       # None: a default from cores and memory (local), 1 job (slurm/pbs)
    threads_per_worker: int = 1
    gpus_per_worker: int = 0
    tasks_per_gpu: int = 1
    memory: Optional[str] = None        # local: per-worker limit (None = no limit); slurm/pbs: per job
    queue: Optional[str] = None
    account: Optional[str] = None
    walltime: Optional[str] = None
    job_extra: List[str] = field(default_factory=list)
    dashboard: bool = True
    log_directory: Optional[str] = None
    connect_timeout_s: float = 30.0      # connecting to a running scheduler

    @property
    def gpu_slots(self) -> int:
        return max(0, self.gpus_per_worker) * max(1, self.tasks_per_gpu)

    @property
    def kind(self) -> str:
        if self.scheduler in ("local", "slurm", "pbs"):
            return self.scheduler
        return "address"


def default_local_workers() -> int:
    """One worker per two cores, at most one per 6 GiB of available memory; at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, cores // 2)
    try:
        import psutil

        n = min(n, max(1, int(psutil.virtual_memory().available // (6 * 1024 ** 3))))
    except ImportError:
        pass
    return n


def jobqueue_kwargs(spec: ClusterSpec) -> Dict[str, Any]:
    """Arguments for dask_jobqueue.SLURMCluster / PBSCluster (one worker process per job)."""
    kw: Dict[str, Any] = {"cores": max(1, spec.threads_per_worker), "processes": 1,
                          "memory": spec.memory or "16GB"}
    for name in ("queue", "account", "walltime", "log_directory"):
        if getattr(spec, name):
            kw[name] = getattr(spec, name)
    extra = list(spec.job_extra)
    if spec.gpus_per_worker > 0:
        kw["worker_extra_args"] = ["--resources", "GPU=%d" % spec.gpu_slots]
        if spec.kind == "slurm":
            extra.append("--gres=gpu:%d" % spec.gpus_per_worker)
        else:
            extra.append("-l ngpus=%d" % spec.gpus_per_worker)
    if extra:
        kw["job_extra_directives"] = extra
    return kw


def _import_jobqueue(kind: str):
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigurationError("--scheduler %s needs the dask-jobqueue package, which is not installed." % kind,
                                 hint="Install it into this environment: %s" % JOBQUEUE_PIP) from None
    return dask_jobqueue


@contextlib.contextmanager
def open_client(spec: ClusterSpec) -> Iterator[Tuple[Any, Dict[str, Any]]]:
    """A connected ``distributed.Client`` and a description of the cluster; closes what it started."""
    from distributed import Client, LocalCluster

    cluster = None
    show = False
    info: Dict[str, Any] = {"kind": spec.kind}
    if spec.kind == "local":
        n = spec.workers or default_local_workers()
        show = False
        if spec.dashboard:
            try:
                import bokeh  # noqa: F401  (the dashboard needs it)
                show = True
            except ImportError:
                show = False
        # Everything on loopback: the scheduler's HTTP server (health/metrics, and the dashboard when
        # bokeh is installed) on a free port of 127.0.0.1, workers on 127.0.0.1.
        kw: Dict[str, Any] = dict(n_workers=n, threads_per_worker=max(1, spec.threads_per_worker), processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                                  memory_limit=spec.memory or 0, scheduler_kwargs={"dashboard": show})
        if spec.gpu_slots:
            _check_local_gpus(n, spec.gpus_per_worker)
            kw["resources"] = {"GPU": spec.gpu_slots}
        cluster = LocalCluster(**kw)
        client = Client(cluster)
        info["workers"] = n
    elif spec.kind in ("slurm", "pbs"):
        jq = _import_jobqueue(spec.kind)
        cls = jq.SLURMCluster if spec.kind == "slurm" else jq.PBSCluster
        cluster = cls(**jobqueue_kwargs(spec))
        n = spec.workers or 1
        cluster.scale(n=n)
        client = Client(cluster)
        info["workers"] = n
    else:
        addr = spec.scheduler
        try:
            if addr.endswith(".json") and os.path.isfile(addr):
                client = Client(scheduler_file=addr, timeout="%ss" % spec.connect_timeout_s)
            else:
                client = Client(addr, timeout="%ss" % spec.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ConfigurationError("Cannot connect to the Dask scheduler at %s (%s)." % (addr, exc),
                                     hint="Start it (`dask scheduler`) and workers (`dask worker ADDRESS`), or use "
                                          "--scheduler local.") from exc
        info["workers"] = len(client.scheduler_info().get("workers", {}))
    try:
        info["address"] = client.scheduler.address
        info["dashboard"] = None
        if spec.kind == "local":
            if show:
                info["dashboard"] = client.dashboard_link
        elif spec.dashboard:
            with contextlib.suppress(Exception):
                if "dashboard" in client.scheduler_info().get("services", {}):
                    info["dashboard"] = client.dashboard_link
        info["threads_per_worker"] = spec.threads_per_worker
        info["gpus_per_worker"] = spec.gpus_per_worker
        info["tasks_per_gpu"] = spec.tasks_per_gpu
        yield client, info
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _check_local_gpus(workers: int, gpus_per_worker: int) -> None:
    """Local workers split this machine's GPUs (worker i takes GPUs i*K .. i*K+K-1): there must be enough."""
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        count = 0
    if workers * gpus_per_worker > count:
        raise ConfigurationError("%d local worker(s) x %d GPU(s) each need %d GPU(s), but this machine has %d."
                                 % (workers, gpus_per_worker, workers * gpus_per_worker, count),
                                 hint="Use --workers %d --gpus-per-worker 1, or --gpus-per-worker 0 to run on "
                                      "the CPU." % max(1, count))


def _check_gpu_workers(client: Any, spec: ClusterSpec) -> None:
    workers = client.scheduler_info().get("workers", {})
    if workers and not any((w.get("resources") or {}).get("GPU") for w in workers.values()):
        raise ConfigurationError("No worker of the scheduler at %s offers a GPU resource, so the knees that need "
                                 "a GPU would wait forever." % spec.scheduler,
                                 hint="Start the workers with `dask worker ADDRESS --resources GPU=1`, or drop "
                                      "--gpus-per-worker to run without GPU limits.")


# ----------------------------------------------------------------------------------------------
# progress on the client
# ----------------------------------------------------------------------------------------------
def _fmt_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60, seconds % 60)


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
                _fmt_duration(time.time() - self.t0), _fmt_duration(self.eta_s()) if not final else "0:00:00")
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

        def tables(interrupted: bool) -> Tuple[List[Dict[str, Any]], Dict[str, Any], Dict[str, str]]:
            rows = cohort_rows(plans, outcomes, tracker.starts)
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
        rows, summary, paths = tables(interrupted=False)
        if report:
            paths.update(_cohort_report(out, paths, progress, status_stream))
    if progress is not None:
        tracker._write_event({"event": "result", "time": round(time.time(), 3), "status": "complete",
                              "fraction": 1.0, "out_dir": str(out), **{k: v for k, v in paths.items()},
                              "counts": summary["counts_by_status"]})
    return BatchResult(rows, summary, outcomes, plans, paths)


def _describe_client(client: Any, spec: ClusterSpec) -> Dict[str, Any]:
    info: Dict[str, Any] = {"address": getattr(client.scheduler, "address", None)}
    try:
        info["workers"] = len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001
        pass
    info.update(threads_per_worker=spec.threads_per_worker, gpus_per_worker=spec.gpus_per_worker)
    return info


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
    from .manifest import Manifest

    if m is None:
        m = Manifest(library_version=__version__, command="batch", created=now_iso(), options=job.options.to_dict())
    m.status, m.error, m.finished = FAILED, err.to_dict(), now_iso()
    try:
        out.mkdir(parents=True, exist_ok=True)
        m.write(str(out))
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------
# the cohort table and summary
# ----------------------------------------------------------------------------------------------
FIRST_COLUMNS = ["id", "status", "action", "error_category", "error_message", "error_hint"]
LAST_COLUMNS = ["library_version", "seconds", "task_seconds", "attempts", "worker", "out_dir"]


def _knee_row(plan: PlannedKnee, outcome: Optional[Dict[str, Any]], starts: int) -> Dict[str, Any]:
    from .pipeline import RESULTS_JSON, flatten_results

    job = plan.job
    out = Path(job.options.out_dir)
    if plan.action == "run":   # planned; "not_run" when the batch stopped before the knee started
        action = "ran" if (outcome is not None or starts) else "not_run"
    else:
        action = "skipped" if plan.action == "skip" else "not_run"
    row: Dict[str, Any] = {"id": job.knee_id, "status": "pending", "action": action, "error_category": None,
                           "error_message": None, "error_hint": None}
    manifest = None
    if (out / MANIFEST_NAME).is_file():
        with contextlib.suppress(OSError, ValueError, TypeError):
            manifest = load_manifest(str(out))
    if manifest is not None:
        row["status"] = manifest.status if manifest.status in ("complete", FAILED, CANCELLED) else INTERRUPTED
        if plan.action == "hold" and plan.state == STALE:
            row["status"] = STALE
        if manifest.error:
            row.update(error_category=manifest.error.get("category"), error_message=manifest.error.get("message"),
                       error_hint=manifest.error.get("hint"))
    if outcome is not None and outcome.get("status") != "complete":
        row.update(status=outcome.get("status", FAILED), error_category=outcome.get("category"),
                   error_message=outcome.get("message"), error_hint=outcome.get("hint"))
    measures: Dict[str, Any] = {}
    if row["status"] == "complete":
        try:
            doc = json.loads((out / RESULTS_JSON).read_text(encoding="utf-8"))
            measures = flatten_results(doc)
        except (OSError, ValueError) as exc:
            row.update(status=FAILED, error_category="internal",
                       error_message="results.json of a complete run is unreadable (%s)" % exc)
    row.update(measures)
    row["library_version"] = manifest.library_version if manifest is not None else None
    if manifest is not None:
        secs = [s.get("seconds") for s in manifest.steps.values() if isinstance(s.get("seconds"), (int, float))]
        row["seconds"] = round(sum(secs), 3) if secs else None
    else:
        row["seconds"] = None
    row["task_seconds"] = outcome.get("seconds") if outcome else None
    row["attempts"] = starts if outcome is not None else None
    row["worker"] = outcome.get("worker") if outcome else None
    row["out_dir"] = str(out)
    return row


def cohort_rows(plans: Sequence[PlannedKnee], outcomes: Dict[str, Dict[str, Any]],
                starts: Optional[Dict[str, int]] = None) -> List[Dict[str, Any]]:
    starts = starts or {}
    rows = [_knee_row(p, outcomes.get(p.job.knee_id), starts.get(p.job.knee_id, 0)) for p in plans]
    columns = list(FIRST_COLUMNS)
    for r in rows:
        for k in r:
            if k not in columns and k not in LAST_COLUMNS:
                columns.append(k)
    columns += LAST_COLUMNS
    return [{c: r.get(c) for c in columns} for r in rows]


def _stats(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"n": 0, "mean": None, "median": None, "p90": None, "min": None, "max": None, "total": None}
    v = sorted(values)

    def q(f: float) -> float:
        pos = f * (len(v) - 1)
        lo, hi = int(math.floor(pos)), int(math.ceil(pos))
        return v[lo] + (v[hi] - v[lo]) * (pos - lo)

    return {"n": len(v), "mean": round(sum(v) / len(v), 3), "median": round(q(0.5), 3), "p90": round(q(0.9), 3),
            "min": round(v[0], 3), "max": round(v[-1], 3), "total": round(sum(v), 3)}


def cohort_summary(rows, plans, outcomes, wall_s, started_iso, cluster_info, spec, retry_failed, cohort_csv,
                   jobs) -> Dict[str, Any]:
    def counts(key: str) -> Dict[str, int]:
        c: Dict[str, int] = {}
        for r in rows:
            if r.get(key) is not None:
                c[r[key]] = c.get(r[key], 0) + 1
        return dict(sorted(c.items()))

    ran = len(outcomes)
    csv_sha = None
    if cohort_csv and os.path.isfile(cohort_csv):
        csv_sha = hashlib.sha256(Path(cohort_csv).read_bytes()).hexdigest()
    base = jobs[0].options.computation_key() if jobs else {}
    shared = {k: v for k, v in base.items()
              if all(j.options.computation_key().get(k) == v for j in jobs)
              and k not in ("image", "labels", "echoes")}
    return {
        "schema": SUMMARY_SCHEMA,
        "library_version": __version__,
        "cohort_csv": str(Path(cohort_csv).resolve()) if cohort_csv else None,
        "cohort_csv_sha256": csv_sha,
        "started": started_iso,
        "finished": now_iso(),
        "wall_seconds": round(wall_s, 3),
        "knees": len(rows),
        "counts_by_status": counts("status"),
        "counts_by_action": counts("action"),
        "counts_by_error_category": counts("error_category"),
        "knees_run": ran,
        "retry_failed": retry_failed,
        "timings": {
            "pipeline_seconds": _stats([r["seconds"] for r in rows if r["action"] == "ran" and r["seconds"] is not None]),
            "task_seconds": _stats([o["seconds"] for o in outcomes.values() if o.get("seconds") is not None]),
        },
        "throughput_knees_per_hour": round(ran / wall_s * 3600.0, 2) if ran and wall_s > 0 else None,
        "scheduler": {"kind": cluster_info.get("kind"), "address": cluster_info.get("address"),
                      "dashboard": cluster_info.get("dashboard"), "used": cluster_info.get("used"),
                      "started_by_batch": cluster_info.get("started")},
        "workers": {"count": cluster_info.get("workers"), "threads_per_worker": spec.threads_per_worker,
                    "gpus_per_worker": spec.gpus_per_worker, "tasks_per_gpu": spec.tasks_per_gpu},
        "options": shared,
    }


def _column_array(values: List[Any]):
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, type=pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], type=pa.float64())
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def write_cohort_tables(out: Path, rows: List[Dict[str, Any]], summary: Dict[str, Any]) -> Dict[str, str]:
    """cohort_results.csv, cohort_results.parquet and cohort_summary.json, each written atomically."""
    import io

    columns = list(rows[0]) if rows else list(FIRST_COLUMNS + LAST_COLUMNS)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    csv_path = out / COHORT_CSV
    atomic_write_text(str(csv_path), buf.getvalue())

    paths = {"cohort_csv": str(csv_path)}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: _column_array([r.get(c) for r in rows]) for c in columns})
        pq_path = out / COHORT_PARQUET
        tmp = out / (".tmp-" + COHORT_PARQUET)
        try:
            pq.write_table(table, str(tmp))
            os.replace(tmp, pq_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        paths["cohort_parquet"] = str(pq_path)
    except ImportError:
        log.warning("pyarrow is not installed: no Parquet cohort table")
    summary_path = out / COHORT_SUMMARY
    atomic_write_text(str(summary_path), json.dumps(summary, indent=2, allow_nan=False, default=str))
    paths["cohort_summary"] = str(summary_path)
    return paths


def _cohort_report(out: Path, paths: Dict[str, str], progress: Optional[Progress],
                   status_stream: Optional[TextIO]) -> Dict[str, str]:
    """The cohort report, when the report package offers one; its failure never fails the batch."""
    try:
        from .report import build_cohort_report  # type: ignore[attr-defined]
    except ImportError:
        return {}
    try:
        res = build_cohort_report(paths["cohort_csv"], str(out))
        return {"cohort_report": str(res)} if res else {}
    except Exception as exc:  # noqa: BLE001 - non-fatal
        msg = "The cohort report failed: %s" % classify(exc).message
        if progress is not None:
            progress.warning(msg)
        elif status_stream is not None:
            status_stream.write("WARNING: " + msg + "\n")
        return {}
