"""Benchmark: how much the femoral sub-region boundaries move when the same knee is re-voxelised.

    python bench/bench_region_stability.py [--quick] [--no-thickness]

The sample knee is moved by the variants of ``bench_precision.py`` (0.6-voxel shifts, 3-5° rotations,
nearest-neighbour onto the same grid). Every cartilage voxel of a variant comes from exactly one voxel of
the original (nearest neighbour), so the original's region of that voxel, *transported*, is what the
variant's own region should be. Per variant:

* landmark movement (mm): ``ap_post``, ``ap_notch``, ``ap_wb_post``, ``ml_notch`` and the superior line's
  top, each in the knee's own (anatomy-attached) femoral frame, and the condylar rotation (degrees);
* voxels relabelled: the fraction of femoral cartilage voxels whose own region differs from the
  transported one (overall and per region);
* thickness (unless ``--no-thickness``): the relative change of each region's mean and area-weighted mean
  with the variant's own regions and with the transported ones. The difference is what the region
  boundaries contribute; what remains with transported regions is the thickness measurement itself.

Prints the tables and writes bench/results/region-stability[-quick]-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.benchinfo import write_result  # noqa: E402
from KneePipelineLib.io import Volume, read_labels  # noqa: E402
from KneePipelineLib.morphometry import analysis as A  # noqa: E402
from KneePipelineLib.morphometry.regions import KneeFrame, femoral_subregions, knee_frame  # noqa: E402
from bench_precision import revoxelise_all as revoxelise, variants  # noqa: E402

FEMORAL = (11, 12, 13, 14, 15)
LANDMARKS = ("ap_post", "ap_notch", "ap_wb_post", "ml_notch", "top_si")   # frame mm


def moved_frame(frame, vol, shift_vox=(0.0, 0.0, 0.0), rot_deg: float = 0.0, axis_lps=(0, 0, 1)):
    """The knee frame moved with the anatomy (the transform of :func:`revoxelise`; a 0.6-voxel shift moves the
    anatomy by one voxel after nearest-neighbour resampling)."""
    import SimpleITK as sitk

    k, j, i = np.nonzero(np.isin(vol.array, L.CARTILAGES))
    centre = vol.ijk_to_lps(np.array([[i.mean(), j.mean(), k.mean()]]))[0]
    ax = np.asarray(axis_lps, float)
    vr = sitk.VersorRigid3DTransform()
    vr.SetRotation([float(a) for a in ax / np.linalg.norm(ax)], float(np.radians(rot_deg)))
    m = np.array(vr.GetMatrix()).reshape(3, 3)
    t = vol.direction @ (np.round(np.asarray(shift_vox, float) + 1e-6) * vol.spacing_mm)
    return KneeFrame(m @ (frame.origin - centre) + centre + t, m @ frame.e_med, m @ frame.e_ant, m @ frame.e_sup,
                     frame.shaft_axis_found, [])


def regions_of(lab, frame=None):
    if frame is None:
        frame = knee_frame(lab, L.detect_laterality(lab).side)
    out, info, _ = femoral_subregions(lab, frame)
    return out, info, frame


def landmarks(info) -> dict:
    d = {k: float(getattr(info, k)) for k in LANDMARKS if hasattr(info, k)}
    d["rotation_deg"] = float(info.condylar_rotation_deg)
    return d


def analyze_with_regions(lab, regions_arr, frame, info):
    """analyze_labels with the knee frame, the femoral sub-region map and its landmarks replaced (by the
    original's, transported: the same anatomical regions, whichever way the code assigns vertices)."""
    orig_s, orig_f = A.femoral_subregions, A.knee_frame
    A.knee_frame = lambda labels, side: frame
    A.femoral_subregions = lambda labels, fr, *a, **k: (regions_arr.astype(np.uint8), info, [])
    try:
        return A.analyze_labels(lab)
    finally:
        A.femoral_subregions, A.knee_frame = orig_s, orig_f


def stats_of(res):
    return {s.name: (s.thickness_mean_mm, s.thickness_area_weighted_mean_mm)
            for s in res.regions if s.kind == "region"}


def rel(a, b):
    return {k: [100.0 * (b[k][i] / a[k][i] - 1.0) for i in (0, 1)] for k in a if k in b and a[k][0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the 3 variants of bench_precision --quick")
    ap.add_argument("--no-thickness", action="store_true", help="landmarks and voxels only (fast)")
    ap.add_argument("--labels", default=None)
    args = ap.parse_args()
    if args.labels is None:
        from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data
        args.labels = str(ensure_sample_data() / SAMPLE_LABELS)
    v = read_labels(args.labels)
    lab = v.with_array(L.remap(v.array, L.CONVENTIONS["pymskt"]))
    c0 = time.process_time()
    base_reg, base_info, base_frame = regions_of(lab)
    t_regions = time.process_time() - c0
    base_lm = landmarks(base_info)
    base_stats = None if args.no_thickness else stats_of(A.analyze_labels(lab))
    rows = {}
    for name, kw in variants(args.quick):
        lab_v, reg_t = revoxelise(lab, (base_reg,), **kw)
        reg_t = reg_t.array
        reg_v, info_v, frame_v = regions_of(lab_v)
        frame_t = moved_frame(base_frame, lab, **kw)
        info_e = regions_of(lab_v, frame_t)[1]      # the landmark estimators alone, in the moved frame
        fc = lab_v.array == L.FEMORAL_CARTILAGE
        assert np.array_equal(np.isin(reg_t, FEMORAL), fc)
        own, tr = reg_v[fc], reg_t[fc]
        changed = own != tr
        lm = landmarks(info_v)
        lm_e = landmarks(info_e)
        ang = {a: float(np.degrees(np.arccos(np.clip(getattr(frame_v, a) @ getattr(frame_t, a), -1, 1))))
               for a in ("e_med", "e_ant", "e_sup")}
        row = {"landmark_change": {k: lm[k] - base_lm[k] for k in base_lm},
               "landmark_change_in_moved_frame": {k: lm_e[k] - base_lm[k] for k in base_lm},
               "frame_axis_change_deg": ang,
               "voxels_relabelled_pct": 100.0 * changed.mean(),
               "voxels_relabelled_pct_per_region": {str(c): 100.0 * float(np.mean(changed[tr == c])) for c in FEMORAL}}
        print("%-18s relabelled %.2f %% of femoral cartilage voxels; landmark moves: %s" % (
            name, row["voxels_relabelled_pct"],
            ", ".join("%s %+.2f" % (k, x) for k, x in row["landmark_change"].items())))
        print("%18s in the moved original frame: %s; frame axes turn %s" % ("", ", ".join(
            "%s %+.2f" % (k, x) for k, x in row["landmark_change_in_moved_frame"].items()),
            ", ".join("%s %.2f°" % kv for kv in ang.items())))
        print("%18s per region (of the transported region's voxels): %s" % ("", ", ".join(
            "%s %.2f %%" % (c, x) for c, x in row["voxels_relabelled_pct_per_region"].items())))
        if not args.no_thickness:
            s_own = stats_of(A.analyze_labels(lab_v))
            s_tr = stats_of(analyze_with_regions(lab_v, reg_t, frame_t, base_info))
            row["thickness_change_pct_own_regions"] = rel(base_stats, s_own)
            row["thickness_change_pct_transported_regions"] = rel(base_stats, s_tr)
            for reg in sorted(row["thickness_change_pct_own_regions"]):
                if not reg.startswith("femur"):
                    continue
                o = row["thickness_change_pct_own_regions"][reg]
                t = row["thickness_change_pct_transported_regions"][reg]
                print("%18s %-32s own regions mean %+.2f / aw %+.2f %%   transported mean %+.2f / aw %+.2f %%"
                      % ("", reg, o[0], o[1], t[0], t[1]))
        rows[name] = row
    worst_lm = {k: max(abs(r["landmark_change"][k]) for r in rows.values()) for k in base_lm}
    worst_lm_e = {k: max(abs(r["landmark_change_in_moved_frame"][k]) for r in rows.values()) for k in base_lm}
    worst_ang = max(max(r["frame_axis_change_deg"].values()) for r in rows.values())
    worst_vox = max(r["voxels_relabelled_pct"] for r in rows.values())
    print("worst landmark movement in the moved original frame: " + ", ".join("%s %.2f" % kv for kv in worst_lm_e.items()))
    print("worst frame axis turn: %.2f°" % worst_ang)
    print("worst landmark movement: " + ", ".join("%s %.2f" % kv for kv in worst_lm.items()))
    print("worst voxels relabelled: %.2f %%   (regions of one knee: %.2f CPU s)" % (worst_vox, t_regions))
    out = {"labels": Path(args.labels).name, "regions_cpu_s": round(t_regions, 2),
           "baseline_landmarks": base_lm, "worst_landmark_change": worst_lm,
           "worst_voxels_relabelled_pct": worst_vox,
           "worst_landmark_change_in_moved_frame": worst_lm_e, "worst_frame_axis_change_deg": worst_ang, "variants": rows}
    if not args.no_thickness:
        for key in ("own", "transported"):
            w = {}
            for r in rows.values():
                for reg, (m, a) in r["thickness_change_pct_%s_regions" % key].items():
                    o = w.setdefault(reg, [0.0, 0.0])
                    o[0], o[1] = max(o[0], abs(m)), max(o[1], abs(a))
            out["worst_thickness_change_pct_%s_regions" % key] = w
        print("worst |change| per region, mean / area-weighted, %: own regions vs transported regions")
        for reg in sorted(out["worst_thickness_change_pct_own_regions"]):
            o = out["worst_thickness_change_pct_own_regions"][reg]
            t = out["worst_thickness_change_pct_transported_regions"][reg]
            print("  %-34s %.2f / %.2f    %.2f / %.2f" % (reg, o[0], o[1], t[0], t[1]))
    path = write_result("region-stability" + ("-quick" if args.quick else ""), out)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
