"""Offscreen surface renders from standard anatomical views (LPS), VTK first, matplotlib as fallback.

VTK's pip wheel (9.4+) renders offscreen through EGL/OSMesa with no display. If VTK cannot render
(no OpenGL at all) or returns a blank frame, a matplotlib Poly3DCollection render is used instead and the
report says so. Set KNEEPIPELINE_RENDERER=matplotlib to force the fallback.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger("kneepipeline.report")

# view name -> (direction FROM the object TO the camera in LPS, view-up in LPS)
_A, _P, _S = np.array([0, -1.0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 1.0])
_RIGHT, _LEFT = np.array([-1.0, 0, 0]), np.array([1.0, 0, 0])


def view_vectors(view: str, side: str) -> Tuple[np.ndarray, np.ndarray]:
    """Camera direction and view-up for a named anatomical view; medial/lateral depend on the knee's side."""
    lateral = _RIGHT if side == "right" else _LEFT
    medial = -lateral
    table = {
        "anterior": (_A, _S), "posterior": (_P, _S), "medial": (medial, _S), "lateral": (lateral, _S),
        "superior": (_S, _A), "inferior": (-_S, _A),
    }
    return table[view]


def border_segments(points: np.ndarray, triangles: np.ndarray, codes: np.ndarray, lift_mm: float = 0.3
                    ) -> np.ndarray:
    """(m, 2, 3) line segments along the borders between vertex codes (through the midpoints of the edges
    whose ends differ), lifted ``lift_mm`` along the face normal so they sit on the surface."""
    t = triangles
    c = codes[t]
    d = np.stack([c[:, 0] != c[:, 1], c[:, 1] != c[:, 2], c[:, 2] != c[:, 0]], 1)
    n_d = d.sum(1)
    P = points[t]
    fn = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 0])
    fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    mids = np.stack([(P[:, 0] + P[:, 1]) / 2, (P[:, 1] + P[:, 2]) / 2, (P[:, 2] + P[:, 0]) / 2], 1) + \
        lift_mm * fn[:, None, :]
    segs = []
    two = np.flatnonzero(n_d == 2)
    if len(two):
        e = np.argsort(~d[two], axis=1, kind="stable")[:, :2]          # the two differing edges
        segs.append(np.stack([mids[two, e[:, 0]], mids[two, e[:, 1]]], 1))
    three = np.flatnonzero(n_d == 3)
    if len(three):
        cen = P[three].mean(1) + lift_mm * fn[three]
        for k in range(3):
            segs.append(np.stack([cen, mids[three, k]], 1))
    return np.concatenate(segs) if segs else np.zeros((0, 2, 3))


def code_labels(points: np.ndarray, triangles: np.ndarray, codes: np.ndarray, lift_mm: float = 1.5,
                min_vertices: int = 10) -> List[Tuple[np.ndarray, np.ndarray, int]]:
    """(position, outward normal, code) per code: the code's vertex nearest its centroid, lifted outward."""
    from ..morphometry.mesh import vertex_normals

    normals = vertex_normals(points, triangles)
    out = []
    for c in np.unique(codes):
        if c <= 0:
            continue
        idx = np.flatnonzero(codes == c)
        if len(idx) < min_vertices:
            continue
        v = idx[np.argmin(np.linalg.norm(points[idx] - points[idx].mean(0), axis=1))]
        out.append((points[v] + lift_mm * normals[v], normals[v], int(c)))
    return out


def thickness_lut(vmin: float, vmax: float, nan_rgb=(0.85, 0.82, 0.75), cmap: str = "viridis"):
    import vtk
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    lut = vtk.vtkLookupTable()
    lut.SetNumberOfTableValues(256)
    lut.SetRange(vmin, vmax)
    for i in range(256):
        r, g, b, _ = cm(i / 255.0)
        lut.SetTableValue(i, r, g, b, 1.0)
    lut.SetNanColor(nan_rgb[0], nan_rgb[1], nan_rgb[2], 1.0)
    lut.SetUseBelowRangeColor(False)
    lut.SetUseAboveRangeColor(False)
    lut.Build()
    return lut


class Renderer:
    """Reusable offscreen window; ``render(surfaces, view)`` returns an RGB uint8 image."""

    def __init__(self, size: int = 400):
        self.size = size
        self.backend = "vtk"
        self.note = ""
        forced = os.environ.get("KNEEPIPELINE_RENDERER", "").lower()
        self._win = None
        if forced == "matplotlib":
            self.backend = "matplotlib"
            self.note = "matplotlib fallback forced by KNEEPIPELINE_RENDERER"
            return
        try:
            import sys

            if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
                    and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ:
                # no X server: go straight to EGL instead of failing over from X (and its warning)
                os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
            import vtk

            win = vtk.vtkRenderWindow()
            win.SetOffScreenRendering(1)
            win.SetSize(size, size)
            win.SetMultiSamples(0)
            ren = vtk.vtkRenderer()
            ren.SetBackground(1, 1, 1)
            win.AddRenderer(ren)
            self._win, self._ren = win, ren
            # probe: a blank frame means no working OpenGL
            probe = vtk.vtkSphereSource()
            m = vtk.vtkPolyDataMapper()
            m.SetInputConnection(probe.GetOutputPort())
            a = vtk.vtkActor()
            a.SetMapper(m)
            a.GetProperty().SetColor(1, 0, 0)
            ren.AddActor(a)
            ren.ResetCamera()
            img = self._grab()
            ren.RemoveAllViewProps()
            if img.std() < 1.0:
                raise RuntimeError("VTK offscreen render came back blank")
            self.note = "VTK offscreen (%s)" % type(win).__name__
        except Exception as exc:  # noqa: BLE001 - any OpenGL failure means: use the fallback
            log.warning("VTK offscreen rendering unavailable (%s); using matplotlib", exc)
            self.backend = "matplotlib"
            self.note = "matplotlib fallback (VTK offscreen failed: %s)" % exc
            self._win = None

    def _grab(self) -> np.ndarray:
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        self._win.Render()
        f = vtk.vtkWindowToImageFilter()
        f.SetInput(self._win)
        f.SetInputBufferTypeToRGB()
        f.ReadFrontBufferOff()
        f.Update()
        im = f.GetOutput()
        w, h, _ = im.GetDimensions()
        arr = vtk_to_numpy(im.GetPointData().GetScalars()).reshape(h, w, -1)[::-1, :, :3]
        return np.ascontiguousarray(arr)

    def render(self, surfaces: Sequence[dict], view: str, side: str) -> np.ndarray:
        """``surfaces``: dicts with mesh (MeshData), scalars (array or None), vmin, vmax, cmap, color, opacity,
        and optionally ``codes`` (per-vertex region / subregion codes: borders drawn, codes named)."""
        if self.backend == "vtk":
            return self._render_vtk(surfaces, view, side)
        return render_matplotlib(surfaces, view, side, self.size)

    def _render_vtk(self, surfaces, view, side) -> np.ndarray:
        import vtk
        from vtk.util.numpy_support import numpy_to_vtk

        ren = self._ren
        ren.RemoveAllViewProps()
        for s in surfaces:
            md = s["mesh"]
            pd = vtk.vtkPolyData()
            pd.ShallowCopy(md.polydata)
            mapper = vtk.vtkPolyDataMapper()
            mapper.SetInputData(pd)
            sc = s.get("scalars")
            if sc is not None:
                arr = numpy_to_vtk(np.asarray(sc, dtype=np.float64), deep=1)
                arr.SetName("_report_scalars")
                pd.GetPointData().AddArray(arr)
                pd.GetPointData().SetActiveScalars("_report_scalars")
                mapper.SetLookupTable(thickness_lut(s["vmin"], s["vmax"], cmap=s.get("cmap", "viridis")))
                mapper.SetScalarModeToUsePointFieldData()
                mapper.SelectColorArray("_report_scalars")
                mapper.SetScalarRange(s["vmin"], s["vmax"])
                mapper.UseLookupTableScalarRangeOn()
                mapper.ScalarVisibilityOn()
                mapper.InterpolateScalarsBeforeMappingOn()
            else:
                mapper.ScalarVisibilityOff()
            actor = vtk.vtkActor()
            actor.SetMapper(mapper)
            col = s.get("color", (0.85, 0.82, 0.75))
            actor.GetProperty().SetColor(*col)
            actor.GetProperty().SetOpacity(float(s.get("opacity", 1.0)))
            actor.GetProperty().SetAmbient(0.25)
            actor.GetProperty().SetDiffuse(0.8)
            ren.AddActor(actor)
        direction, up = view_vectors(view, side)
        for s in surfaces:
            if s.get("codes") is not None:
                self._add_borders_vtk(ren, s["mesh"], np.asarray(s["codes"]), direction)
        bounds = np.array(ren.ComputeVisiblePropBounds()).reshape(3, 2)
        centre = bounds.mean(1)
        radius = float(np.linalg.norm(bounds[:, 1] - bounds[:, 0]) / 2)
        cam = ren.GetActiveCamera()
        cam.SetFocalPoint(*centre)
        cam.SetPosition(*(centre + direction * radius * 4))
        cam.SetViewUp(*up)
        cam.ParallelProjectionOn()
        ren.ResetCamera()
        cam.SetParallelScale(radius * 0.85)
        ren.ResetCameraClippingRange()
        return self._grab()


    @staticmethod
    def _add_borders_vtk(ren, md, codes: np.ndarray, direction: np.ndarray) -> None:
        import vtk
        from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray

        from .maps2d import code_name

        seg = border_segments(md.points_mm, md.triangles, codes)
        if len(seg):
            pd = vtk.vtkPolyData()
            pts = vtk.vtkPoints()
            pts.SetData(numpy_to_vtk(np.ascontiguousarray(seg.reshape(-1, 3)), deep=True))
            pd.SetPoints(pts)
            cells = vtk.vtkCellArray()
            cells.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 2 * len(seg) + 1, 2, dtype=np.int64), deep=True),
                          numpy_to_vtkIdTypeArray(np.arange(2 * len(seg), dtype=np.int64), deep=True))
            pd.SetLines(cells)
            m = vtk.vtkPolyDataMapper()
            m.SetInputData(pd)
            a = vtk.vtkActor()
            a.SetMapper(m)
            a.GetProperty().SetColor(0.05, 0.05, 0.05)
            a.GetProperty().SetLineWidth(2.0)
            a.GetProperty().LightingOff()
            ren.AddActor(a)
        for pos, nrm, c in code_labels(md.points_mm, md.triangles, codes):
            if nrm @ direction < 0.3:       # named only where the surface faces the camera
                continue
            t = vtk.vtkBillboardTextActor3D()
            t.SetInput(code_name(c))
            t.SetPosition(*pos)
            tp = t.GetTextProperty()
            tp.SetFontSize(13)
            tp.BoldOn()
            tp.SetColor(1, 1, 1)
            tp.SetBackgroundColor(0, 0, 0)
            tp.SetBackgroundOpacity(0.55)
            tp.SetJustificationToCentered()
            tp.SetVerticalJustificationToCentered()
            ren.AddActor(t)


def render_matplotlib(surfaces, view: str, side: str, size: int = 400) -> np.ndarray:
    """Fallback: orthographic projection onto the view plane, painter-sorted triangles with Lambert shading."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    direction, up = view_vectors(view, side)
    right = np.cross(up, direction)   # screen x in LPS for a camera looking along -direction
    fig = plt.figure(figsize=(size / 100, size / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    allp = []
    for s in surfaces:
        md = s["mesh"]
        P = md.points_mm
        T = md.triangles
        xy = np.stack([P @ right, P @ up], 1)
        depth = (P @ direction)[T].mean(1)
        tri_n = np.cross(P[T[:, 1]] - P[T[:, 0]], P[T[:, 2]] - P[T[:, 0]])
        tri_n /= np.maximum(np.linalg.norm(tri_n, axis=1, keepdims=True), 1e-12)
        shade = 0.35 + 0.65 * np.abs(tri_n @ direction)
        sc = s.get("scalars")
        if sc is not None:
            cm = matplotlib.colormaps[s.get("cmap", "viridis")]
            val = np.asarray(sc, float)[T].mean(1)   # NaN if any corner has no cartilage
            norm = (val - s["vmin"]) / max(s["vmax"] - s["vmin"], 1e-9)
            rgb = cm(np.clip(np.nan_to_num(norm), 0, 1))[:, :3]
            rgb[~np.isfinite(val)] = s.get("color", (0.85, 0.82, 0.75))
        else:
            rgb = np.tile(np.array(s.get("color", (0.85, 0.82, 0.75))), (len(T), 1))
        rgb = rgb * shade[:, None]
        order = np.argsort(depth)
        pc = PolyCollection(xy[T[order]], facecolors=np.clip(rgb[order], 0, 1), edgecolors="none",
                            alpha=float(s.get("opacity", 1.0)))
        ax.add_collection(pc)
        allp.append(xy)
        if s.get("codes") is not None:
            from matplotlib.collections import LineCollection

            from .maps2d import code_name

            codes = np.asarray(s["codes"])
            front = tri_n @ direction > 0
            seg = border_segments(P, T[front], codes)
            if len(seg):
                ax.add_collection(LineCollection(np.stack([seg @ right, seg @ up], -1), colors="k", linewidths=1.2,
                                                 zorder=5))
            for pos, nrm, c in code_labels(P, T, codes):
                if nrm @ direction >= 0.3:
                    ax.text(pos @ right, pos @ up, code_name(c), fontsize=7, fontweight="bold", color="w",
                            ha="center", va="center", zorder=6,
                            bbox=dict(boxstyle="round,pad=0.15", fc="k", alpha=0.55, lw=0))
    xy = np.concatenate(allp)
    c = (xy.min(0) + xy.max(0)) / 2
    r = (xy.max(0) - xy.min(0)).max() / 2 * 1.08
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_aspect("equal")
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    return img
