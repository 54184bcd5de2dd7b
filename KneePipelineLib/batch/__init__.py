"""Cohorts on Dask: one task per knee, each calling :func:`KneePipelineLib.pipeline.run`.

The driver reads a cohort CSV into one :class:`RunOptions` per knee, decides which knees need work
(resume), submits one ``dask.distributed`` task per knee (locally by default; a running scheduler,
SLURM or PBS through ``dask-jobqueue`` when asked), forwards the knees' progress events, and writes the
cohort table (CSV + Parquet) and summary atomically.

The files follow the data, in the order a cohort flows through them:

* :mod:`.cohort`    -- CSV -> knees (:class:`KneeJob`) -> plan (run / skip / hold: the resume rules);
* :mod:`.cluster`   -- which Dask client (:class:`ClusterSpec`, :func:`open_client`) and the GPU slots;
* :mod:`.execution` -- submit a task per knee (:func:`run_knee`), follow it (:class:`CohortProgress`), record
  its outcome; :func:`run_batch` runs the whole cohort;
* :mod:`.tables`    -- one row per knee, the summary, the CSV/Parquet/JSON files, the cohort report;
* :mod:`.longitudinal` -- cohorts with a ``visit`` column: each knee's follow-ups compared with its baseline,
  per-region change in the cohort table, the cohort's mean change and SRM.

Layout of the batch folder ``DIR``::

    DIR/knees/<id>/          one ordinary run folder per knee (manifest.json, results.json, meshes ...)
    DIR/cohort_results.csv   one row per knee of the cohort CSV
    DIR/cohort_results.parquet
    DIR/cohort_summary.json  counts by status, timings, throughput, scheduler, workers
    DIR/longitudinal/<id>/   with visits: one longitudinal comparison per knee (baseline = first visit)
    DIR/cohort_longitudinal.csv, cohort_longitudinal_summary.json  change per knee; mean change and SRM
"""
from .cluster import JOBQUEUE_PIP, ClusterSpec, default_local_workers, jobqueue_kwargs, open_client
from .cluster import _check_local_gpus, _gpu_slot  # noqa: F401  (the tests reach them through the package)
from .cohort import (CANCELLED, COMPLETE, FAILED, ID_RE, INTERRUPTED, KNEES_DIR, KNOWN_CONVENTIONS,
                     LIST_PATH_FIELDS, MISSING, PATH_FIELDS, RESERVED_COLUMNS, RETRYABLE, STALE, KneeJob,
                     PlannedKnee, knee_dir, knee_state, needs_gpu, parse_cell, plan_cohort, read_cohort)
from .execution import LOCK_NAME, BatchResult, CohortProgress, ping, run_batch, run_knee
from .tables import (COHORT_CSV, COHORT_PARQUET, COHORT_SUMMARY, FIRST_COLUMNS, LAST_COLUMNS,
                     SUMMARY_SCHEMA, cohort_rows, cohort_summary, write_cohort_tables)

__all__ = [
    "JOBQUEUE_PIP", "ClusterSpec", "default_local_workers", "jobqueue_kwargs", "open_client", "CANCELLED", "COMPLETE", "FAILED", "ID_RE", "INTERRUPTED", "KNEES_DIR",
    "KNOWN_CONVENTIONS", "LIST_PATH_FIELDS", "MISSING", "PATH_FIELDS", "RESERVED_COLUMNS", "RETRYABLE",
    "STALE", "KneeJob", "PlannedKnee", "knee_dir", "knee_state", "needs_gpu", "parse_cell", "plan_cohort",
    "read_cohort", "LOCK_NAME", "BatchResult", "CohortProgress", "ping", "run_batch", "run_knee",
    "COHORT_CSV", "COHORT_PARQUET", "COHORT_SUMMARY", "FIRST_COLUMNS", "LAST_COLUMNS", "SUMMARY_SCHEMA",
    "cohort_rows", "cohort_summary", "write_cohort_tables",
]
