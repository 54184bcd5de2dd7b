"""The field's 2D cartilage thickness maps, drawn from bone-surface vertices that carry thickness.

Femur: cylindrical unwrap about the medio-lateral axis (horizontal = position along that axis in mm,
vertical = angle in the sagittal plane, running from the trochlea over the weight-bearing condyles to the
posterior condyles). Tibia: orthographic projection onto the axial plane seen from superior. Patella:
projection onto the coronal plane seen from posterior (its articular face). Region boundaries are the
contours between the sub-region codes carried by the vertices (solid black); the Chondrometrics
subregions (``subregion`` point array: cMT ... iLT, ecMF ... icLF; Wirth & Eckstein 2008) are drawn as
dashed white borders with their codes. Denuded bone (``cartilage_status`` 2) is drawn as 0 mm; failed rays
are left blank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import labels as L


@dataclass
class FlatMap:
    structure: str
    uv: np.ndarray                # (n, 2) map coordinates of every vertex
    triangles: np.ndarray         # (m, 3) triangles kept (all corners carry thickness, no seam crossing)
    thickness_mm: np.ndarray      # (n,)
    region: np.ndarray            # (n,) int
    xlabel: str
    ylabel: str
    left_right: Tuple[str, str]   # anatomical names of the left / right edges
    bottom_top: Tuple[str, str]
    subregion: Optional[np.ndarray] = None   # (n,) Chondrometrics subregion / region code per vertex


def _ml_axis(points: np.ndarray) -> np.ndarray:
    """Medio-lateral axis: the principal axis of the cartilage-bearing vertices nearest LPS x (sign = +x)."""
    c = points - points.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    best = vt[np.argmax(np.abs(vt[:, 0]))]
    if abs(best[0]) < np.cos(np.radians(35)):   # principal axes disagree with the scanner frame: trust x
        return np.array([1.0, 0, 0])
    return best * np.sign(best[0])


def _drawn(mesh) -> np.ndarray:
    """Vertices drawn on a map: a thickness, or denuded bone (cartilage_status 2, drawn as 0 mm like
    ThCtAB counts it); failed rays stay blank."""
    ok = np.isfinite(mesh.thickness_mm)
    st = mesh.arrays.get("cartilage_status")
    if st is not None and len(st) == len(ok):
        ok |= st == 2
    return ok


def _keep(tris: np.ndarray, ok: np.ndarray) -> np.ndarray:
    return tris[np.all(ok[tris], axis=1)]


def femur_map(mesh, side: str) -> Optional[FlatMap]:
    th, reg = mesh.thickness_mm, mesh.region
    if th is None:
        return None
    ok = _drawn(mesh)
    if reg is not None:
        ok &= np.isin(reg, [11, 12, 13, 14, 15]) | (reg == 0)
    if ok.sum() < 10:
        return None
    P = mesh.points_mm
    ax = _ml_axis(P[ok])
    # sagittal-plane basis orthogonal to the ML axis: s = superior-ish, a = anterior-ish
    s_ax = np.array([0, 0, 1.0]) - ax * ax[2]
    s_ax /= np.linalg.norm(s_ax)
    a_ax = np.cross(s_ax, ax)                     # anterior = -y in LPS; fix the sign by construction
    if a_ax[1] > 0:
        a_ax = -a_ax
    centre = P[ok].mean(0)
    d = P - centre
    u = d @ ax
    # angle from superior, increasing through anterior -> inferior -> posterior; seam at superior (the shaft)
    ang = np.degrees(np.arctan2(d @ a_ax, d @ s_ax)) % 360.0
    tris = _keep(mesh.triangles, ok)
    span = np.ptp(ang[tris], axis=1)
    tris = tris[span < 90]
    lateral_at_low_x = side == "right"          # LPS x grows to patient's left; right knee: lateral at small x
    lr = ("lateral", "medial") if lateral_at_low_x else ("medial", "lateral")
    return FlatMap("femur", np.stack([u, ang], 1), tris, th, reg if reg is not None else np.zeros(len(P), int),
                   "medio-lateral position (mm)", "angle about the ML axis (deg, from superior)", lr,
                   ("superior/anterior", "posterior"), mesh.arrays.get("subregion"))


def projected_map(mesh, structure: str, side: str) -> Optional[FlatMap]:
    th, reg = mesh.thickness_mm, mesh.region
    if th is None:
        return None
    ok = _drawn(mesh)
    if ok.sum() < 10:
        return None
    P = mesh.points_mm
    if structure == "tibia":
        # seen from superior, radiological: patient's right on the left, anterior up
        uv = np.stack([P[:, 0], -P[:, 1]], 1)
        lr = ("lateral", "medial") if side == "right" else ("medial", "lateral")
        bt, xl, yl = ("posterior", "anterior"), "x (mm, patient right \u2192 left)", "anterior (mm)"
    else:
        # patella seen from posterior (articular face): patient's left on the left
        uv = np.stack([-P[:, 0], P[:, 2]], 1)
        lr = ("medial", "lateral") if side == "right" else ("lateral", "medial")
        bt, xl, yl = ("inferior", "superior"), "x (mm, patient left \u2192 right)", "superior (mm)"
    tris = _keep(mesh.triangles, ok)
    return FlatMap(structure, uv, tris, th, reg if reg is not None else np.zeros(len(P), int), xl, yl, lr, bt,
                   mesh.arrays.get("subregion"))


def code_name(code: int) -> str:
    """Chondrometrics name of a region or subregion code."""
    from ..morphometry.chondrometrics import SUBREGION_BY_CODE

    s = SUBREGION_BY_CODE.get(int(code))
    if s is not None:
        return s.name
    r = L.REGION_BY_CODE.get(int(code))
    return r.chondrometrics if r else str(code)


def _subdivided(fm: FlatMap) -> np.ndarray:
    """Vertex mask of the Chondrometrics subregions (subregion code differs from the region code)."""
    from ..morphometry.chondrometrics import SUBREGION_BY_CODE

    if fm.subregion is None or len(fm.subregion) != len(fm.region):
        return np.zeros(len(fm.region), dtype=bool)
    return np.isin(fm.subregion, list(SUBREGION_BY_CODE))


def draw_map(ax, fm: FlatMap, vmin: float, vmax: float, cmap: str = "viridis"):
    """Thickness (Gouraud-shaded triangles) with region boundaries and Chondrometrics labels."""
    import matplotlib.tri as mtri

    th = np.nan_to_num(fm.thickness_mm, nan=0.0)
    tri = mtri.Triangulation(fm.uv[:, 0], fm.uv[:, 1], fm.triangles)
    mappable = ax.tripcolor(tri, th, cmap=cmap, vmin=vmin, vmax=vmax, shading="gouraud", rasterized=True)
    codes = [int(c) for c in np.unique(fm.region[fm.triangles]) if c]
    if len(codes) > 1:
        for c in codes:
            ind = (fm.region == c).astype(float)
            try:
                ax.tricontour(tri, ind, levels=[0.5], colors="k", linewidths=0.9)
            except (ValueError, RuntimeError):
                pass
    sub = _subdivided(fm)
    subcodes = [int(c) for c in np.unique(fm.subregion[fm.triangles]) if c] if sub.any() else []
    for c in subcodes:
        if not np.any(sub & (fm.subregion == c)):
            continue
        ind = (fm.subregion == c).astype(float)
        try:
            ax.tricontour(tri, ind, levels=[0.5], colors="w", linewidths=0.8, linestyles="--")
        except (ValueError, RuntimeError):
            pass
    labels = [(c, fm.region) for c in codes if not np.any(sub & (fm.region == c))] + \
             [(c, fm.subregion) for c in subcodes if np.any(sub & (fm.subregion == c))]
    for c, arr in labels:
        sel = np.unique(fm.triangles[np.all(arr[fm.triangles] == c, axis=1)])
        if len(sel) < 5:
            continue
        ax.text(*np.median(fm.uv[sel], axis=0), code_name(c), ha="center", va="center",
                fontsize=7 if arr is fm.subregion else 8, fontweight="bold", color="w",
                bbox=dict(boxstyle="round,pad=0.15", fc="k", alpha=0.45, lw=0))
    ax.set_aspect("equal" if fm.structure != "femur" else "auto")
    ax.set_xlabel(fm.xlabel + "   [%s \u2190 \u2192 %s]" % fm.left_right, fontsize=8)
    ax.set_ylabel(fm.ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if fm.structure == "femur":
        ax.invert_yaxis()   # trochlea at the top, posterior condyles at the bottom
    if len(fm.triangles):
        used = np.unique(fm.triangles)
        lo, hi = fm.uv[used].min(0), fm.uv[used].max(0)
        pad = (hi - lo) * 0.04 + 1e-6
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        if fm.structure == "femur":
            ax.set_ylim(hi[1] + pad[1], lo[1] - pad[1])
        else:
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    return mappable
