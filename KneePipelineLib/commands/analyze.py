"""`kneepipeline analyze`: morphometry (meshes, thickness, regions, results) from an existing label map."""
from ._common import add_labels_args, add_mesh_args, add_run_control_args, add_t2_args, add_nsm_args, options_from_args

NAME = "analyze"
HELP = "meshes, regional cartilage thickness and results from an existing segmentation"


def add_arguments(p):
    add_labels_args(p, required=True)
    p.add_argument("--image", help="the MRI the labels belong to (optional; used for the report)")
    add_mesh_args(p)
    add_t2_args(p)
    add_nsm_args(p)
    add_run_control_args(p)


def main(args, progress):
    from ..pipeline import run

    opts = options_from_args(args)
    manifest = run(opts, progress, command=NAME)
    import sys

    sys.stderr.write("Results: %s/results.json (manifest: %s/manifest.json)\n" % (opts.out_dir, opts.out_dir))
    return 0
