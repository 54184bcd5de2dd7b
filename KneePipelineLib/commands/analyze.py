"""`kneepipeline analyze`: morphometry (meshes, thickness, regions, results) from an existing label map."""
from ._common import (INPUT, add_labels_args, add_mesh_args, add_nsm_args, add_run_control_args, add_t2_args,
                      group, options_from_args)

NAME = "analyze"
HELP = "meshes, regional cartilage thickness and results from an existing segmentation"
USAGE = "--labels LABELS --out DIR [options]"
EXAMPLES = [
    "kneepipeline analyze --labels knee_labels.nii.gz --out runs/knee01",
    "kneepipeline analyze --labels seg.nrrd --label-convention pymskt --echoes mese_t2/ --out runs/knee01",
    "kneepipeline analyze --labels knee_labels.nii.gz --out runs/knee01 --json | jq '.results.regions[0]'",
]
DESCRIPTION = ("Meshes, regional cartilage thickness, optional T2 (--echoes) and shape model (--nsm) from a label "
               "map you already have; writes results.json, results.csv, meshes and the QC report into --out.")


def add_arguments(p):
    add_labels_args(p, required=True)
    group(p, INPUT).add_argument("--image", help="the MRI the labels belong to (optional; used for the report)")
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
