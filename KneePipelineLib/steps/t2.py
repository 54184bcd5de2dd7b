"""Step t2: T2 maps from the echo series (MESE fit or qDESS estimator), regional and on the bone surfaces."""
from __future__ import annotations

from .context import RunContext
from .results import jsonable


def step_t2(ctx: RunContext) -> None:
    from ..io.readers import write_volume
    from .. import t2 as T2

    o = ctx.options
    sub = ctx.progress.sub("t2")
    sub(0.05, "reading echoes")
    echoes = ctx.data.pop("echoes", None)   # read (and checked) by the input step
    if echoes is None:
        echoes = T2.load_echoes(list(o.echoes or []), o.echo_times_ms)
    from ..resources import require_memory, t2_bytes

    n_echo, n_vox = int(echoes.images.shape[0]), int(echoes.images[0].size)
    require_memory(t2_bytes(n_echo, n_vox), "t2", "fitting %d echoes of %d voxels" % (n_echo, n_vox))
    if len(echoes.echo_times_ms) == 2:   # qDESS: the analytic two-echo estimator
        sub(0.3, "qDESS T2 from two echoes")
        geo = echoes.geometry
        maps = T2.qdess_t2(geo.with_array(echoes.images[0]), geo.with_array(echoes.images[1]),
                           T2.qdess_params(echoes.source, **(o.qdess_params or {})))
    else:
        sub(0.3, "fitting T2")
        maps = T2.fit_mese(echoes, drop_first_echo=o.t2_drop_first_echo)
    morph = ctx.data.get("morphometry")
    regions_vol = morph.regions_volume if morph is not None else None
    if regions_vol is not None and not maps.t2_ms.same_geometry(regions_vol, tol=1e-3):
        maps = T2.resample_to(maps, regions_vol)
    sub(0.8, "regional T2")
    ctx.output("t2_ms.nii.gz", "volume", lambda p: write_volume(maps.t2_ms, p), step="t2",
               description="T2 map (ms)", coordinate_system="LPS", units={"t2": "ms"})
    ctx.results["t2_method"] = {"method": maps.method, "params": jsonable(maps.params)}
    if maps.valid is not None:
        ctx.output("t2_valid.nii.gz", "labelmap", lambda p: write_volume(maps.valid.with_array(
            maps.valid.array.astype("uint8")), p), step="t2", coordinate_system="LPS", structure="t2_valid",
            labels={"1": "valid_fit"}, description="Voxels with a valid T2 fit")
    if regions_vol is not None:
        from ..morphometry import write_mesh
        from vtk.util.numpy_support import numpy_to_vtk

        rows, point_arrays = T2.regional_t2(maps, regions_vol, morph.meshes, t2_range_ms=o.t2_stats_range_ms)
        ctx.results["t2"] = jsonable(rows)
        ctx.results["t2_method"]["stats_range_ms"] = [float(v) for v in o.t2_stats_range_ms]
        ctx.results["t2_method"]["stats_range_rule"] = "regional rows and surface T2 use lo < T2 < hi"
        for bone, values in point_arrays.items():   # T2 projected onto the bone surfaces
            poly = morph.meshes[bone]
            arr = numpy_to_vtk(values.astype("float32"), deep=True)
            arr.SetName("t2_ms")
            poly.GetPointData().AddArray(arr)
            entry = ctx.manifest.find(kind="mesh", structure=bone)[0]
            ctx.output(entry.path, "mesh", lambda p, poly=poly: write_mesh(poly, p, o.mesh_format),
                       step=entry.step, structure=bone, coordinate_system="LPS",
                       scalars=list(entry.scalars) + ["t2_ms"], units=dict(entry.units, t2_ms="ms"),
                       description=entry.description)
    sub(1.0, "T2 done")
