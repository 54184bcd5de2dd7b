"""Post-processing: largest connected component per label; enclosed holes in bones filled (analytic cases)."""
import numpy as np

from KneePipelineLib.labels import FEMORAL_CARTILAGE, FEMUR, TIBIA
from KneePipelineLib.segmentation.postprocess import fill_bone_holes, largest_component_per_label, postprocess


def _cube(a, lo, hi, value):
    a[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value


def test_largest_component_kept_per_label_and_diagonal_contact_counts_as_connected():
    a = np.zeros((20, 20, 20), np.uint8)
    _cube(a, (1, 1, 1), (8, 8, 8), FEMUR)        # 343 voxels: kept
    _cube(a, (12, 12, 12), (14, 14, 14), FEMUR)  # 8 voxels: removed
    _cube(a, (12, 1, 1), (15, 4, 4), TIBIA)      # only tibia piece: kept
    a[9, 9, 9] = FEMORAL_CARTILAGE               # two cartilage voxels touching only diagonally:
    a[10, 10, 10] = FEMORAL_CARTILAGE            # one 26-connected component, both kept
    out = largest_component_per_label(a)
    assert (out == FEMUR).sum() == 343 and np.all(out[12:14, 12:14, 12:14] == 0)
    assert (out == TIBIA).sum() == 27
    assert (out == FEMORAL_CARTILAGE).sum() == 2
    assert a[12, 12, 12] == FEMUR  # input untouched


def test_bone_holes_filled_but_other_labels_kept():
    a = np.zeros((16, 16, 16), np.uint8)
    _cube(a, (2, 2, 2), (13, 13, 13), FEMUR)
    _cube(a, (5, 5, 5), (8, 8, 8), 0)                      # enclosed background cavity -> femur
    _cube(a, (9, 9, 9), (11, 11, 11), FEMORAL_CARTILAGE)   # enclosed other label -> stays
    _cube(a, (10, 0, 3), (12, 6, 5), 0)                    # a notch open to the outside -> stays background
    out = fill_bone_holes(a)
    assert np.all(out[5:8, 5:8, 5:8] == FEMUR)
    assert np.all(out[9:11, 9:11, 9:11] == FEMORAL_CARTILAGE)
    assert np.all(out[10:12, 0:6, 3:5] == 0)
    assert postprocess(a).dtype == a.dtype
