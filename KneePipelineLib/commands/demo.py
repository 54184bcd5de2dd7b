"""`kneepipeline demo`: analyse the real sample right-knee label map end to end."""
NAME = "demo"
HELP = "run the analysis on the real sample knee label map and print where the results are"


def add_arguments(p):
    p.add_argument("--out", default="demo-output", help="output folder (default %(default)s)")
    p.add_argument("--cache", help="sample-data cache folder")
    p.add_argument("--no-report", dest="report", action="store_false")


def main(args, progress):
    import json
    import sys
    from pathlib import Path

    from ..options import RunOptions
    from ..pipeline import run
    from ..sample_data import SAMPLE_LABELS, ensure_sample_data

    data = ensure_sample_data(Path(args.cache) if args.cache else None)
    opts = RunOptions(out_dir=str(Path(args.out).resolve()), labels=str(data / SAMPLE_LABELS),
                      label_convention="pymskt", report=args.report)
    run(opts, progress, command=NAME)
    res = json.loads((Path(opts.out_dir) / "results.json").read_text())
    lines = ["", "KneePipeline demo: %s knee" % res["laterality"]["side"]]
    names = {r["name"] for r in res["regions"] if r.get("kind", "region") == "region"}
    for r in res["regions"]:
        if r.get("kind") == "plate" and r["name"] in names:
            continue
        lines.append("  %-30s %5s mm  (coverage %s)" % (
            r["name"] + (" (whole plate)" if r.get("kind") == "plate" else ""), "n/a" if r.get("thickness_mean_mm") is None else "%.2f" % r["thickness_mean_mm"],
            "n/a" if r.get("coverage") is None else "%.0f%%" % (100 * r["coverage"])))
    lines.append("Results:  %s" % (Path(opts.out_dir) / "results.json"))
    lines.append("Table:    %s" % (Path(opts.out_dir) / "results.csv"))
    if (Path(opts.out_dir) / "report" / "report.html").exists():
        lines.append("Report:   %s" % (Path(opts.out_dir) / "report" / "report.html"))
    sys.stderr.write("\n".join(lines) + "\n")
    return 0
