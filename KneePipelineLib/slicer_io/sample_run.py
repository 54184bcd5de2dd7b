"""A small, complete run folder written with the standard library only (no pipeline, no SimpleITK), for the
module's offline self-test and for tests: a 3-tissue label map and its sub-region map (NRRD, oblique LPS
geometry), a femur mesh with a ``thickness_mm`` array (legacy VTK), results.json / results.csv and the
manifest -- the same contract a real run follows, at a few kB.
"""
import json
import math
import os
import struct
from typing import List, Tuple

from .. import labels as L
from ..manifest import Manifest, OutputEntry

SHAPE_KJI = (12, 16, 20)                    # slices, rows, columns
SPACING_MM = (0.8, 0.6, 1.5)                # i, j, k
ORIGIN_LPS = (10.0, -20.0, 5.0)
ANGLE_DEG = 20.0                             # rotation about the superior axis


def _direction() -> List[Tuple[float, float, float]]:
    c, s = math.cos(math.radians(ANGLE_DEG)), math.sin(math.radians(ANGLE_DEG))
    return [(c, s, 0.0), (-s, c, 0.0), (0.0, 0.0, 1.0)]   # columns of the direction matrix (i, j, k axes)


def voxel_to_lps(i: float, j: float, k: float) -> Tuple[float, float, float]:
    d = _direction()
    v = (i * SPACING_MM[0], j * SPACING_MM[1], k * SPACING_MM[2])
    return tuple(ORIGIN_LPS[r] + sum(d[a][r] * v[a] for a in range(3)) for r in range(3))  # type: ignore


def tissue_value(i: int, j: int, k: int) -> int:
    """Femur above, its cartilage in one layer, tibia below (along j)."""
    if not (3 <= i < 17 and 2 <= k < 10):
        return 0
    if 9 <= j < 14:
        return L.FEMUR
    if j == 8:
        return L.FEMORAL_CARTILAGE
    if 2 <= j < 6:
        return L.TISSUE_CODES["tibia"]
    return 0


def _write_nrrd(path: str, values: List[int]) -> None:
    d = _direction()
    dirs = " ".join("(%r,%r,%r)" % tuple(d[a][r] * SPACING_MM[a] for r in range(3)) for a in range(3))
    nk, nj, ni = SHAPE_KJI
    header = ("NRRD0004\ntype: unsigned short\ndimension: 3\nspace: left-posterior-superior\n"
              "sizes: %d %d %d\nspace directions: %s\nkinds: domain domain domain\nendian: little\n"
              "encoding: raw\nspace origin: (%r,%r,%r)\n\n" % ((ni, nj, nk, dirs) + ORIGIN_LPS))
    with open(path, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(struct.pack("<%dH" % len(values), *values))


def _write_box_mesh(path: str) -> int:
    """The femur block's outer surface (8 corners, 6 quads) in LPS, thickness 0.5..4.0 mm over the points."""
    corners = [(i, j, k) for k in (2, 10) for j in (9, 14) for i in (3, 17)]
    points = [voxel_to_lps(*c) for c in corners]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    lines = ["# vtk DataFile Version 4.2", "KneePipeline sample femur (LPS)", "ASCII", "DATASET POLYDATA",
             "POINTS %d double" % len(points)]
    lines += ["%r %r %r" % p for p in points]
    lines += ["POLYGONS %d %d" % (len(quads), 5 * len(quads))] + ["4 %d %d %d %d" % q for q in quads]
    lines += ["POINT_DATA %d" % len(points), "SCALARS thickness_mm double 1", "LOOKUP_TABLE default"]
    lines += ["%r" % (0.5 + 3.5 * n / (len(points) - 1)) for n in range(len(points))]
    with open(path, "w", encoding="ascii") as fh:
        fh.write("\n".join(lines) + "\n")
    return len(points)


def write_sample_run(folder: str, side: str = "right") -> str:
    """Write the run folder (created; must not hold a run yet) and return it."""
    os.makedirs(os.path.join(folder, "meshes"), exist_ok=True)
    nk, nj, ni = SHAPE_KJI
    tissues = [tissue_value(i, j, k) for k in range(nk) for j in range(nj) for i in range(ni)]
    region = next(r for r in L.REGIONS if r.tissue == L.FEMORAL_CARTILAGE)
    regions = [region.code if v == L.FEMORAL_CARTILAGE else (v if v in (L.FEMUR,) else 0) for v in tissues]
    _write_nrrd(os.path.join(folder, "labels.nrrd"), tissues)
    _write_nrrd(os.path.join(folder, "regions.nrrd"), regions)
    _write_box_mesh(os.path.join(folder, "meshes", "femur.vtk"))
    rows = [{"name": r.name, "code": r.code, "display": r.display, "thickness_mean_mm": 1.0 + 0.1 * n,
             "thickness_std_mm": 0.2} for n, r in enumerate(L.REGIONS)]
    results = {"schema": "kneepipeline-results/1", "laterality": {"side": side, "evidence": "sample", "confidence": 1.0},
               "regions": rows}
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh)
    with open(os.path.join(folder, "results.csv"), "w", encoding="utf-8") as fh:
        fh.write("laterality,%s_thickness_mean_mm\n%s,1.0\n" % (rows[0]["name"], side))
    m = Manifest(status="complete", command="sample_run")
    m.add(OutputEntry("labels.nrrd", "labelmap", coordinate_system="LPS", labels={str(k): v for k, v in L.TISSUES.items()}))
    m.add(OutputEntry("regions.nrrd", "labelmap", structure="regions", coordinate_system="LPS",
                      labels={str(k): v for k, v in L.region_label_names().items()}))
    m.add(OutputEntry("meshes/femur.vtk", "mesh", structure="femur", coordinate_system="LPS", scalars=["thickness_mm"]))
    m.add(OutputEntry("results.json", "json"))
    m.add(OutputEntry("results.csv", "table"))
    m.write(folder)
    return folder
