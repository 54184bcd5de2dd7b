"""A small crop of the held-out synthetic knee around the femorotibial joint, for fast tiny-nnU-Net checks.

The crop is made directly on a sub-grid of the held-out case's coarse grid (same spacing, direction and
held-out variant/seed as :func:`synthetic_mri.heldout_case`; only the field of view is smaller), centred on
where the sample's cartilage lands after the variant. Its default size, 112x112x64 voxels (82x82x90 mm),
holds the femorotibial joint in a few tiny-model tiles: seconds of network time for a whole ``run``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

import synthetic_mri as S
from KneePipelineLib import labels as L
from KneePipelineLib.io.volume import Volume

CARTILAGE = (L.PATELLAR_CARTILAGE, L.FEMORAL_CARTILAGE, L.MEDIAL_TIBIAL_CARTILAGE, L.LATERAL_TIBIAL_CARTILAGE)


def heldout_crop(sample: Volume, side: str = "right", size_ijk: Sequence[int] = (112, 112, 64),
                 factor: Sequence[int] = (2, 2, 2)) -> Tuple[Volume, Volume]:
    """(image, true labels without fibula) of the held-out ``side`` knee on a ``size_ijk`` crop of its grid."""
    grid = S.coarse_grid(sample, factor)
    var = S.HELDOUT_RIGHT if side == "right" else S.HELDOUT_LEFT
    fg_c = sample.ijk_to_lps(np.argwhere(sample.array > 0).mean(axis=0)[::-1][None])[0]
    cart_c = sample.ijk_to_lps(np.argwhere(np.isin(sample.array, CARTILAGE)).mean(axis=0)[::-1][None])[0]
    m = np.diag([-1.0, 1.0, 1.0]) if var.mirror else np.eye(3)
    fwd = S._rotation(var.rotation_deg) * float(var.scale) @ m
    centre = fg_c + fwd @ (cart_c - fg_c) + np.asarray(var.shift_mm, float)   # cartilage after the variant
    size = np.asarray(size_ijk, int)
    start = np.clip(np.round(grid.lps_to_ijk(centre[None])[0] - size / 2.0), 0,
                    np.asarray(grid.shape_ijk) - size).astype(int)
    crop = Volume(np.zeros(tuple(size[::-1]), np.uint8), grid.spacing_mm, grid.ijk_to_lps(start[None])[0],
                  grid.direction)
    lab = S.variant_labels(sample, crop, var)
    img = S.synthesize_mri(lab, seed=S.HELDOUT_SEEDS[side])
    return img, lab.with_array(np.where(lab.array == L.FIBULA, 0, lab.array).astype(np.uint8))
