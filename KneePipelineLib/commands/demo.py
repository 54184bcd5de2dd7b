"""`kneepipeline demo`: analyse the real sample right-knee label map end to end."""
NAME = "demo"
HELP = "run the analysis on the real sample knee label map and print where the results are"
USAGE = "[--out DIR] [options]"
EXAMPLES = [
    "kneepipeline demo",
    "kneepipeline demo --out demo-output --no-report",
]


def add_arguments(p):
    from ._common import INPUT, OUTPUT, group

    group(p, INPUT).add_argument("--cache", metavar="DIR", help="sample-data cache folder")
    g = group(p, OUTPUT)
    g.add_argument("--out", default="demo-output", help="output folder (default %(default)s)")
    g.add_argument("--no-report", dest="report", action="store_false", help="skip the QC report")


def main(args, progress):
    from pathlib import Path

    from ..options import RunOptions
    from ..pipeline import run
    from ..sample_data import SAMPLE_LABELS, ensure_sample_data
    from ._summary import run_outcome, run_summary

    data = ensure_sample_data(Path(args.cache) if args.cache else None)
    opts = RunOptions(out_dir=str(Path(args.out).resolve()), labels=str(data / SAMPLE_LABELS),
                      label_convention="pymskt", report=args.report)
    run(opts, progress, command=NAME)
    progress.outcome = run_outcome(opts.out_dir, progress, NAME)
    progress.say(run_summary(opts.out_dir, NAME, all_regions=True))
    return 0
