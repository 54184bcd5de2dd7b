"""`kneepipeline report`: (re)build the QC report of a run folder, or a cohort report from the batch table."""
from __future__ import annotations

NAME = "report"
HELP = "build the quality-control report of a run (or of a cohort with --cohort)"


def add_arguments(p):
    p.add_argument("run_dir", nargs="?", help="run folder (holds manifest.json)")
    p.add_argument("--cohort", metavar="COHORT_CSV", help="cohort_results.csv from `kneepipeline batch`")
    p.add_argument("--out", help="output folder of the cohort report")


def main(args, progress):
    import sys
    from pathlib import Path

    from ..errors import InvalidInputError

    if args.cohort:
        from ..report import build_cohort_report

        out = Path(args.out) if args.out else Path(args.cohort).resolve().parent / "cohort_report"
        progress.set_steps([("report", 1)])
        progress.hello(NAME, _version())
        path = build_cohort_report(Path(args.cohort), out)
        progress.result(report=str(path))
        sys.stderr.write("Cohort report: %s\n" % path)
        return 0
    if not args.run_dir:
        raise InvalidInputError("Give a run folder, or --cohort COHORT_CSV --out DIR.",
                                hint="kneepipeline report RUN_DIR")
    from ..manifest import MANIFEST_NAME, load_manifest
    from ..report import build_report

    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / MANIFEST_NAME).is_file():
        raise InvalidInputError("%s holds no %s; it is not a run folder." % (run_dir, MANIFEST_NAME),
                                hint="Point at the --out folder of `kneepipeline run` or `analyze`.")
    try:
        manifest = load_manifest(str(run_dir))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError("%s/%s is not a valid manifest (%s)." % (run_dir, MANIFEST_NAME, exc)) from exc
    progress.set_steps([("report", 1)])
    progress.hello(NAME, _version())
    path = build_report(run_dir, manifest, progress=progress.sub("report"))
    manifest.steps["report"] = {"status": "complete"}
    manifest.write(str(run_dir))
    progress.result(report=str(path), manifest=str(run_dir / MANIFEST_NAME))
    sys.stderr.write("Report: %s\n" % path)
    return 0


def _version():
    from .. import __version__

    return __version__
