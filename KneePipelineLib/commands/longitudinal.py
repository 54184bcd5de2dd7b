"""`kneepipeline longitudinal`: cartilage change between visits of the same knee (run folders in)."""
NAME = "longitudinal"
HELP = "cartilage change between a baseline and follow-up runs of the same knee"
DESCRIPTION = (
    "Compare run folders of one knee (from `run` or `analyze`): each follow-up bone is rigidly registered onto "
    "the baseline bone, its thickness mapped onto the baseline vertices, and the change reported per point and "
    "per region.")
USAGE = "--baseline RUN_DIR --followup RUN_DIR [--followup RUN_DIR ...] --out DIR [options]"
EXAMPLES = [
    "kneepipeline longitudinal --baseline runs/knee01_v00 --followup runs/knee01_v24 --out runs/knee01_change",
    "kneepipeline longitudinal --baseline runs/k1_v00 --followup runs/k1_v12 --followup runs/k1_v24 --out runs/k1_change",
]


def add_arguments(p):
    g = p.add_argument_group("input")
    g.add_argument("--baseline", required=True, help="run folder of the baseline visit")
    g.add_argument("--followup", required=True, action="append",
                   help="run folder of a follow-up visit (repeat for several visits)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder (outside the run folders)")
    g.add_argument("--no-report", dest="report", action="store_false", help="skip the change maps report")
    g = p.add_argument_group("matching")
    g.add_argument("--max-distance-mm", type=float, default=1.5,
                   help="a baseline vertex is compared only when a follow-up vertex lies this close after "
                        "registration (default %(default)s mm)")


def main(args, progress):
    import math

    from ..errors import InvalidInputError
    from ..longitudinal import compare_runs

    if not (math.isfinite(args.max_distance_mm) and 0 < args.max_distance_mm <= 10):
        raise InvalidInputError("--max-distance-mm must be a number in (0, 10] (got %r)." % args.max_distance_mm)
    progress.set_steps([("longitudinal", 1.0)])
    progress.hello(NAME, __import__("KneePipelineLib").__version__)
    doc = compare_runs(args.baseline, args.followup, args.out,
                       progress=lambda f, m: progress.step("longitudinal", f, m), report=args.report,
                       max_distance_mm=args.max_distance_mm)
    progress.result(out_dir=str(args.out), longitudinal=str(args.out) + "/longitudinal.json",
                    warnings=doc["warnings"])
    lines = [""]   # the closing summary (a person at a terminal; not with --json or --progress json)
    for v in doc["followups"]:
        lines.append("%s vs %s:" % (v["visit"], doc["baseline"]["visit"]))
        for r in v["regions"]:
            if r["change_mean_mm"] is not None:
                lines.append("  %-30s %+7.3f mm (%+6.2f %%)" % (r["name"], r["change_mean_mm"],
                                                              r["change_percent"] or 0.0))
    lines.append("Results:  %s/longitudinal.json" % args.out)
    progress.say("\n".join(lines))
    return 0
