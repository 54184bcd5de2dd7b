"""Step input: read the image and/or label map (labels remapped to the canonical convention once, here)."""
from __future__ import annotations

from ..errors import InvalidInputError
from .context import RunContext


def step_input(ctx: RunContext) -> None:
    from ..io.readers import read_image, read_labels
    from .. import labels as L

    o = ctx.options
    sub = ctx.progress.sub("input")
    if o.image:
        sub(0.1, "reading image")
        ctx.data["image"] = read_image(o.image, workdir=ctx.work_dir)
    if o.labels:
        sub(0.5, "reading label map")
        vol = read_labels(o.labels, workdir=ctx.work_dir)
        table = L.load_convention(o.label_convention)
        vol = vol.with_array(L.remap(vol.array, table, o.label_convention))
        ctx.data["labels"] = vol
        if "image" in ctx.data and not ctx.data["image"].same_geometry(vol, tol=1e-3):
            raise InvalidInputError("The image and the label map have different grids (size, spacing, origin or "
                                    "orientation).", hint="Give the label map that was segmented from this image.")
    if o.echoes:   # bad echo inputs fail here, before segmentation and meshing spend minutes
        from .. import t2 as T2

        sub(0.8, "reading echoes")
        ctx.data["echoes"] = T2.load_echoes(list(o.echoes), o.echo_times_ms)
    for read in (ctx.data.get("image"), ctx.data.get("labels")):
        for w in (read.metadata.get("warnings", []) if read is not None else []):   # odd but usable geometry
            ctx.warn(w)
    sub(1.0, "inputs read")
