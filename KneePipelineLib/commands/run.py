"""`kneepipeline run`: the whole pipeline for one knee (what the Slicer panel and `batch` call)."""
from ._common import (add_image_arg, add_labels_args, add_mesh_args, add_model_args, add_nsm_args,
                      add_run_control_args, add_t2_args, options_from_args)

NAME = "run"
HELP = "the whole pipeline: segmentation -> morphometry -> T2 -> shape model -> results"
USAGE = "(--image MRI | --labels LABELS) --out DIR [options]"
EXAMPLES = [
    "kneepipeline run --image knee_dess.nii.gz --out runs/knee01",
    "kneepipeline run --image dicom/knee01/ --echoes dicom/knee01_t2/ --nsm bone_cartilage --out runs/knee01",
    "kneepipeline run --image knee_dess.nii.gz --out runs/knee01 --json | jq .results.laterality",
]
DESCRIPTION = ("Segment the knee MRI with a registry model (or take --labels), then meshes, regional cartilage "
               "thickness, T2 (with --echoes), the shape model and B-score (with --nsm), results.json and the "
               "QC report, all in --out.")


def add_arguments(p):
    add_image_arg(p)
    add_labels_args(p)
    add_model_args(p)
    add_mesh_args(p)
    add_t2_args(p)
    add_nsm_args(p)
    add_run_control_args(p)


def main(args, progress):
    from ..pipeline import run
    from ._summary import run_outcome, run_summary

    opts = options_from_args(args)
    run(opts, progress, command=NAME)
    progress.outcome = run_outcome(opts.out_dir, progress, NAME)
    progress.say(run_summary(opts.out_dir, NAME))
    return 0
