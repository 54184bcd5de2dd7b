"""A volume with its physical geometry (LPS mm), independent of array axis order."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np


@dataclass
class Volume:
    """Voxel array plus geometry.

    ``array`` is indexed ``[k, j, i]`` (SimpleITK / NRRD order: the last axis is the fastest, i).
    ``spacing_mm``, ``origin_mm`` are (x, y, z) = (i, j, k) ordered; ``direction`` is the 3x3 matrix whose
    column c is the LPS direction of index axis c (i, j, k). Physical point of index (i, j, k):
    ``origin + direction @ (spacing * [i, j, k])``.
    """

    array: np.ndarray
    spacing_mm: np.ndarray
    origin_mm: np.ndarray
    direction: np.ndarray
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing_mm = np.asarray(self.spacing_mm, dtype=float).reshape(3)
        self.origin_mm = np.asarray(self.origin_mm, dtype=float).reshape(3)
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)

    # -- geometry -----------------------------------------------------------------------------
    @property
    def shape_ijk(self) -> tuple:
        return tuple(int(s) for s in self.array.shape[::-1])

    @property
    def index_to_physical(self) -> np.ndarray:
        """4x4 affine mapping homogeneous (i, j, k, 1) to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag(self.spacing_mm)
        a[:3, 3] = self.origin_mm
        return a

    def ijk_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction @ np.diag(self.spacing_mm)).T + self.origin_mm

    def lps_to_ijk(self, xyz: np.ndarray) -> np.ndarray:
        m = self.direction @ np.diag(self.spacing_mm)
        return (np.asarray(xyz, dtype=float) - self.origin_mm) @ np.linalg.inv(m).T

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    def same_geometry(self, other: "Volume", tol: float = 1e-4) -> bool:
        return (self.array.shape == other.array.shape
                and np.allclose(self.spacing_mm, other.spacing_mm, atol=tol)
                and np.allclose(self.origin_mm, other.origin_mm, atol=tol * 10)
                and np.allclose(self.direction, other.direction, atol=tol))

    def with_array(self, array: np.ndarray) -> "Volume":
        if array.shape != self.array.shape:
            raise ValueError("array shape %s differs from volume shape %s" % (array.shape, self.array.shape))
        return Volume(array, self.spacing_mm.copy(), self.origin_mm.copy(), self.direction.copy(), dict(self.metadata))

    # -- SimpleITK bridge ---------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image: Any) -> "Volume":
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(image)
        return cls(arr, np.array(image.GetSpacing()), np.array(image.GetOrigin()),
                   np.array(image.GetDirection()).reshape(3, 3))

    def to_sitk(self) -> Any:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing([float(v) for v in self.spacing_mm])
        image.SetOrigin([float(v) for v in self.origin_mm])
        image.SetDirection([float(v) for v in self.direction.ravel()])
        return image
