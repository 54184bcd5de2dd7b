"""Precision: the same anatomy re-voxelised (a sub-voxel shift, a 3-5° rotation, nearest-neighbour onto
the same grid) must give the same mean thickness. A fast property test on the analytic sphere phantom at
the sample's anisotropic voxels, measured the way the pipeline measures, and the goal itself (<= 0.5 %) on
the real knee for a shift and a rotation; all 10 variants: bench/bench_precision.py (docs/ACCURACY.md)."""
import numpy as np
import pytest

from KneePipelineLib.io import Volume
from KneePipelineLib.morphometry.mesh import vertex_areas

from test_phantoms import SAMPLE_SPACING, measure_like_the_pipeline, sphere_phantom


def _revoxelise(vol: Volume, labels: np.ndarray, centre, shift_vox=(0, 0, 0), rot_deg=0.0, axis=(0, 0, 1)):
    """Move the labelled anatomy rigidly (rotation about ``centre``, shift in voxels) and resample it
    nearest-neighbour onto the same grid."""
    import SimpleITK as sitk

    img = vol.with_array(labels.astype(np.uint8)).to_sitk()
    tr = sitk.VersorRigid3DTransform()
    tr.SetCenter([float(c) for c in centre])
    ax = np.asarray(axis, float) / np.linalg.norm(axis)
    tr.SetRotation([float(a) for a in ax], float(np.radians(rot_deg)))
    tr.SetTranslation([float(s) for s in vol.direction @ (np.asarray(shift_vox, float) * vol.spacing_mm)])
    res = sitk.Resample(img, img, tr.GetInverse(), sitk.sitkNearestNeighbor, 0, img.GetPixelID())
    return sitk.GetArrayFromImage(res)


def _means(vol, labels):
    pts, tris, th = measure_like_the_pipeline(vol, labels == 1, labels == 2)
    ok = np.isfinite(th)
    area = vertex_areas(pts, tris)
    return float(th[ok].mean()), float((th[ok] * area[ok]).sum() / area[ok].sum()), float(ok.mean())


@pytest.fixture(scope="module")
def base():
    vol, bone, cart, centre = sphere_phantom(SAMPLE_SPACING)
    labels = np.where(bone, 1, np.where(cart, 2, 0)).astype(np.uint8)
    return vol, labels, centre, _means(vol, labels)


@pytest.mark.parametrize("move", [dict(shift_vox=(0.6, 0.6, 0.6)), dict(rot_deg=4.0, axis=(1, 0, 0)),
                                  dict(rot_deg=3.0, axis=(0, 1, 1))], ids=["shift", "rot4", "rot3"])
def test_mean_thickness_is_stable_when_the_phantom_is_revoxelised(base, move):
    vol, labels, centre, (m0, a0, c0) = base
    moved = _revoxelise(vol, labels, centre, **move)
    m1, a1, c1 = _means(vol, moved)
    print("%s: mean %.4f -> %.4f (%+.2f %%), area-weighted %.4f -> %.4f (%+.2f %%)"
          % (move, m0, m1, 100 * (m1 / m0 - 1), a0, a1, 100 * (a1 / a0 - 1)))
    assert c1 >= 0.999
    assert abs(m1 / m0 - 1) <= 0.005
    assert abs(a1 / a0 - 1) <= 0.005


# The real knee: the same anatomy re-voxelised must give the same regional mean thickness within 0.5 %
# (OA loses 1-2 % a year). Checked on the rows whose boundaries do not come from the femoral sub-region
# rule (regions.py; its own stability is a separate matter, docs/ACCURACY.md): the femoral plate, both
# tibial plates and the patella. Measured (bench/bench_precision.py, 10 variants): these move by <= 0.15 %
# (shift) and <= 0.21 % (3° axial rotation) here; the per-vertex mean moves 0.7-0.8 % and whole-vertex
# coverage 0.8 % (patella, shift), so either would fail.
GOAL_ROWS = ("femur", "tibia_medial", "tibia_lateral", "patella")


@pytest.mark.parametrize("move", [dict(shift_vox=(0.6, 0.6, 0.6)), dict(rot_deg=3.0, axis=(0, 0, 1))],
                         ids=["shift", "rot3-axial"])
def test_regional_mean_thickness_is_stable_when_the_real_knee_is_revoxelised(real_knee_labels,
                                                                              real_knee_morphometry, move):
    from KneePipelineLib import labels as L
    from KneePipelineLib.morphometry import analyze_labels

    lab = real_knee_labels
    k, j, i = np.nonzero(np.isin(lab.array, L.CARTILAGES))
    centre = lab.ijk_to_lps(np.array([[i.mean(), j.mean(), k.mean()]]))[0]
    moved = lab.with_array(_revoxelise(lab, lab.array, centre, **move).astype(lab.array.dtype))
    res = analyze_labels(moved)
    base = {s.name: s for s in real_knee_morphometry.regions if s.kind == "plate"}
    other = {s.name: s for s in res.regions if s.kind == "plate"}
    changes = {}
    for name in GOAL_ROWS:
        a, b = base[name], other[name]
        assert abs(b.cartilage_volume_mm3 / a.cartilage_volume_mm3 - 1) <= 0.003      # the same anatomy
        changes[name] = 100 * (b.thickness_mean_mm / a.thickness_mean_mm - 1)
    print(move, {n: round(c, 3) for n, c in changes.items()})
    assert all(abs(c) <= 0.5 for c in changes.values()), changes
