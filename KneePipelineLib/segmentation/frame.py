"""The model input frame: put an image's voxels in the axis order and directions a network was trained in,
and its labels back -- exactly (a permutation and flips of the array, never a resample).

Every segmentation backend goes through here (nnU-Net, the DOSMA 2D U-Nets, the ensemble's members), with
the frame the registry states for the model (``ModelEntry.frame``). Frames are written in DOSMA's orientation
codes (``dosma.core.orientation``): one code per *numpy array axis* of our ``Volume.array`` (indexed
[k, j, i]), naming where that axis points -- ``"LR"`` runs left -> right (toward the patient's right),
``"SI"`` superior -> inferior, ``"AP"`` anterior -> posterior; ``"RL"``, ``"IS"``, ``"PA"`` the reverse.

The reference reorients the same way: DOSMA's ``MedicalVolume.reformat`` (a transpose and flips chosen
from the closest anatomical axis of each array axis) before every 2D net, and ``to_sitk("sagittal")`` --
array axes (LR, SI, AP) -- before nnU-Net (OpenMSK ``steps/segment.py``). Oblique scans: each array axis
is matched to the anatomical direction it is closest to (the best of the 6 axis permutations by summed
|cosine|), so a 20 degree oblique sagittal scan still goes in as sagittal; the geometry of the reoriented
volume is exact (every voxel keeps its physical position).

The acquisition plane (the plane of the slices: the array axis whose spacing is clearly the coarsest is the
through-plane axis) is compared with the plane the model was trained on (``ModelEntry.acquisition_plane``);
when they differ the run warns with the through-plane spacing the model had to live with.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import ModelInvalidError
from ..io.volume import Volume

# where each DOSMA code points, as an LPS unit vector (LPS x grows toward the patient's left)
CODE_LPS = {
    "LR": (-1.0, 0.0, 0.0), "RL": (1.0, 0.0, 0.0),
    "AP": (0.0, 1.0, 0.0), "PA": (0.0, -1.0, 0.0),
    "SI": (0.0, 0.0, -1.0), "IS": (0.0, 0.0, 1.0),
}
ANATOMY = {"LR": "left-right", "RL": "left-right", "AP": "anterior-posterior", "PA": "anterior-posterior",
           "SI": "superior-inferior", "IS": "superior-inferior"}
# the plane whose slices are stacked along a direction (through-plane direction -> plane)
PLANE_OF_NORMAL = {"left-right": "sagittal", "anterior-posterior": "coronal", "superior-inferior": "axial"}
# A spacing this much coarser than the finest other axis makes that axis the through-plane axis.
ANISOTROPY_RATIO = 1.2

# Frames of the reference's models (numpy array axes, DOSMA codes).
NNUNET_SAGITTAL = ("LR", "SI", "AP")      # to_sitk(image_orientation="sagittal") then GetArrayFromImage
DOSMA_SAGITTAL = ("SI", "AP", "LR")       # dosma.core.orientation.SAGITTAL; slices along LR
DOSMA_CORONAL = ("LR", "SI", "AP")        # StanfordQDessBoneUNet2DCoronal.TARGET_ORIENTATION; slices along AP
DOSMA_AXIAL = ("LR", "AP", "SI")          # StanfordQDessBoneUNet2DAxial.TARGET_ORIENTATION; slices along SI


def check_codes(codes: Sequence[str]) -> Tuple[str, str, str]:
    codes = tuple(str(c) for c in codes)
    if len(codes) != 3 or any(c not in CODE_LPS for c in codes) or len({ANATOMY[c] for c in codes}) != 3:
        raise ModelInvalidError("Model frame %r is not three DOSMA orientation codes covering LR, AP and SI."
                                % (codes,), hint="Use codes such as ('LR', 'SI', 'AP') in the registry entry.")
    return codes  # type: ignore[return-value]


@dataclass(frozen=True)
class FrameMap:
    """How an image's array goes into a model frame: frame axis t is array axis ``perm[t]``, reversed
    where ``flips[t]``. ``codes`` is the frame; ``source_codes`` what each original array axis was."""

    perm: Tuple[int, int, int]
    flips: Tuple[bool, bool, bool]
    codes: Tuple[str, str, str]
    source_codes: Tuple[str, str, str]

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)

    def forward(self, arr: np.ndarray) -> np.ndarray:
        """Image array (..., k, j, i) -> frame array (a view; extra leading axes pass through)."""
        lead = arr.ndim - 3
        out = np.transpose(arr, tuple(range(lead)) + tuple(lead + p for p in self.perm))
        axes = tuple(lead + t for t in range(3) if self.flips[t])
        return np.flip(out, axis=axes) if axes else out

    def inverse(self, arr: np.ndarray) -> np.ndarray:
        """Frame array (..., a0, a1, a2) -> the image's array order (exact inverse of :meth:`forward`)."""
        lead = arr.ndim - 3
        axes = tuple(lead + t for t in range(3) if self.flips[t])
        if axes:
            arr = np.flip(arr, axis=axes)
        inv = np.argsort(self.perm)
        return np.transpose(arr, tuple(range(lead)) + tuple(lead + int(i) for i in inv))

    def describe(self) -> dict:
        return {"frame": list(self.codes), "image_axes": list(self.source_codes),
                "transpose": list(self.perm), "flipped_frame_axes": [t for t in range(3) if self.flips[t]]}


def _array_axis_dirs(direction: np.ndarray) -> list:
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    # numpy array axis a (of [k, j, i]) follows index axis 2 - a, i.e. direction column 2 - a
    return [d[:, 2 - a] / np.linalg.norm(d[:, 2 - a]) for a in range(3)]


def _best(direction: np.ndarray, codes: Sequence[str]) -> Tuple[Tuple[int, int, int], Tuple[bool, bool, bool]]:
    axis_dirs = _array_axis_dirs(direction)
    targets = [np.asarray(CODE_LPS[c]) for c in codes]
    best, best_score = (0, 1, 2), -1.0
    for perm in itertools.permutations(range(3)):
        score = sum(abs(float(np.dot(axis_dirs[perm[t]], targets[t]))) for t in range(3))
        if score > best_score + 1e-9:
            best, best_score = perm, score
    flips = tuple(float(np.dot(axis_dirs[best[t]], targets[t])) < 0 for t in range(3))
    return best, flips  # type: ignore[return-value]


def image_codes(direction: np.ndarray) -> Tuple[str, str, str]:
    """DOSMA codes of an image's own array axes (closest anatomical direction of each, jointly)."""
    ref = ("LR", "AP", "SI")
    perm, flips = _best(direction, ref)
    codes = ["", "", ""]
    for t, a in enumerate(perm):
        codes[a] = ref[t][::-1] if flips[t] else ref[t]
    return tuple(codes)  # type: ignore[return-value]


def frame_map(direction: np.ndarray, codes: Sequence[str]) -> FrameMap:
    """The permutation and flips that bring an array with this direction matrix into ``codes``."""
    codes = check_codes(codes)
    perm, flips = _best(direction, codes)
    return FrameMap(perm, flips, codes, image_codes(direction))


def to_frame(image: Volume, codes: Sequence[str]) -> Tuple[Volume, FrameMap]:
    """``image`` with its array in frame ``codes``; the geometry is rewritten so that every voxel keeps
    its physical position (LPS mm). Returns (volume in the frame, the map to undo it)."""
    fmap = frame_map(image.direction, codes)
    arr = np.ascontiguousarray(fmap.forward(image.array))
    shape_old = image.array.shape
    spacing = np.empty(3)
    direction = np.empty((3, 3))
    origin = image.origin_mm.astype(float).copy()
    for t in range(3):
        a = fmap.perm[t]                      # old array axis
        old_idx, new_idx = 2 - a, 2 - t       # index axes (i, j, k order)
        col = image.direction[:, old_idx].astype(float)
        spacing[new_idx] = image.spacing_mm[old_idx]
        if fmap.flips[t]:
            origin = origin + col * image.spacing_mm[old_idx] * (shape_old[a] - 1)
            col = -col
        direction[:, new_idx] = col
    out = Volume(arr, spacing, origin, direction, dict(image.metadata))
    return out, fmap


def from_frame(array: np.ndarray, fmap: FrameMap) -> np.ndarray:
    """Labels (or (C, ...) probabilities) predicted in the frame -> the original image's array order."""
    return np.ascontiguousarray(fmap.inverse(array))


def frame_spacing(image: Volume, fmap: FrameMap) -> np.ndarray:
    """Spacing (mm) along the frame's axes."""
    arr_spacing = image.spacing_mm[::-1]
    return np.array([arr_spacing[p] for p in fmap.perm], dtype=float)


@dataclass(frozen=True)
class Acquisition:
    plane: Optional[str]                  # sagittal | coronal | axial | None (near-isotropic)
    through_plane_mm: Optional[float]     # the slice spacing
    inplane_mm: Tuple[float, float]       # the two finer spacings
    through_plane_direction: Optional[str]  # "left-right" | ...


def acquisition(image: Volume) -> Acquisition:
    """The plane an image was acquired in, from its spacing: the clearly coarsest axis is through-plane."""
    sp = np.asarray(image.spacing_mm, dtype=float)
    order = np.argsort(sp)
    coarse = int(order[2])
    inplane = (float(sp[order[0]]), float(sp[order[1]]))
    if sp[coarse] < ANISOTROPY_RATIO * inplane[1]:
        return Acquisition(None, None, inplane, None)
    v = image.direction[:, coarse] / np.linalg.norm(image.direction[:, coarse])
    code = max(CODE_LPS, key=lambda c: abs(float(np.dot(v, CODE_LPS[c]))))
    anat = ANATOMY[code]
    return Acquisition(PLANE_OF_NORMAL[anat], float(sp[coarse]), inplane, anat)


def plane_warning(image: Volume, model_plane: Optional[str], model_name: str) -> Optional[str]:
    """A warning when the image was acquired in another plane than the model's training images."""
    if not model_plane:
        return None
    acq = acquisition(image)
    if acq.plane is None or acq.plane == model_plane:
        return None
    trained_normal = {v: k for k, v in PLANE_OF_NORMAL.items()}[model_plane]
    return ("This is a %s acquisition (slices %.2f mm apart along %s, %.2f x %.2f mm in-plane); %s was trained "
            "on %s images (slices along %s). The image is reoriented exactly, not resampled: along %s the "
            "network gets %.2f mm spacing where its training images had in-plane resolution, so expect coarser, "
            "less reliable labels." % (
                acq.plane, acq.through_plane_mm, acq.through_plane_direction, acq.inplane_mm[0],
                acq.inplane_mm[1], model_name, model_plane, trained_normal, acq.through_plane_direction,
                acq.through_plane_mm))


__all__ = ["FrameMap", "Acquisition", "frame_map", "to_frame", "from_frame", "frame_spacing", "image_codes",
           "acquisition", "plane_warning", "check_codes", "NNUNET_SAGITTAL", "DOSMA_SAGITTAL", "DOSMA_CORONAL",
           "DOSMA_AXIAL"]
