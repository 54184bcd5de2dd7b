"""Step morphometry: bone and cartilage meshes, cartilage thickness, sub-regions and laterality."""
from __future__ import annotations

from .context import RunContext
from .results import region_row


def step_morphometry(ctx: RunContext) -> None:
    from ..io.readers import write_volume
    import numpy as np

    from ..errors import MissingStructuresError
    from .. import labels as L

    o = ctx.options
    labels = ctx.data["labels"]
    L.require(labels.array, [L.FEMUR], "cartilage thickness")
    if not any(np.any(labels.array == c) for c in L.CARTILAGES):
        raise MissingStructuresError("The label map has no cartilage (none of: %s)."
                                     % ", ".join(L.TISSUES[c] for c in L.CARTILAGES))
    for w in L.orphan_cartilage_warnings(labels.array):   # a region that cannot be measured is said so
        ctx.warn(w)
    from ..resources import morphometry_bytes, require_memory

    require_memory(morphometry_bytes(labels.array, labels.spacing_mm, max(o.bone_smooth_var_mm2,
                                                                        o.cartilage_smooth_var_mm2)),
                   "morphometry", "meshing a %s-voxel label map of %s mm voxels"
                   % (" x ".join(map(str, labels.shape_ijk)), " x ".join("%.3g" % s for s in labels.spacing_mm)))
    if "segmentation" not in ctx.manifest.steps or ctx.manifest.steps["segmentation"].get("status") != "complete":
        ctx.output("labels.nii.gz", "labelmap", lambda p: write_volume(labels, p), step="morphometry",
                   description="Input label map in canonical labels", coordinate_system="LPS", structure="tissues",
                   labels={str(k): v for k, v in L.TISSUES.items()})
    from ..morphometry import MeshSettings, analyze_labels, write_mesh

    settings = MeshSettings(bone_smooth_var_mm2=o.bone_smooth_var_mm2,
                            cartilage_smooth_var_mm2=o.cartilage_smooth_var_mm2)
    res = analyze_labels(labels, settings, progress=ctx.progress.sub("morphometry"))
    ctx.data["morphometry"] = res
    for w in res.warnings:
        ctx.warn(w)
    ctx.output("regions.nii.gz", "labelmap", lambda p: write_volume(res.regions_volume, p), step="morphometry",
               description="Cartilage sub-regions", coordinate_system="LPS", structure="regions",
               labels={str(k): v for k, v in L.region_label_names().items()})
    if res.subregions_volume is not None:
        from ..morphometry.chondrometrics import SUBREGIONS

        names = dict(L.region_label_names())
        names.update({s.code: s.name for s in SUBREGIONS})
        ctx.output("subregions.nii.gz", "labelmap", lambda p: write_volume(res.subregions_volume, p), step="morphometry",
                   description="Cartilage subregions (Chondrometrics: cMT ... icLF; docs/MEASURES.md)",
                   coordinate_system="LPS", structure="subregions", labels={str(k): v for k, v in names.items()})
    ext = o.mesh_format
    for name, poly in res.meshes.items():
        arrays = [poly.GetPointData().GetArrayName(i) for i in range(poly.GetPointData().GetNumberOfArrays())]
        arrays = [a for a in arrays if a and a.lower() != "normals"]
        ctx.output("meshes/%s.%s" % (name, ext), "mesh", lambda p, poly=poly: write_mesh(poly, p, ext),
                   step="morphometry", structure=name, coordinate_system="LPS", scalars=arrays,
                   units={"thickness_mm": "mm"} if "thickness_mm" in arrays else {},
                   description=name.replace("_", " ") + " surface")
    ctx.results["laterality"] = {"side": res.laterality.side, "evidence": res.laterality.evidence,
                                 "confidence": round(res.laterality.confidence, 3)}
    from ..morphometry.chondrometrics import compartment_rows

    rows = [region_row(r) for r in res.regions]
    # + the femorotibial compartments MFTC / LFTC (summed plates; chondrometrics.compartment_rows)
    ctx.results["regions"] = rows + compartment_rows(rows)
