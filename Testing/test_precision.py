"""Precision: the same anatomy re-voxelised (a sub-voxel shift, a 3-5° rotation, nearest-neighbour onto
the same grid) must give the same mean thickness. Fast property test on the analytic sphere phantom at the
sample's anisotropic voxels, measured the way the pipeline measures; the full figure for the real knee
is bench/bench_precision.py."""
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
