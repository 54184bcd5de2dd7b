"""Everything a report reads from a run folder, loaded once into a :class:`RunData`."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..manifest import Manifest

log = logging.getLogger("kneepipeline.report")


@dataclass
class MeshData:
    """A surface as numpy arrays (LPS mm); ``arrays`` holds point arrays by name."""

    structure: str
    points_mm: np.ndarray                 # (n, 3)
    triangles: np.ndarray                 # (m, 3) int
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)
    polydata: Any = None                  # the vtkPolyData, for rendering

    @property
    def thickness_mm(self) -> Optional[np.ndarray]:
        return self.arrays.get("thickness_mm")

    @property
    def region(self) -> Optional[np.ndarray]:
        return self.arrays.get("region")


@dataclass
class RunData:
    out_dir: Path
    manifest: Manifest
    results: Dict[str, Any]
    labels: Any = None                    # Volume (canonical labels) or None
    regions: Any = None                   # Volume or None
    image: Any = None                     # Volume or None
    t2: Any = None                        # Volume (ms) or None
    meshes: Dict[str, MeshData] = field(default_factory=dict)
    load_notes: List[str] = field(default_factory=list)

    @property
    def side(self) -> str:
        return str((self.results.get("laterality") or {}).get("side") or "right").lower()


def read_mesh(path: Path, structure: str) -> MeshData:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    if path.suffix.lower() == ".vtp":
        reader = vtk.vtkXMLPolyDataReader()
    else:
        reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    pd = reader.GetOutput()
    if pd is None or pd.GetNumberOfPoints() == 0:
        raise ValueError("mesh %s is empty or unreadable" % path.name)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(pd)
    tri.PassVertsOff()
    tri.PassLinesOff()
    tri.Update()
    pd = tri.GetOutput()
    pts = vtk_to_numpy(pd.GetPoints().GetData()).astype(float)
    conn = vtk_to_numpy(pd.GetPolys().GetConnectivityArray()).astype(np.int64)
    tris = conn.reshape(-1, 3) if conn.size else np.zeros((0, 3), np.int64)
    arrays = {}
    pdat = pd.GetPointData()
    for i in range(pdat.GetNumberOfArrays()):
        a = pdat.GetArray(i)
        if a is None or not a.GetName():
            continue
        arrays[a.GetName()] = vtk_to_numpy(a).copy()
    if "thickness_mm" in arrays:
        arrays["thickness_mm"] = arrays["thickness_mm"].astype(float)
    return MeshData(structure, pts, tris, arrays, pd)


def _read_volume(path: Path):
    from ..io.readers import read_volume

    return read_volume(path, "image")


def load_run(out_dir: Path, manifest: Manifest) -> RunData:
    """Read the run's results, volumes and meshes named in the manifest; missing pieces are noted, not fatal."""
    out_dir = Path(out_dir)
    results: Dict[str, Any] = {}
    rj = out_dir / "results.json"
    if rj.exists():
        results = json.loads(rj.read_text(encoding="utf-8"))
    rd = RunData(out_dir, manifest, results)

    by_path = {o.path: o for o in manifest.outputs}
    from ..io.readers import read_labels

    for name in ("segmentation.nii.gz", "labels.nii.gz"):
        if name in by_path and (out_dir / name).exists():
            rd.labels = read_labels(out_dir / name)
            break
    if "regions.nii.gz" in by_path and (out_dir / "regions.nii.gz").exists():
        rd.regions = read_labels(out_dir / "regions.nii.gz")
    for o in manifest.outputs:
        p = out_dir / o.path
        if o.kind == "volume" and ("t2" in o.path.lower()) and p.exists():
            try:
                rd.t2 = _read_volume(p)
            except Exception as exc:  # noqa: BLE001 - the report shows what it could not read
                rd.load_notes.append("T2 map %s could not be read: %s" % (o.path, exc))
    img = (manifest.options or {}).get("image")
    if img:
        try:
            from ..io.readers import read_image

            im = read_image(img)
            if rd.labels is not None and not im.same_geometry(rd.labels, tol=1e-3):
                rd.load_notes.append("The input image's grid differs from the label map's; it is resampled for display.")
            rd.image = im
        except Exception as exc:  # noqa: BLE001
            rd.load_notes.append("Input image %s not shown (%s); contours are drawn over the label map." % (img, exc))
    for o in manifest.outputs:
        if o.kind != "mesh":
            continue
        p = out_dir / o.path
        structure = o.structure or Path(o.path).name.split(".")[0]
        if not p.exists():
            rd.load_notes.append("Mesh %s listed in the manifest is missing." % o.path)
            continue
        try:
            rd.meshes[structure] = read_mesh(p, structure)
        except Exception as exc:  # noqa: BLE001
            rd.load_notes.append("Mesh %s could not be read: %s" % (o.path, exc))
    return rd
