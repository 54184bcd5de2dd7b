"""`kneepipeline report`: (re)build the QC report of a run folder, or a cohort report from the batch table."""
from __future__ import annotations

NAME = "report"
HELP = "build the quality-control report of a run (or of a cohort with --cohort)"
USAGE = "RUN_DIR | --cohort COHORT_CSV [--out DIR]"
EXAMPLES = [
    "kneepipeline report runs/knee01",
    "kneepipeline report --cohort cohort_out/cohort_results.csv --out cohort_out/report",
]


def add_arguments(p):
    from ._common import INPUT, OUTPUT, group

    p.add_argument("run_dir", nargs="?", help="run folder (holds manifest.json)")
    group(p, INPUT).add_argument("--cohort", metavar="COHORT_CSV", help="cohort_results.csv from `kneepipeline batch`")
    group(p, OUTPUT).add_argument("--out", metavar="DIR", help="output folder of the cohort report")


def main(args, progress):
    from pathlib import Path

    from ..errors import InvalidInputError

    if args.cohort:
        from ..report import build_cohort_report

        out = Path(args.out) if args.out else Path(args.cohort).resolve().parent / "cohort_report"
        progress.set_steps([("report", 1)])
        progress.hello(NAME, _version())
        path = build_cohort_report(Path(args.cohort), out)
        progress.result(report=str(path))
        progress.say("\nkneepipeline report: cohort report of %s\nReport:   %s" % (args.cohort, path))
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
    progress.say("\nkneepipeline report: QC report of %s\nReport:   %s" % (run_dir, path))
    return 0


def _version():
    from .. import __version__

    return __version__
