"""`kneepipeline batch`: a cohort CSV, one Dask task per knee (local cluster, scheduler address, SLURM, PBS)."""
from ._common import LIMITS, OUTPUT, add_mesh_args, add_model_args, add_nsm_args, group, options_from_args

NAME = "batch"
HELP = "run a cohort (CSV, one knee per row) on Dask: locally, on a scheduler, SLURM or PBS"
USAGE = "COHORT.csv --out DIR [options]"
EXAMPLES = [
    "kneepipeline batch cohort.csv --out cohort_out",
    "kneepipeline batch cohort.csv --out cohort_out --scheduler slurm --workers 8 --gpus-per-worker 1 "
    "--queue gpu --walltime 04:00:00",
    "kneepipeline batch cohort.csv --out cohort_out --retry-failed --dry-run",
]
DESCRIPTION = """\
Run the whole pipeline for every knee of COHORT.csv, one Dask task per knee, each in DIR/knees/<id>.

COHORT.csv columns: id (required, unique, letters/digits/._-), image (MRI file or DICOM folder) and/or
labels (an existing label map), and optionally label_convention, echoes (';'-separated), echo_times_ms
(';'-separated) or any other run option named as in RunOptions (nsm, device, bone_smooth_var_mm2, ...),
which overrides the command-line value for that row. Empty cells keep the command-line value. Relative
paths are taken from the CSV's folder.

Resume: re-running the same command skips knees whose run is complete with the same options. By default
every other knee runs (never run, failed, cancelled, interrupted, or run with other options).
--retry-failed runs ONLY the knees whose last run failed, was cancelled or was interrupted.

Outputs: DIR/cohort_results.csv and .parquet (one row per knee: status, error, laterality, every
measure, version, seconds), DIR/cohort_summary.json (counts, timings, throughput) and the cohort QC
report DIR/cohort_report.html. Exit status 0 when no knee failed, 1 otherwise. Ctrl-C or SIGTERM stops
the batch and still writes the tables; running the command again resumes.
At a terminal: a cohort progress bar on stderr (knees done, failed, running, ETA; failures and
warnings printed above it). Piped, or with --progress json: JSON-lines events on stdout ("knee" per
knee start/finish, the knees' own step events tagged with knee_id, "cohort" counters) and a one-line
cohort status on stderr.
"""


def add_arguments(p):
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("cohort", help="cohort CSV (one knee per row)")
    group(p, OUTPUT).add_argument("--out", required=True, metavar="DIR",
                                  help="batch folder: knees/<id>/ plus the cohort tables")
    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", default="local",
                   help="local (default: a Dask cluster on this machine), slurm or pbs (needs dask-jobqueue), "
                        "or the address of a running scheduler (tcp://host:8786 or a scheduler JSON file)")
    g.add_argument("--workers", type=int, help="worker processes (local) or jobs (slurm/pbs); default local: "
                                               "one per two cores, at most one per 6 GiB of free memory")
    g.add_argument("--threads-per-worker", type=int, default=1,
                   help="knees run at the same time by one worker (default %(default)s)")
    g.add_argument("--gpus-per-worker", type=int, default=0,
                   help="GPUs of each worker; knees that run a model then take one GPU each (Dask resource "
                        "GPU=1), so two models never share a GPU (default 0: no GPU limits)")
    g.add_argument("--tasks-per-gpu", type=int, default=1,
                   help="allow this many knees to share one GPU (default %(default)s)")
    g.add_argument("--memory", help="local: memory limit per worker (e.g. 16GB; default none); slurm/pbs: "
                                    "memory per job (default 16GB)")
    g.add_argument("--queue", help="slurm/pbs queue (partition)")
    g.add_argument("--account", help="slurm/pbs account / project")
    g.add_argument("--walltime", help="slurm/pbs wall time per job, e.g. 04:00:00")
    g.add_argument("--job-extra", action="append", default=[], metavar="DIRECTIVE",
                   help="extra #SBATCH/#PBS directive (repeatable), e.g. --job-extra=--constraint=a100")
    g.add_argument("--retries", type=int, default=1,
                   help="re-runs of a task that raised unexpectedly (worker deaths are handled by the "
                        "scheduler: up to distributed.scheduler.allowed-failures)")
    g.add_argument("--no-dashboard", dest="dashboard", action="store_false",
                   help="do not start the Dask dashboard (local)")
    r = p.add_argument_group("resume")
    r.add_argument("--retry-failed", action="store_true",
                   help="run ONLY the knees whose last run failed/was cancelled/interrupted (default: run all "
                        "knees that are not complete with the same options)")
    r.add_argument("--dry-run", action="store_true", help="print what would run or be skipped, and exit")
    lg = p.add_argument_group("labels and T2 (defaults for every row)")
    lg.add_argument("--label-convention", default="dosma",
                    help="label numbering of the rows' label maps: dosma (= nnU-Net), pymskt, or a JSON file")
    lg.add_argument("--echo-times-ms", type=float, nargs="+", help="echo times when the files do not carry them")
    lg.add_argument("--keep-first-echo", dest="t2_drop_first_echo", action="store_false",
                    help="fit all echoes (default drops the first)")
    add_model_args(p)
    add_mesh_args(p)
    add_nsm_args(p)
    group(p, OUTPUT).add_argument("--no-report", dest="report", action="store_false",
                                  help="skip the per-knee QC reports")
    group(p, LIMITS).add_argument("--timeout", dest="timeout_s", type=float, metavar="SECONDS",
                   help="per-knee time limit in seconds (enforced only where the run owns the main thread; "
                        "not on Dask worker threads)")


def main(args, progress):
    import logging
    import sys

    from ..batch import ClusterSpec, plan_cohort, read_cohort, run_batch
    from ..errors import ConfigurationError

    for name in ("workers", "threads_per_worker", "tasks_per_gpu"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigurationError("--%s must be at least 1." % name.replace("_", "-"))
    if args.gpus_per_worker < 0 or args.retries < 0:
        raise ConfigurationError("--gpus-per-worker and --retries must be >= 0.")
    if not getattr(args, "verbose", False):  # Dask's INFO chatter is not for users
        import distributed  # noqa: F401  (it sets its loggers up on import)

        logging.getLogger("distributed").setLevel(logging.WARNING)
    # every row brings its own image / labels
    base = options_from_args(args, labels=None, image=None)
    jobs = read_cohort(args.cohort, base, args.out)
    if args.dry_run:
        for p in plan_cohort(jobs, args.retry_failed):
            sys.stderr.write("%-8s %-12s %s\n" % (p.action, p.state, p.job.knee_id))
        return 0
    spec = ClusterSpec(scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
                       gpus_per_worker=args.gpus_per_worker, tasks_per_gpu=args.tasks_per_gpu, memory=args.memory,
                       queue=args.queue, account=args.account, walltime=args.walltime, job_extra=args.job_extra,
                       dashboard=args.dashboard)
    # SIGTERM (a cancelled SLURM/PBS job, `kill`) stops the batch like Ctrl-C: the cohort table is still
    # written, the local cluster closed, and the knees that were running are rerun next time.
    import signal

    from ..errors import CancelledError

    def on_term(signum, frame):
        raise CancelledError("The batch was cancelled (signal %d)." % signum,
                             hint="Run the same command again to resume; finished knees are kept.")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        # the bar shows the cohort's progress itself; without one, a status line on stderr does
        result = run_batch(jobs, args.out, spec, retry_failed=args.retry_failed, progress=progress,
                           status_stream=None if progress.face.bar else sys.stderr, retries=args.retries,
                           cohort_csv=args.cohort)
    finally:
        signal.signal(signal.SIGTERM, old)
    progress.outcome = {"status": "complete" if result.ok else "failed", "out_dir": str(args.out),
                        "counts": result.summary["counts_by_status"], **result.paths}
    progress.say(_summary(result))
    return 0 if result.ok else 1


def _summary(result) -> str:
    """Counts by status, the failed knees (first ten), throughput, where the tables are."""
    s = result.summary
    lines = ["", "kneepipeline batch: %s" % ", ".join("%d %s" % (n, st) for st, n in s["counts_by_status"].items())]
    failed = [r for r in result.rows if r.get("status") in ("failed", "cancelled")]
    for r in failed[:10]:
        lines.append("  %-20s %s (%s): %s" % (r.get("id"), r.get("status"), r.get("error_category"),
                                             r.get("error_message")))
    if len(failed) > 10:
        lines.append("  ... %d more in the table" % (len(failed) - 10))
    for key, label in (("cohort_csv", "Table:   "), ("cohort_summary", "Summary: "), ("cohort_report", "Report:  ")):
        if result.paths.get(key):
            lines.append("%s %s" % (label, result.paths[key]))
    return "\n".join(lines)
