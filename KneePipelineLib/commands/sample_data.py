"""`kneepipeline sample-data`: fetch the real sample knee data (mskt 0.1.22 sdist from PyPI)."""
NAME = "sample-data"
HELP = "download the real sample knee data (label map, MESE T2 series, femur meshes) into a cache"
USAGE = "[--cache DIR] [--archive mskt-0.1.22.tar.gz]"
EXAMPLES = [
    "kneepipeline sample-data",
    "kneepipeline sample-data --cache ~/knee-sample --json | jq -r .sample_data",
]


def add_arguments(p):
    from ._common import INPUT, OUTPUT, group

    g = group(p, INPUT)
    g.add_argument("--archive", metavar="FILE", help="use an already downloaded mskt-0.1.22.tar.gz")
    g.add_argument("--no-shared", dest="use_shared", action="store_false",
                   help="ignore a pre-filled shared/data folder next to the project")
    group(p, OUTPUT).add_argument("--cache", metavar="DIR",
                                  help="where to put the files (default ~/.cache/kneepipeline/sample-data)")


def main(args, progress):
    from pathlib import Path

    from ..sample_data import ensure_sample_data

    progress.set_steps([("sample-data", 1)])
    progress.hello(NAME, __import__("KneePipelineLib").__version__)
    folder = ensure_sample_data(Path(args.cache) if args.cache else None,
                                Path(args.archive) if args.archive else None, args.use_shared,
                                progress=progress.sub("sample-data"))
    progress.result(sample_data=str(folder))
    progress.say("\nkneepipeline sample-data: the real sample knee (pymskt / mskt 0.1.22)\nSample data: %s" % folder)
    return 0
