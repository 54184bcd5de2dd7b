"""Planes through the knee in PHYSICAL orientation (LPS), resampled from any voxel grid.

A plane is defined in LPS mm, never by array axis: its sample points are mapped to voxel indices through
each volume's own direction matrix, so oblique and permuted acquisitions display the same way and pixels
are square in mm. Screen conventions (radiological): sagittal - anterior left, superior up; coronal and
axial - patient's right on the left; axial - anterior up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import labels as L


@dataclass
class Plane:
    name: str            # "sagittal" | "coronal" | "axial"
    title: str
    position_mm: float   # the fixed LPS coordinate (x, y or z)
    h: np.ndarray        # horizontal screen coordinates (mm), increasing to the right
    v: np.ndarray        # vertical screen coordinates (mm), increasing upward
    edge_letters: Tuple[str, str, str, str]   # left, right, bottom, top

    def lps_points(self) -> np.ndarray:
        """(nv, nh, 3) LPS points of the plane's pixel centres."""
        H, V = np.meshgrid(self.h, self.v)
        c = np.full_like(H, self.position_mm)
        if self.name == "sagittal":      # h = y (A->P), v = z
            pts = np.stack([c, H, V], -1)
        elif self.name == "coronal":     # h = x (R->L), v = z
            pts = np.stack([H, c, V], -1)
        else:                            # axial: h = x, v = -y (anterior up)
            pts = np.stack([H, -V, c], -1)
        return pts

    @property
    def extent(self) -> List[float]:
        dh = (self.h[1] - self.h[0]) / 2 if len(self.h) > 1 else 0.5
        dv = (self.v[1] - self.v[0]) / 2 if len(self.v) > 1 else 0.5
        return [self.h[0] - dh, self.h[-1] + dh, self.v[0] - dv, self.v[-1] + dv]


def sample(volume, pts: np.ndarray, order: int = 0, fill: float = 0.0) -> np.ndarray:
    """Values of ``volume`` at LPS points (any leading shape); outside the grid -> ``fill``."""
    from scipy.ndimage import map_coordinates

    shp = pts.shape[:-1]
    ijk = volume.lps_to_ijk(pts.reshape(-1, 3))
    coords = ijk[:, ::-1].T      # array is [k, j, i]
    arr = volume.array
    out = map_coordinates(arr, coords, order=order, mode="constant", cval=np.nan if order else 0,
                          prefilter=False, output=np.float32 if order else arr.dtype)
    if order:
        out = np.where(np.isfinite(out), out, fill)
    else:
        lim = np.array(arr.shape)[:, None] - 0.5
        inside = np.all((coords >= -0.5) & (coords <= lim), axis=0)
        out = np.where(inside, out, fill)
    return out.reshape(shp)


def _bbox_lps(volume, mask_stride: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    arr = volume.array[::mask_stride, ::mask_stride, ::mask_stride]
    nz = np.nonzero(arr)
    if len(nz[0]) == 0:
        lo = np.zeros(3)
        hi = np.array(volume.array.shape[::-1]) - 1
    else:
        lo = np.array([nz[2].min(), nz[1].min(), nz[0].min()]) * mask_stride
        hi = np.array([nz[2].max(), nz[1].max(), nz[0].max()]) * mask_stride
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    lps = volume.ijk_to_lps(corners)
    return lps.min(0), lps.max(0)


def centroid_lps(volume, labels: Sequence[int], stride: int = 2) -> Optional[np.ndarray]:
    arr = volume.array[::stride, ::stride, ::stride]
    k, j, i = np.nonzero(np.isin(arr, list(labels)))
    if len(i) == 0:
        return None
    ijk = np.stack([i, j, k], 1).astype(float) * stride
    return volume.ijk_to_lps(ijk).mean(0)


def make_plane(name: str, position_mm: float, lo: np.ndarray, hi: np.ndarray, title: str,
               margin_mm: float = 8.0, max_px: int = 360, min_px_mm: float = 0.3) -> Plane:
    if name == "sagittal":
        hr, vr = (lo[1], hi[1]), (lo[2], hi[2])
        letters = ("A", "P", "I", "S")
    elif name == "coronal":
        hr, vr = (lo[0], hi[0]), (lo[2], hi[2])
        letters = ("R", "L", "I", "S")
    else:
        hr, vr = (lo[0], hi[0]), (-hi[1], -lo[1])
        letters = ("R", "L", "P", "A")
    hr = (hr[0] - margin_mm, hr[1] + margin_mm)
    vr = (vr[0] - margin_mm, vr[1] + margin_mm)
    px = max(min_px_mm, max(hr[1] - hr[0], vr[1] - vr[0]) / max_px)
    h = np.arange(hr[0], hr[1] + px / 2, px)
    v = np.arange(vr[0], vr[1] + px / 2, px)
    return Plane(name, title, float(position_mm), h, v, letters)


def standard_planes(labels, side: str) -> List[Plane]:
    """Sagittal through the medial and the lateral compartment, coronal through the tibial plateau,
    axial through the patella - each positioned from the anatomy in LPS."""
    lo, hi = _bbox_lps(labels)
    ctr = (lo + hi) / 2
    all_c = centroid_lps(labels, list(L.TISSUES)) if labels.array.any() else ctr
    all_c = ctr if all_c is None else all_c
    med = centroid_lps(labels, [L.MEDIAL_TIBIAL_CARTILAGE, L.MEDIAL_MENISCUS])
    lat = centroid_lps(labels, [L.LATERAL_TIBIAL_CARTILAGE, L.LATERAL_MENISCUS])
    width = hi[0] - lo[0]
    # LPS x grows toward the patient's left; in a right knee the medial side is at larger x.
    sgn = 1.0 if side == "right" else -1.0
    x_med = med[0] if med is not None else all_c[0] + sgn * width * 0.2
    x_lat = lat[0] if lat is not None else all_c[0] - sgn * width * 0.2
    tib = centroid_lps(labels, [L.MEDIAL_TIBIAL_CARTILAGE, L.LATERAL_TIBIAL_CARTILAGE])
    y_cor = tib[1] if tib is not None else all_c[1]
    pat = centroid_lps(labels, [L.PATELLAR_CARTILAGE])
    if pat is None:
        pat = centroid_lps(labels, [L.PATELLA])
    z_ax = pat[2] if pat is not None else all_c[2]
    return [
        make_plane("sagittal", x_med, lo, hi, "Sagittal, medial compartment (x = %.0f mm)" % x_med),
        make_plane("sagittal", x_lat, lo, hi, "Sagittal, lateral compartment (x = %.0f mm)" % x_lat),
        make_plane("coronal", y_cor, lo, hi, "Coronal, tibial plateau (y = %.0f mm)" % y_cor),
        make_plane("axial", z_ax, lo, hi, "Axial, patella (z = %.0f mm)" % z_ax),
    ]


def label_rgb(lab2d: np.ndarray) -> np.ndarray:
    """RGBA image of a label slice in the canonical colours (transparent background)."""
    out = np.zeros(lab2d.shape + (4,), np.float32)
    for code, name in L.TISSUES.items():
        m = lab2d == code
        if m.any():
            out[m, :3] = np.array(L.COLORS[name]) / 255.0
            out[m, 3] = 1.0
    return out


def window(img: np.ndarray, mask: Optional[np.ndarray] = None) -> Tuple[float, float]:
    vals = img[mask] if mask is not None and mask.any() else img[np.isfinite(img)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1)


def draw_plane(ax, plane: Plane, labels, image=None, overlay=None, show_contours: bool = True) -> Dict[str, float]:
    """Background (image, else the label map), label contours, optional overlay = (volume, cmap, vmin, vmax, mask_labels)."""
    pts = plane.lps_points()
    lab = sample(labels, pts, order=0).astype(np.int32)
    info: Dict[str, float] = {}
    ext = plane.extent
    if image is not None:
        img = sample(image, pts, order=1)
        lo, hi = window(img)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=ext, interpolation="bilinear")
    else:
        ax.imshow(np.zeros(lab.shape), cmap="gray", vmin=0, vmax=1, origin="lower", extent=ext)
        rgba = label_rgb(lab)
        rgba[..., 3] *= 0.45
        ax.imshow(rgba, origin="lower", extent=ext, interpolation="nearest")
    overlay_img = None
    if overlay is not None:
        vol, cmap, vmin, vmax, mask_labels = overlay
        val = sample(vol, pts, order=0).astype(float)
        m = np.isin(lab, list(mask_labels)) & np.isfinite(val) & (val > 0)
        overlay_img = ax.imshow(np.ma.masked_where(~m, val), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                                extent=ext, interpolation="nearest")
        info["overlay_pixels"] = float(m.sum())
    if show_contours:
        H, V = np.meshgrid(plane.h, plane.v)
        for code in np.unique(lab):
            if code == 0 or int(code) not in L.TISSUES:
                continue
            col = np.array(L.COLORS[L.TISSUES[int(code)]]) / 255.0
            ax.contour(H, V, (lab == code).astype(np.float32), levels=[0.5], colors=[col],
                       linewidths=0.9 if overlay is None else 0.5)
    ax.set_aspect("equal")
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(plane.title, fontsize=9)
    l, r, b, t = plane.edge_letters
    kw = dict(transform=ax.transAxes, color="w", fontsize=9, fontweight="bold")
    ax.text(0.01, 0.5, l, ha="left", va="center", **kw)
    ax.text(0.99, 0.5, r, ha="right", va="center", **kw)
    ax.text(0.5, 0.01, b, ha="center", va="bottom", **kw)
    ax.text(0.5, 0.99, t, ha="center", va="top", **kw)
    # 10 mm scale bar
    x0 = ext[0] + 0.05 * (ext[1] - ext[0])
    y0 = ext[2] + 0.06 * (ext[3] - ext[2])
    ax.plot([x0, x0 + 10], [y0, y0], color="w", lw=2)
    ax.text(x0 + 5, y0 + 0.02 * (ext[3] - ext[2]), "10 mm", color="w", fontsize=7, ha="center", va="bottom")
    info["present_labels"] = float(len([c for c in np.unique(lab) if c]))
    info["_overlay"] = overlay_img  # type: ignore[assignment]
    return info
