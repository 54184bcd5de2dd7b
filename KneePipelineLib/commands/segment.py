"""`kneepipeline segment`: an MRI in, a canonical label map (the input's geometry) out."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ._common import INPUT, OUTPUT, add_model_args, group, options_from_args

NAME = "segment"
HELP = "segment a knee MRI with a registry model (writes OUT/segmentation.nii.gz)"
DESCRIPTION = ("Segment a knee MRI (NIfTI, NRRD, DICOM folder or zip) with a model from `kneepipeline models`. "
               "Writes OUT/segmentation.nii.gz (canonical labels, the input's exact geometry) and "
               "OUT/segmentation.json (model provenance).")
USAGE = "--image MRI --out DIR [options]"
EXAMPLES = [
    "kneepipeline segment --image knee_dess.nii.gz --out seg/knee01",
    "kneepipeline segment --image dicom/knee01/ --model dosma_sagittal --device cpu --out seg/knee01",
]
STEPS = [("read", 1.0), ("segment", 20.0), ("write", 1.0)]


def add_arguments(p):
    group(p, INPUT).add_argument("--image", required=True, help="the knee MRI (NIfTI, NRRD, DICOM folder/zip)")
    add_model_args(p)
    group(p, OUTPUT).add_argument("--out", required=True, metavar="DIR", help="output folder")


def main(args, progress) -> int:
    from .. import __version__
    from ..errors import OutputUnwritableError
    from ..io.readers import read_image, write_volume
    from ..segmentation import segment

    opts = options_from_args(args).validate()
    out = Path(opts.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritableError("Cannot create the output folder %s: %s." % (out, exc.strerror)) from exc
    progress.set_steps(STEPS)
    progress.hello(NAME, __version__)
    progress.step("read", 0.0, "reading %s" % opts.image)
    image = read_image(opts.image, workdir=str(out))
    progress.step("read", 1.0, "image %s voxels" % "x".join(map(str, image.shape_ijk)))
    result = segment(image, opts, progress.sub("segment"))
    for w in (result.model or {}).get("warnings", []) or []:   # e.g. an acquisition plane the model never saw
        progress.warning(w)
    progress.step("write", 0.0, "writing segmentation")
    seg_path = out / "segmentation.nii.gz"
    write_volume(result.labels, seg_path)
    info = {"image": os.path.abspath(opts.image), "segmentation": seg_path.name, "model": result.model,
            "options": opts.to_dict()}
    from ..io.writers import atomic_write_text

    atomic_write_text(out / "segmentation.json", json.dumps(info, indent=2, sort_keys=True, default=str))
    progress.step("write", 1.0, "wrote %s" % seg_path)
    progress.result(out_dir=str(out), segmentation=str(seg_path))
    progress.outcome = dict(progress.outcome or {}, model=result.model)
    from ._summary import files_summary

    progress.say(files_summary("kneepipeline segment: %s segmented with %s" % (opts.image, opts.model), str(out),
                               ["segmentation.nii.gz", "segmentation.json"], len(progress.warnings)))
    return 0
