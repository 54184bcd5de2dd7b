"""DESS-like synthetic knee MRI made from a label map, and geometric variants of the sample label map.

Used by ``tools/train_tiny_knee_nnunet.py`` (training data for the committed tiny nnU-Net fixture) and by
``Testing/test_e2e_run.py`` (held-out images whose true labels are known).

* :func:`variant_labels` -- the canonical sample label map moved onto a coarser grid with the sample's own
  oblique direction, after a rigid rotation / isotropic scaling / translation about the knee centre and,
  optionally, a mirror across the sagittal plane (a left knee). All in physical LPS mm.
* :func:`synthesize_mri` -- per-tissue intensities like a water-excitation DESS (cartilage bright, marrow
  intermediate with a dark cortical rim, menisci dark, textured soft tissue, dark air), a smooth
  multiplicative bias field, a Gaussian blur standing in for partial volume, Rician noise. Deterministic
  for a given ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from KneePipelineLib import labels as L
from KneePipelineLib.io.volume import Volume

# Fraction of full scale per tissue (before jitter); full scale = 1000.
BASE_INTENSITY = {
    "air": 0.02, "soft": 0.22, "marrow": 0.40, "cortex": 0.06, "cartilage": 0.85, "meniscus": 0.07,
}
BONE_LABELS = (L.FEMUR, L.TIBIA, L.PATELLA, L.FIBULA)


def load_sample_labels(path: str | Path) -> Volume:
    """The pymskt sample label map in canonical labels."""
    from KneePipelineLib.io.readers import read_labels

    vol = read_labels(str(path))
    table = L.load_convention("pymskt")
    return vol.with_array(L.remap(vol.array, table, "pymskt").astype(np.uint8))


@dataclass(frozen=True)
class Variant:
    """A rigid(+scale) variant of the sample knee; angles in degrees about LPS x, y, z through the centre."""
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0)
    scale: float = 1.0
    shift_mm: Sequence[float] = (0.0, 0.0, 0.0)
    mirror: bool = False          # mirror across the sagittal plane (x -> -x): a left knee


def _rotation(deg: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def coarse_grid(src: Volume, factor: Sequence[int] = (2, 2, 2)) -> Volume:
    """An empty grid covering the same field of view as ``src`` with spacing multiplied by ``factor``
    (i, j, k), same direction; voxel centres placed so the physical extent matches."""
    f = np.asarray(factor, dtype=float)
    shape_ijk = np.floor(np.asarray(src.shape_ijk) / f).astype(int)
    spacing = src.spacing_mm * f
    # first coarse voxel centre sits at the centre of the first f source voxels
    origin = src.origin_mm + src.direction @ (src.spacing_mm * (f - 1) / 2.0)
    return Volume(np.zeros(shape_ijk[::-1], np.uint8), spacing, origin, src.direction.copy())


def variant_labels(src: Volume, grid: Volume, variant: Variant = Variant()) -> Volume:
    """``src`` labels (nearest neighbour) on ``grid`` after applying ``variant`` about the knee centre."""
    from scipy.ndimage import map_coordinates

    fg = np.argwhere(src.array > 0)
    centre = src.ijk_to_lps(fg.mean(axis=0)[::-1][None])[0]
    r = _rotation(variant.rotation_deg) * float(variant.scale)
    m = np.diag([-1.0, 1.0, 1.0]) if variant.mirror else np.eye(3)
    fwd = r @ m                                  # source point -> output point: c + fwd (q - c) + shift
    inv = np.linalg.inv(fwd)
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in grid.array.shape], indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    del k, j, i
    p = grid.ijk_to_lps(ijk)
    q = (p - centre - np.asarray(variant.shift_mm, float)) @ inv.T + centre
    s = src.lps_to_ijk(q)                        # (n, 3) source i, j, k
    coords = np.stack([s[:, 2], s[:, 1], s[:, 0]])
    out = map_coordinates(src.array, coords, order=0, mode="constant", cval=0, prefilter=False)
    return grid.with_array(out.reshape(grid.array.shape).astype(np.uint8))


def _smooth_field(shape, sigma_vox: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return f / (f.std() + 1e-6)


def synthesize_mri(labels: Volume, seed: int = 0, noise: float = 0.03, bias: float = 0.2, blur_vox: float = 0.6,
                   jitter: float = 0.12, body_margin_mm: float = 22.0) -> Volume:
    """A float32 DESS-like image (0..~1000) in ``labels``' geometry; deterministic for ``seed``."""
    from scipy.ndimage import binary_erosion, distance_transform_edt, gaussian_filter, zoom

    rng = np.random.default_rng(seed)
    a = labels.array
    sp_kji = labels.spacing_mm[::-1]
    val = {k: v * (1.0 + jitter * rng.uniform(-1, 1)) for k, v in BASE_INTENSITY.items()}

    # body: everything within body_margin_mm of a structure (computed on a 2x coarser grid for speed)
    small = a[::2, ::2, ::2] > 0
    dist = distance_transform_edt(~small, sampling=sp_kji * 2)
    body_small = (dist < body_margin_mm).astype(np.float32)
    body = zoom(body_small, np.asarray(a.shape) / np.asarray(small.shape), order=1)[:a.shape[0], :a.shape[1], :a.shape[2]]
    body = np.pad(body, [(0, a.shape[d] - body.shape[d]) for d in range(3)], mode="edge") > 0.5

    img = np.full(a.shape, val["air"], np.float32)
    texture = _smooth_field(a.shape, 2.5, rng)
    img[body] = val["soft"] * (1.0 + 0.25 * texture[body])
    bone = np.isin(a, BONE_LABELS)
    trab = _smooth_field(a.shape, 0.8, rng)
    img[bone] = val["marrow"] * (1.0 + 0.12 * trab[bone])
    for b in BONE_LABELS:                       # dark cortical rim, one voxel
        m = a == b
        if m.any():
            rim = m & ~binary_erosion(m)
            img[rim] = val["cortex"]
    cart = np.isin(a, L.CARTILAGES)
    img[cart] = val["cartilage"] * (1.0 + 0.06 * texture[cart])
    men = np.isin(a, (L.MEDIAL_MENISCUS, L.LATERAL_MENISCUS))
    img[men] = val["meniscus"]

    img = gaussian_filter(img, blur_vox)
    # smooth multiplicative bias: a random low-frequency field
    kk, jj, ii = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in a.shape], indexing="ij")
    c = rng.uniform(-1, 1, 6)
    field = c[0] * kk + c[1] * jj + c[2] * ii + c[3] * jj * ii + c[4] * kk * jj + c[5] * (ii ** 2 - 0.33)
    field = np.exp(bias * field / (np.abs(c).sum() / 2 + 1e-6)).astype(np.float32)
    img = img * field
    n1 = rng.standard_normal(a.shape).astype(np.float32) * noise
    n2 = rng.standard_normal(a.shape).astype(np.float32) * noise
    img = np.sqrt((img + n1) ** 2 + n2 ** 2)     # Rician magnitude
    scale = 1000.0 * (1.0 + 0.3 * rng.uniform(-1, 1))
    out = labels.with_array((img * scale).astype(np.float32))
    out.metadata = {"source": "synthetic_mri(seed=%d)" % seed}
    return out


# Held-out variants used by the end-to-end test and the validation report (never used in training:
# training draws rotations from a seeded generator and noise seeds < 10_000).
HELDOUT_RIGHT = Variant(rotation_deg=(4.0, -3.0, 5.0), scale=1.03, shift_mm=(2.0, -3.0, 1.5), mirror=False)
HELDOUT_LEFT = Variant(rotation_deg=(-3.0, 4.0, -4.0), scale=0.98, shift_mm=(-1.5, 2.0, -2.0), mirror=True)
HELDOUT_SEEDS = {"right": 90_001, "left": 90_002}


def heldout_case(sample: Volume, side: str = "right", factor: Sequence[int] = (2, 2, 2)):
    """(image, true_labels) for the held-out right or left knee, on the coarse grid of the sample."""
    grid = coarse_grid(sample, factor)
    var = HELDOUT_RIGHT if side == "right" else HELDOUT_LEFT
    lab = variant_labels(sample, grid, var)
    img = synthesize_mri(lab, seed=HELDOUT_SEEDS[side])
    return img, lab


def dice(a: np.ndarray, b: np.ndarray, label: int) -> Optional[float]:
    x, y = a == label, b == label
    s = int(x.sum()) + int(y.sum())
    return None if s == 0 else 2.0 * float(np.logical_and(x, y).sum()) / s
