"""`kneepipeline run`: the whole pipeline for one knee (what the Slicer panel and `batch` call)."""
from ._common import (add_labels_args, add_mesh_args, add_model_args, add_nsm_args, add_run_control_args,
                      add_t2_args, options_from_args)

NAME = "run"
HELP = "the whole pipeline: segmentation -> morphometry -> T2 -> shape model -> results"


def add_arguments(p):
    p.add_argument("--image", help="knee MRI: NIfTI, NRRD, DICOM folder/file or zip")
    add_labels_args(p)
    add_model_args(p)
    add_mesh_args(p)
    add_t2_args(p)
    add_nsm_args(p)
    add_run_control_args(p)


def main(args, progress):
    import sys

    from ..pipeline import run

    opts = options_from_args(args)
    run(opts, progress, command=NAME)
    sys.stderr.write("Results: %s/results.json\n" % opts.out_dir)
    return 0
