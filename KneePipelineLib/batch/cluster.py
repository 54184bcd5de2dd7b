"""The cluster: which Dask client a batch uses (a local cluster, a running scheduler, SLURM or PBS) and the
GPU slots a knee takes on its worker.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import ConfigurationError

JOBQUEUE_PIP = "pip install dask-jobqueue==0.9.0"


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


def _describe_client(client: Any, spec: ClusterSpec) -> Dict[str, Any]:
    info: Dict[str, Any] = {"address": getattr(client.scheduler, "address", None)}
    try:
        info["workers"] = len(client.scheduler_info().get("workers", {}))
    except Exception:  # noqa: BLE001
        pass
    info.update(threads_per_worker=spec.threads_per_worker, gpus_per_worker=spec.gpus_per_worker)
    return info


# ----------------------------------------------------------------------------------------------
# GPU slots (inside a worker process)
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
