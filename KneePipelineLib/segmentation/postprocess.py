"""Label-map clean-up after segmentation: largest connected component per label, hole filling in bones.

Each label is processed inside its bounding box (``scipy.ndimage.find_objects``), so a 384x384x160 knee
costs a few label passes over small crops rather than over the whole volume.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from ..labels import BONES

FULL_3D = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity: thin cartilage stays one piece


def largest_component_per_label(labels: np.ndarray, keep: Optional[Iterable[int]] = None) -> np.ndarray:
    """Keep only the largest 26-connected component of every non-zero label; the rest becomes 0."""
    from scipy import ndimage

    out = labels.copy()
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False))
    wanted = None if keep is None else set(int(k) for k in keep)
    for value_minus_1, box in enumerate(boxes):
        value = value_minus_1 + 1
        if box is None or (wanted is not None and value not in wanted):
            continue
        mask = labels[box] == value
        comp, n = ndimage.label(mask, structure=FULL_3D)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        drop = mask & (comp != int(np.argmax(sizes)))
        out[box][drop] = 0
    return out


def fill_bone_holes(labels: np.ndarray, bones: Iterable[int] = BONES) -> np.ndarray:
    """Fill enclosed background cavities of each bone label (3D); other labels are never overwritten."""
    from scipy import ndimage

    out = labels.copy()
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False))
    for bone in bones:
        if bone - 1 >= len(boxes) or boxes[bone - 1] is None:
            continue
        box = boxes[bone - 1]
        mask = labels[box] == bone
        filled = ndimage.binary_fill_holes(mask)
        sub = out[box]
        sub[filled & ~mask & (sub == 0)] = bone
    return out


def postprocess(labels: np.ndarray) -> np.ndarray:
    """The reference clean-up: largest component per label, then hole filling in the bones."""
    return fill_bone_holes(largest_component_per_label(labels))
