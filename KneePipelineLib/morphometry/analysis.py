"""Morphometry of a canonical knee label map: meshes, cartilage thickness per vertex, regional statistics.

Steps (all geometry in physical LPS mm; see :mod:`.regions` for the frame and the region rule,
:mod:`.raycast` for the thickness rule, :mod:`.mesh` for meshing):

1. laterality from anatomy and the knee's anatomical frame;
2. sub-region label map (femoral cartilage 11-15, other tissues keep their codes);
3. one closed mesh per structure: femur and tibia cropped to 0.8 × their medio-lateral width from the
   joint, largest connected component of each bone; Gaussian variance 0.5 mm² (bone) / 0.3125 mm²
   (cartilage), contour at 0.5. Bone meshes are contoured on an isotropic grid coarse enough to give
   about ``MeshSettings.bone_target_points`` vertices (femur/tibia 20 000, patella 10 000, like the
   reference): deterministic, uniform vertex density (unlike quadric decimation, which took 4 s for
   the femur and left vertex areas varying 3× more), and the cartilage stays at full resolution; the
   grid is anchored at the volume's centre voxel, so a mirrored (left) copy of a label map is meshed on
   the mirrored grid (anchored at voxel 0, per-subregion numbers of the mirrored sample knee differed by
   up to 3 %; centred, up to 1.2 %);
4. thickness and region per vertex of the (output) bone mesh in one ray pass - the values in the
   files are the values measured, and the table is their statistics. The thickness depends on the
   cartilage surface only (first entry to the next exit of the smoothed field's 0.5 level), not on where
   on the ray the bone vertex lies,
   so the coarser bone grid changes it little (area-weighted regional means < 1 % on the sample knee;
   per-vertex means up to 2.4 %, as the native grid's vertex density follows the anisotropic voxels).
   The
   rays sample the smoothed cartilage field whose 0.5 level set is the cartilage mesh (femur ← femoral cartilage, tibia ← both tibial plates,
   patella ← patellar cartilage); misses are NaN;
5. statistics per sub-region and per plate, over the covered bone surface by area (docs/ACCURACY.md,
   "Precision"): the mean thickness (the integral of the piecewise-linear thickness over the covered
   area / that area; the edge of the covered area - where the ray's field maximum reaches 0.5 - is
   placed between vertices, :func:`.mesh.covered_area_integrals`, so it moves continuously with the
   anatomy instead of jumping by whole vertex areas; the femoral regions' boundaries are placed between
   vertices too, :func:`.mesh.region_area_integrals`, and so are their plate area and coverage), SD and
   median weighted by the covered area each vertex stands for (over the region's vertices); the plain
   per-vertex mean (``thickness_vertex_mean_mm``, a property of the mesh);
   plate area (bone surface assigned to the region; vertex area = 1/3 of adjacent triangles), coverage
   (its covered fraction), cartilage volume from voxel counts;
6. the field's reporting standard (:mod:`.chondrometrics`, :mod:`.bone_interface`, docs/MEASURES.md):
   per bone the subchondral bone area tAB with its enclosed bare patches, each tAB vertex covered /
   denuded / a miss (point array ``cartilage_status``), the 16 femorotibial subregions (point array
   ``subregion``), the Euclidean thickness on the cartilage surface (``thickness_nearest_mm`` on the
   cartilage meshes), and the Chondrometrics measures per region, plate and subregion
   (``RegionStats.measures``; subregions are rows of kind ``"subregion"`` named by their code, cMT ...).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import labels as L
from ..errors import InvalidInputError, MissingStructuresError
from ..io.volume import Volume
from .mesh import (covered_area_integrals, region_area_integrals, field_normals, mesh_from_field,
                   mesh_from_field_target_points,
                   polydata_arrays, set_normals, set_point_array, smoothed_crop, vertex_areas)
from . import chondrometrics as C
from .bone_interface import (BoneInterface, bone_interface, euclidean_thickness, label_subregion_voxels,
                             surface_vertex_areas)
from .raycast import cartilage_length_on_rays, thickness_on_surface
from .regions import crop_bone, femoral_region_of_points, femoral_subregions, knee_frame

BONE_KEYS = {L.FEMUR: "femur", L.TIBIA: "tibia", L.PATELLA: "patella"}
CARTILAGE_KEYS = {L.FEMORAL_CARTILAGE: "femoral_cartilage", L.MEDIAL_TIBIAL_CARTILAGE: "medial_tibial_cartilage",
                  L.LATERAL_TIBIAL_CARTILAGE: "lateral_tibial_cartilage", L.PATELLAR_CARTILAGE: "patellar_cartilage"}
# bone -> (cartilage tissues whose thickness it carries, region codes)
BONE_CARTILAGE = {
    L.FEMUR: ((L.FEMORAL_CARTILAGE,), (11, 12, 13, 14, 15)),
    L.TIBIA: ((L.MEDIAL_TIBIAL_CARTILAGE, L.LATERAL_TIBIAL_CARTILAGE),
              (L.MEDIAL_TIBIAL_CARTILAGE, L.LATERAL_TIBIAL_CARTILAGE)),
    L.PATELLA: ((L.PATELLAR_CARTILAGE,), (L.PATELLAR_CARTILAGE,)),
}


@dataclass(frozen=True)
class MeshSettings:
    bone_smooth_var_mm2: float = 0.5
    cartilage_smooth_var_mm2: float = 0.3125
    crop_width_factor: float = 0.8          # femur/tibia kept to this × medio-lateral width from the joint
    ray_inner_mm: float = 2.5               # ray starts this far inside the bone
    ray_outer_mm: float = 10.0              # and ends this far outside
    ray_step_mm: float = 0.1                # sampling step along rays
    # ray directions: normals of the bone field smoothed to this variance (mm²; None = the meshing field's
    # 0.5 mm²): 4 mm² (sigma 2 mm) irons out the voxel staircase's ripple in the directions (a ray tilted by
    # a reads T / cos a; the ripple's tilt changes with the grid's orientation) while following the condyles
    ray_normal_smooth_var_mm2: Optional[float] = 4.0
    # per-vertex thickness: "crossings" (distance between the field's 0.5 crossings) or "integral" (raycast)
    thickness_rule: str = "crossings"
    region_max_distance_mm: float = 1.0     # bone surface within this of a region's cartilage counts as its plate
    # femoral regions' statistics: each triangle cut into this² sub-triangles, each in the region of its
    # centroid (mesh.region_area_integrals), so the boundaries lie between vertices; 0 = whole vertices
    region_subdivisions: int = 4
    keep_largest_bone_component: bool = True
    # output bone meshes resampled to about this many vertices (like the reference's 20k/20k/10k);
    # None or a missing bone = native voxel grid. Thickness and regions are measured on these meshes.
    bone_target_points: Optional[Tuple[Tuple[str, int], ...]] = (("femur", 20000), ("tibia", 20000),
                                                                  ("patella", 10000))

    def target_points(self, name: str) -> Optional[int]:
        return dict(self.bone_target_points or ()).get(name)


@dataclass
class RegionStats:
    name: str
    code: Optional[int]                     # None for whole plates
    # statistics of the thickness over the covered bone surface (by area, not by vertex count; the edge of
    # the covered area placed between vertices - mesh.covered_area_integrals): mean, SD, median
    thickness_mean_mm: Optional[float]
    thickness_std_mm: Optional[float]
    thickness_median_mm: Optional[float]
    thickness_area_weighted_mean_mm: Optional[float]    # = thickness_mean_mm (the name older files used)
    cartilage_volume_mm3: float
    plate_area_mm2: float
    coverage: Optional[float]
    n_vertices: int                         # bone vertices assigned to the region
    n_valid_vertices: int = 0               # of those, with a valid thickness
    # the plain mean over the vertices with a thickness: a property of the mesh (vertex density follows
    # the voxel grid and curvature), kept for comparison; not the region's mean thickness
    thickness_vertex_mean_mm: Optional[float] = None
    kind: str = "region"                    # "region" | "plate" | "subregion"
    bone: str = ""
    chondrometrics: str = ""                # the field's code (TrF, cMF, MT, cMT, ecMF, ...)
    display: str = ""
    color: str = ""                         # "#rrggbb": the legend colour of the region / subregion
    # the Chondrometrics measures (names and units: chondrometrics.UNITS; definitions: docs/MEASURES.md)
    measures: Dict[str, Optional[float]] = field(default_factory=dict)


@dataclass
class MorphometryResult:
    laterality: L.Laterality
    meshes: Dict[str, object]
    regions_volume: Volume
    regions: List[RegionStats]
    warnings: List[str] = field(default_factory=list)
    frame: Optional[object] = None          # regions.KneeFrame
    timings_s: Dict[str, float] = field(default_factory=dict)
    # per bone: bone vertices under cartilage without a thickness, by what the label map holds on their
    # ray: (no cartilage voxel, < 1 mm of cartilage, >= 1 mm)
    miss_causes: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)
    # per bone: tAB, vertex status and subregions (see bone_interface)
    interfaces: Dict[str, BoneInterface] = field(default_factory=dict)
    # the regions label map with the Chondrometrics subregion codes (51-55, 61-65, 71-73, 81-83) in place
    subregions_volume: Optional[Volume] = None


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    from .mesh import _bbox

    b = _bbox(mask)
    box = tuple(slice(lo, hi) for lo, hi in b)
    lab, n = ndimage.label(mask[box])
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    out = np.zeros_like(mask)
    out[box] = lab == int(np.argmax(sizes))
    return out


def _field_volume(field_arr: np.ndarray, offset_kji: np.ndarray, geometry: Volume) -> Volume:
    origin = geometry.ijk_to_lps(np.asarray(offset_kji, dtype=float)[::-1][None, :])[0]
    return Volume(field_arr, geometry.spacing_mm.copy(), origin, geometry.direction.copy())


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    v, c = values[order], np.cumsum(weights[order])
    return float(v[min(int(np.searchsorted(c, 0.5 * c[-1])), len(v) - 1)])


def _stats(name, code, kind, bone, thick, area, sel, volume_mm3, cover=None, integrals=None) -> RegionStats:
    """Statistics of one region: ``sel`` its vertices. ``cover`` = (alpha, tau) per vertex from
    :func:`.mesh.covered_area_integrals` (covered area and thickness integral each vertex stands for);
    None = whole vertex areas where the thickness is valid (the edge of the covered area then jumps from
    vertex to vertex). ``integrals`` = (covered area, thickness integral, area) of the region with its
    boundary placed between vertices (:func:`.mesh.region_area_integrals`; the femoral regions): then the
    mean, the coverage and the plate area are these; SD and median stay over the region's vertices."""
    n = int(sel.sum())
    ok = sel & np.isfinite(thick)
    nv = int(ok.sum())
    plate = float(area[sel].sum())
    if integrals is not None and integrals[2] > 0:
        plate = float(integrals[2])
    if cover is None:
        alpha = np.where(np.isfinite(thick), area, 0.0)
        tau = np.where(np.isfinite(thick), thick, 0.0) * alpha
    else:
        alpha, tau = cover
    covered = float(alpha[sel].sum())
    if integrals is not None:
        covered = float(integrals[0])
    vmean = None
    if nv and covered > 0:
        t, w = thick[ok], alpha[ok]
        if w.sum() <= 0:
            w = area[ok]
        mean = float((integrals[1] if integrals is not None else tau[sel].sum()) / covered)
        wm = float((t * w).sum() / w.sum())
        vals = (mean, float(np.sqrt((w * (t - wm) ** 2).sum() / w.sum())), _weighted_median(t, w), mean)
        vmean = float(t.mean())
    else:
        vals = (None, None, None, None)
    cov = covered / plate if plate > 0 else None
    return RegionStats(name, code, *vals, cartilage_volume_mm3=float(volume_mm3), plate_area_mm2=plate,
                       coverage=cov, n_vertices=n, n_valid_vertices=nv, kind=kind, bone=bone,
                       thickness_vertex_mean_mm=vmean)


def analyze_labels(labels: Volume, settings: MeshSettings = MeshSettings(),
                   progress: Optional[Callable[[float, str], None]] = None) -> MorphometryResult:
    """Meshes, per-vertex thickness/region and regional statistics of a canonical knee label map."""
    import time

    def report(frac, msg):
        if progress is not None:
            progress(float(frac), msg)

    timings: Dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name):
        nonlocal t0
        t = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + t - t0
        t0 = t

    arr = np.asarray(labels.array)
    if arr.ndim != 3:
        raise InvalidInputError("The label map must be 3D (got %d dimensions)." % arr.ndim)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise InvalidInputError("The label map holds non-integer values.", hint="Pass a label map, not an image.")
        arr = arr.astype(np.int16)
    present = set(int(v) for v in np.unique(arr))
    if not present & set(L.CARTILAGES):
        raise MissingStructuresError("The label map has no cartilage, so there is nothing to measure.")
    lab = Volume(arr, labels.spacing_mm, labels.origin_mm, labels.direction)
    warnings: List[str] = []

    report(0.0, "laterality and anatomical frame")
    laterality = L.detect_laterality(lab)
    frame = knee_frame(lab, laterality.side)
    warnings += frame.warnings
    regions_arr, info, w = femoral_subregions(lab, frame)
    warnings += w
    regions_volume = lab.with_array(regions_arr)
    lap("frame_regions")

    meshes: Dict[str, object] = {}
    fields: Dict[int, Volume] = {}
    structures = [t for t in (L.FEMUR, L.TIBIA, L.PATELLA) if t in present] + \
                 [t for t in CARTILAGE_KEYS if t in present]
    for n_done, tissue in enumerate(structures):
        name = BONE_KEYS.get(tissue) or CARTILAGE_KEYS[tissue]
        report(0.05 + 0.6 * n_done / len(structures), "meshing " + name)
        mask = arr == tissue
        if tissue in BONE_KEYS:
            if tissue == L.FEMUR:
                mask = crop_bone(lab, mask, frame, "low", settings.crop_width_factor)
            elif tissue == L.TIBIA:
                mask = crop_bone(lab, mask, frame, "high", settings.crop_width_factor)
            if settings.keep_largest_bone_component:
                mask = _largest_component(mask)
            var = settings.bone_smooth_var_mm2
        else:
            var = settings.cartilage_smooth_var_mm2
        fld, off = smoothed_crop(mask, lab.spacing_mm, var)
        target = settings.target_points(name) if tissue in BONE_KEYS else None
        if target:
            # the resampled grid is anchored at the volume's centre voxel, not at voxel 0: a mirrored (left)
            # or axis-permuted copy of a label map then gets the mirrored / permuted grid and the same mesh
            c_kji = (np.array(arr.shape, dtype=float) - 1.0) / 2.0
            centred = Volume(arr, lab.spacing_mm, lab.ijk_to_lps(c_kji[::-1][None])[0], lab.direction)
            poly = mesh_from_field_target_points(fld, np.asarray(off, dtype=float) - c_kji, centred, int(target))
        else:
            poly = mesh_from_field(fld, off, lab)
        if poly.GetNumberOfPoints() == 0:
            warnings.append("The %s is too small to mesh." % name)
            continue
        if tissue in BONE_KEYS:     # ray directions: the smoothed field's own normals
            nfld = fld
            extra = (settings.ray_normal_smooth_var_mm2 or 0.0) - var
            if extra > 0:
                from scipy import ndimage

                nfld = ndimage.gaussian_filter(fld, sigma=np.sqrt(extra) / lab.spacing_mm[::-1], mode="constant")
            set_normals(poly, field_normals(nfld, off, lab, polydata_arrays(poly)[0]))
        meshes[name] = poly
        if tissue not in BONE_KEYS:
            fields[tissue] = _field_volume(fld, off, lab)
        lap("mesh_" + name)

    report(0.7, "cartilage thickness")
    per_bone = {}
    interfaces: Dict[str, BoneInterface] = {}
    subregions_arr = regions_arr.copy()
    ac: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    femur_regions: Dict[int, Tuple[float, float, float]] = {}
    miss_causes: Dict[str, Tuple[int, int, int]] = {}
    for bone, (carts, codes) in BONE_CARTILAGE.items():
        bname = BONE_KEYS[bone]
        if bname not in meshes:
            continue
        poly = meshes[bname]
        carts_here = [c for c in carts if c in present]
        if not carts_here:
            thick = np.full(poly.GetNumberOfPoints(), np.nan)
            region = np.zeros(poly.GetNumberOfPoints(), dtype=np.int32)
        else:
            if len(carts_here) == 1:
                fv = fields[carts_here[0]]
            else:   # one field for both tibial plates
                fld, off = smoothed_crop(np.isin(arr, carts_here), lab.spacing_mm, settings.cartilage_smooth_var_mm2)
                fv = _field_volume(fld, off, lab)
            pts, tris = polydata_arrays(poly)
            from vtk.util.numpy_support import vtk_to_numpy
            normals = vtk_to_numpy(poly.GetPointData().GetNormals()).astype(float)
            details: Dict[str, np.ndarray] = {}
            thick, region = thickness_on_surface(
                poly, None, regions_volume, inner_mm=settings.ray_inner_mm, outer_mm=settings.ray_outer_mm,
                region_codes=codes, region_max_distance_mm=settings.region_max_distance_mm, normals=normals,
                cartilage_field=fv, step_mm=settings.ray_step_mm, thickness_rule=settings.thickness_rule,
                details=details)
            if bone == L.FEMUR and info is not None:   # femoral regions by the continuous rule at the layer's
                fr = np.isin(region, codes)            # middle, not the voxel map's staircase (regions.py)
                mid = pts + 0.5 * np.nan_to_num(thick)[:, None] * normals
                region[fr] = femoral_region_of_points(frame, info, mid[fr])
                lv = _cover_level(thick, details, settings.thickness_rule)
                if lv is not None and settings.region_subdivisions > 0:   # boundaries between vertices
                    femur_regions = region_area_integrals(
                        pts, tris, *lv, fr.astype(float), mid, lambda p: femoral_region_of_points(frame, info, p),
                        codes, settings.region_subdivisions)
            misses = np.flatnonzero((region > 0) & np.isnan(thick))
            if len(misses):
                pts = polydata_arrays(poly)[0]
                seg_mm = cartilage_length_on_rays(lab, carts_here, pts[misses] - settings.ray_inner_mm * normals[misses],
                                                  normals[misses], settings.ray_inner_mm + settings.ray_outer_mm)
                miss_causes[bname] = (int(np.sum(seg_mm == 0)), int(np.sum((seg_mm > 0) & (seg_mm < 1.0))),
                                      int(np.sum(seg_mm >= 1.0)))
        set_point_array(poly, "thickness_mm", thick.astype(np.float32))
        set_point_array(poly, "region", region.astype(np.int32))
        pts, tris = polydata_arrays(poly)
        area = vertex_areas(pts, tris)
        cover = _covered(pts, tris, thick, details, settings.thickness_rule) if carts_here else None
        per_bone[bone] = (thick, region, area, cover)
        lap("thickness_" + bname)
        if carts_here:
            interfaces[bname], ac[bone] = _standard_measures_inputs(
                poly, thick, region, area, lab, carts_here, frame, info, settings, meshes, regions_volume,
                subregions_arr)
            lap("chondrometrics_" + bname)

    report(0.9, "regional statistics")
    vox_counts = np.bincount(regions_arr.ravel(), minlength=256)
    vv = lab.voxel_volume_mm3
    stats: List[RegionStats] = []
    for r in L.REGIONS:
        if vox_counts[r.code] == 0 or r.bone not in per_bone:
            if vox_counts[r.code] == 0:
                warnings.append("Region %s is absent from the label map." % r.name)
            continue
        thick, region, area, cover = per_bone[r.bone]
        stats.append(_stats(r.name, r.code, "region", BONE_KEYS[r.bone], thick, area, region == r.code,
                            vox_counts[r.code] * vv, cover, femur_regions.get(r.code) if cover is not None else None))
    for pname, codes in L.PLATES.items():
        if not any(vox_counts[c] for c in codes):
            continue
        bone = L.REGION_BY_CODE[codes[0]].bone
        if bone not in per_bone:
            continue
        thick, region, area, cover = per_bone[bone]
        stats.append(_stats(pname, None, "plate", BONE_KEYS[bone], thick, area, np.isin(region, codes),
                            sum(vox_counts[c] for c in codes) * vv, cover))
    stats += _subregion_stats(per_bone, interfaces, vv, warnings)
    _add_measures(stats, per_bone, interfaces, ac, vox_counts, vv)
    for s in stats:
        if s.kind == "region" and s.coverage is not None and s.coverage < 0.8:
            msg = "Only %.0f %% of the %s bone surface got a thickness" % (100 * s.coverage, s.name)
            c = miss_causes.get(s.bone)
            if c and sum(c):
                msg += (" (of the bone vertices without one, over the whole %s: %.0f %% have no cartilage voxel on "
                        "their ray - holes in the segmentation -, %.0f %% less than 1 mm of it - thinner than the "
                        "smoothed surface resolves -, %.0f %% more)" % ((s.bone,) + tuple(100.0 * x / sum(c) for x in c)))
            warnings.append(msg + ".")
    lap("stats")
    report(1.0, "morphometry done")
    return MorphometryResult(laterality, meshes, regions_volume, stats, warnings, frame, timings, miss_causes,
                             interfaces, lab.with_array(subregions_arr))


def _cover_level(thick, details, rule):
    """(level, values, boundary value) for :func:`.mesh.covered_area_integrals`: the level is the cartilage
    field's maximum on the ray - 0.5 (a layer's edge lies where it reaches 0.5; a ray that reaches 0.5
    without a valid reading counts as uncovered, level -0.5). The thickness on the edge itself is 0 for
    the crossings rule (the crossings meet there) and the partial layer's integral, interpolated, for
    the integral rule (it varies continuously across the edge). None without the ray details."""
    if "peak" not in details:
        return None
    valid = np.isfinite(thick)
    level = np.where(valid, np.maximum(details["peak"] - 0.5, 0.0), np.minimum(details["peak"] - 0.5, -1e-6))
    level[~valid & (details["peak"] >= 0.5)] = -0.5
    if rule == "integral":
        return level, np.where(valid, thick, np.nan_to_num(details["bump_mm"])), None
    return level, np.where(valid, thick, 0.0), 0.0


def _covered(pts, tris, thick, details, rule):
    """(alpha, tau) per bone vertex (:func:`.mesh.covered_area_integrals`, level and values from
    :func:`_cover_level`)."""
    lv = _cover_level(thick, details, rule)
    return None if lv is None else covered_area_integrals(pts, tris, *lv)


_PLATE_CODES = {"femur": "F", "tibia_medial": "MT", "tibia_lateral": "LT", "patella": "P"}


def _standard_measures_inputs(poly, thick, region, area, lab, carts_here, frame, info, settings, meshes,
                              regions_volume, subregions_arr):
    """tAB / status / subregions of one bone (point arrays set on it) and the Euclidean thickness on its
    cartilage meshes: (BoneInterface, (AC thickness, AC area, AC region, AC subregion) over its cartilages)."""
    from vtk.util.numpy_support import vtk_to_numpy

    pts, tris = polydata_arrays(poly)
    normals = vtk_to_numpy(poly.GetPointData().GetNormals()).astype(float)
    is_femur = bool(np.any(np.isin(region, (11, 12, 13, 14, 15))))
    rot = info.condylar_rotation_deg if (is_femur and info is not None) else 0.0
    bi = bone_interface(pts, tris, normals, thick, region, area, lab, carts_here, frame, rot,
                        settings.ray_inner_mm, settings.ray_outer_mm)
    label_subregion_voxels(regions_volume, bi, subregions_arr)
    if bi.rules:
        codes = [s.code for s in C.SUBREGIONS if s.parent in bi.rules]
        counts = np.bincount(subregions_arr[np.isin(subregions_arr, codes)].ravel(), minlength=256)
        bi.voxel_counts = {c: int(counts[c]) for c in codes}
    set_point_array(poly, "subregion", bi.subregion.astype(np.int32))
    set_point_array(poly, "cartilage_status", bi.status.astype(np.int32))
    parts = []
    for tissue in carts_here:
        cpoly = meshes.get(CARTILAGE_KEYS[tissue])
        if cpoly is None:
            continue
        cpts, ctris = polydata_arrays(cpoly)
        d, reg, sub = euclidean_thickness(cpts, ctris, pts, tris, normals, bi)
        set_point_array(cpoly, "thickness_nearest_mm", d.astype(np.float32))
        set_point_array(cpoly, "subregion", sub.astype(np.int32))
        # AC / ThCAC weights from the cell polygons' fan: the same for a knee and its mirror image
        parts.append((d, np.where(np.isfinite(d), surface_vertex_areas(cpts, ctris, bi), 0.0), reg, sub))
    if not parts:
        return bi, (np.zeros(0), np.zeros(0), np.zeros(0, int), np.zeros(0, int))
    return bi, tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def _subregion_stats(per_bone, interfaces, vv, warnings) -> List[RegionStats]:
    out: List[RegionStats] = []
    for bone, bname in ((L.TIBIA, "tibia"), (L.FEMUR, "femur")):
        bi = interfaces.get(bname)
        if bi is None or bone not in per_bone:
            continue
        thick, _, area, cover = per_bone[bone]
        counts = bi.voxel_counts
        for s in C.SUBREGIONS:
            if L.REGION_BY_CODE[s.parent].bone != bone:
                continue
            sel = bi.subregion == s.code
            if not sel.any():
                if (bi.tab_region == s.parent).any():
                    warnings.append("Subregion %s is empty." % s.name)
                continue
            st = _stats(s.name, s.code, "subregion", bname, thick, area, sel, counts.get(s.code, 0) * vv, cover)
            st.chondrometrics, st.display, st.color = s.name, s.display, C.hex_color(s.color)
            out.append(st)
    return out



def _add_measures(stats: List[RegionStats], per_bone, interfaces, ac, vox_counts, vv) -> None:
    """Fill every row's Chondrometrics code, display name, colour and measures."""
    for st in stats:
        bone = {v: k for k, v in BONE_KEYS.items()}.get(st.bone)
        if st.kind == "region":
            r = L.REGION_BY_CODE[st.code]
            st.chondrometrics, st.display = r.chondrometrics, r.display
            st.color = C.hex_color(C.region_color(r.code))
        elif st.kind == "plate":
            st.chondrometrics = _PLATE_CODES.get(st.name, st.name)
            st.display = st.name.replace("_", " ").capitalize() + " (plate)"
        bi = interfaces.get(st.bone)
        if bi is None or bone not in per_bone:
            continue
        q = bi.samples                    # quadrature points of the bone surface (area, thickness, status)
        ac_t, ac_a, ac_r, ac_s = ac[bone]
        if st.kind == "subregion":
            sel, ac_sel = q.subregion == st.code, ac_s == st.code
        else:
            codes = [st.code] if st.kind == "region" else L.PLATES[st.name]
            sel, ac_sel = np.isin(q.tab_region, codes), np.isin(ac_r, codes)
        st.measures = C.measures(q.thickness_mm, q.area_mm2, q.status, sel, st.cartilage_volume_mm3,
                                 ac_t[ac_sel], ac_a[ac_sel])
