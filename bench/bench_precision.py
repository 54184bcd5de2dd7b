"""Benchmark: precision of regional cartilage thickness when the same knee is re-voxelised.

    python bench/bench_precision.py [--labels LABELS.nrrd] [--quick]

The real sample knee's label map is moved by a sub-voxel shift (0.6 voxel: the nearest-neighbour grid
then moves the anatomy by one voxel) or rotated by 3-5° about its centre, resampled nearest-neighbour
onto the *same* grid, and analysed again. For every region and plate the relative change of the mean,
the area-weighted mean and the median thickness is reported; the goal is <= 0.5 % per region (OA
cartilage loss is 1-2 % a year). Prints the table and writes bench/results/precision-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.benchinfo import write_result  # noqa: E402
from KneePipelineLib.io import Volume, read_labels  # noqa: E402
from KneePipelineLib.morphometry import analyze_labels  # noqa: E402

# the regional mean (over the covered area), the per-vertex mean (a property of the mesh), the median
STATS = ("thickness_mean_mm", "thickness_vertex_mean_mm", "thickness_median_mm")
# and the row's cartilage volume (voxel count): how much of the region's cartilage the region rule moved
VOLUME = ("cartilage_volume_mm3",)


def revoxelise_all(vol: Volume, others=(), shift_vox=(0.0, 0.0, 0.0), rot_deg: float = 0.0, axis_lps=(0, 0, 1)):
    """The same anatomy moved (shift in voxels of i, j, k; rotation about ``vol``'s cartilage centroid around an
    LPS axis), resampled nearest-neighbour onto the same grid: [moved vol, moved label arrays ``others`` (on
    ``vol``'s grid) ...]."""
    import SimpleITK as sitk

    k, j, i = np.nonzero(np.isin(vol.array, L.CARTILAGES))
    centre = vol.ijk_to_lps(np.array([[i.mean(), j.mean(), k.mean()]]))[0]
    ax = np.asarray(axis_lps, float)
    ax /= np.linalg.norm(ax)
    vr = sitk.VersorRigid3DTransform()
    vr.SetCenter([float(c) for c in centre])
    vr.SetRotation([float(a) for a in ax], float(np.radians(rot_deg)))
    shift_lps = vol.direction @ (np.asarray(shift_vox, float) * vol.spacing_mm)
    vr.SetTranslation([float(s) for s in shift_lps])
    out = []
    for arr in (vol.array,) + tuple(others):
        img = vol.with_array(arr).to_sitk()
        # Resample maps output points through the transform into the input: the inverse moves the anatomy
        res = sitk.Resample(img, img, vr.GetInverse(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
        out.append(Volume.from_sitk(res))
    return out


def revoxelise(vol: Volume, shift_vox=(0.0, 0.0, 0.0), rot_deg: float = 0.0, axis_lps=(0, 0, 1)) -> Volume:
    """The same anatomy moved and resampled nearest-neighbour onto the same grid (:func:`revoxelise_all`)."""
    return revoxelise_all(vol, (), shift_vox, rot_deg, axis_lps)[0]


def variants(quick: bool):
    out = [("shift 0.6 vox i", dict(shift_vox=(0.6, 0, 0))),
           ("shift 0.6 vox j", dict(shift_vox=(0, 0.6, 0))),
           ("shift 0.6 vox k", dict(shift_vox=(0, 0, 0.6))),
           ("shift 0.6 vox ijk", dict(shift_vox=(0.6, 0.6, 0.6))),
           ("rot 3 deg L", dict(rot_deg=3.0, axis_lps=(1, 0, 0))),
           ("rot 3 deg P", dict(rot_deg=3.0, axis_lps=(0, 1, 0))),
           ("rot 3 deg S", dict(rot_deg=3.0, axis_lps=(0, 0, 1))),
           ("rot 5 deg L", dict(rot_deg=5.0, axis_lps=(1, 0, 0))),
           ("rot 5 deg P", dict(rot_deg=5.0, axis_lps=(0, 1, 0))),
           ("rot 5 deg S", dict(rot_deg=5.0, axis_lps=(0, 0, 1)))]
    return [out[3], out[5], out[8]] if quick else out


def rel_changes(base, other):
    a = {(s.kind, s.name): s for s in base.regions}
    b = {(s.kind, s.name): s for s in other.regions}
    out = {}
    for key in a:
        if key not in b:
            continue
        out["%s:%s" % key] = {st: 100.0 * (getattr(b[key], st) / getattr(a[key], st) - 1.0) for st in STATS + VOLUME
                              if getattr(a[key], st) and getattr(b[key], st) is not None}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--labels", default=None, help="label map in the pymskt convention (default: the sample knee)")
    ap.add_argument("--quick", action="store_true", help="3 variants instead of 10")
    ap.add_argument("--normal-var", type=float, default=None,
                    help="ray directions from the bone field smoothed to this variance (mm²; 0 = the meshing field's)")
    ap.add_argument("--rule", choices=("crossings", "integral"), default=None, help="per-vertex thickness rule")
    ap.add_argument("--native-bone-mesh", action="store_true",
                    help="measure on the native voxel-grid bone meshes instead of the target-point meshes")
    args = ap.parse_args()
    if args.labels is None:
        from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data
        args.labels = str(ensure_sample_data() / SAMPLE_LABELS)
    v = read_labels(args.labels)
    lab = v.with_array(L.remap(v.array, L.CONVENTIONS["pymskt"]))
    from KneePipelineLib.morphometry import MeshSettings

    settings = MeshSettings(bone_target_points=None) if args.native_bone_mesh else MeshSettings()
    if args.normal_var is not None:
        import dataclasses

        settings = dataclasses.replace(settings, ray_normal_smooth_var_mm2=args.normal_var or None)
    if args.rule is not None:
        import dataclasses

        settings = dataclasses.replace(settings, thickness_rule=args.rule)
    t0 = time.perf_counter()
    base = analyze_labels(lab, settings)
    t_one = time.perf_counter() - t0
    rows = {}
    worst = {st: 0.0 for st in STATS}
    for name, kw in variants(args.quick):
        res = analyze_labels(revoxelise(lab, **kw), settings)
        ch = rel_changes(base, res)
        rows[name] = ch
        w = {st: max(abs(c.get(st, 0.0)) for c in ch.values()) for st in STATS}
        for st in STATS:
            worst[st] = max(worst[st], w[st])
        arg = max((k for k in ch if not k.startswith("subregion")), key=lambda k: abs(ch[k].get("thickness_mean_mm", 0.0)))
        print("%-20s max |change| mean %.2f %%  per-vertex mean %.2f %%  median %.2f %%   (mean: worst %s %+.2f %%)"
              % (name, w["thickness_mean_mm"], w["thickness_vertex_mean_mm"], w["thickness_median_mm"],
                 arg, ch[arg]["thickness_mean_mm"]))
    print("worst over all variants, regions, plates and subregions: mean %.2f %%, per-vertex mean %.2f %%, median %.2f %%"
          % tuple(worst[s] for s in STATS))
    per_region = {}
    for ch in rows.values():
        for reg, c in ch.items():
            for st, val in c.items():
                per_region.setdefault(reg, {}).setdefault(st, 0.0)
                per_region[reg][st] = max(per_region[reg][st], abs(val))
    for reg in sorted(per_region):
        print("  %-40s max |change| mean %.2f %%  per-vertex mean %.2f %%  median %.2f %%"
              % ((reg,) + tuple(per_region[reg].get(s, float("nan")) for s in STATS)))
    goal_rows = {r: c for r, c in per_region.items() if r.startswith(("region:", "plate:"))}
    worst_regions = max(c.get("thickness_mean_mm", 0.0) for c in goal_rows.values())
    print("worst over the regions and plates (the goal, <= 0.5 %%): mean %.2f %% (%s)"
          % (worst_regions, max(goal_rows, key=lambda r: goal_rows[r].get("thickness_mean_mm", 0.0))))
    path = write_result("precision" + ("-quick" if args.quick else "") + ("-native" if args.native_bone_mesh else ""), {
        "settings": repr(settings),
        "labels": Path(args.labels).name, "analysis_s": round(t_one, 2),
        "worst_abs_change_pct": {s: round(worst[s], 3) for s in STATS},
        "worst_regions_and_plates_mean_pct": round(worst_regions, 3),
        "worst_abs_change_pct_per_region": {r: {s: round(x, 3) for s, x in c.items()} for r, c in per_region.items()},
        "changes_pct": {n: {r: {s: round(x, 3) for s, x in c.items()} for r, c in ch.items()} for n, ch in rows.items()},
        "goal_pct": 0.5})
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
