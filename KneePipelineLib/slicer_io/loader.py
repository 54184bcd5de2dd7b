"""Load a run folder into the scene: every output its manifest lists, in one subject-hierarchy folder
(Qt-free; takes a ``vtkMRMLScene``; Python 3.9). The node types have their own files: volumes.py
(segmentation, label maps, scalar maps), models.py (meshes), tables.py (tables, chart), terminology.py.

Runs in Slicer's Python (or against PyPI's ``slicer-core`` in tests), never in the pipeline process.
"""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..manifest import Manifest, OutputEntry, load_manifest
from .common import (OUTPUT_ATTRIBUTE, RUN_ATTRIBUTE, RUN_INDEX_ATTRIBUTE, LoadError, ensure_logics,  # noqa: F401
                     output_path, stem, subject_hierarchy, tag)
from .models import THICKNESS_RANGE_MM, load_model
from .tables import read_csv_rows, regional_thickness, table_from_rows, thickness_chart
from .volumes import is_tissue_labelmap, load_labelmap_volume, load_scalar_volume, load_segmentation

T2_COLOR_NODE = "vtkMRMLColorTableNodeRainbow"
T2_WINDOW_MS = (0.0, 100.0)


@dataclass
class LoadedRun:
    """What :func:`load_run` put into the scene (node objects) plus the run's headline results."""

    run_dir: str
    name: str
    index: int
    folder_item: int
    manifest: Manifest
    segmentation: Any = None
    regions: Any = None
    volumes: Dict[str, Any] = field(default_factory=dict)        # manifest path -> volume node (T2 ...)
    models: Dict[str, Any] = field(default_factory=dict)         # structure -> model node
    tables: Dict[str, Any] = field(default_factory=dict)         # "results", "regions", "t2"
    chart: Any = None
    series: List[Any] = field(default_factory=list)
    color_nodes: List[Any] = field(default_factory=list)
    results: Dict[str, Any] = field(default_factory=dict)        # results.json
    report_path: Optional[str] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def laterality(self) -> Optional[str]:
        lat = self.results.get("laterality") or {}
        return lat.get("side") if isinstance(lat, dict) else None

    @property
    def bscores(self) -> Dict[str, float]:
        nsm = self.results.get("nsm") or {}
        out = {}
        if isinstance(nsm, dict):
            for key, fit in nsm.items():
                if isinstance(fit, dict) and isinstance(fit.get("bscore"), (int, float)):
                    out[key] = float(fit["bscore"])
        return out

    def all_nodes(self) -> List[Any]:
        nodes = [self.segmentation, self.regions, self.chart] + list(self.volumes.values())
        nodes += list(self.models.values()) + list(self.tables.values()) + list(self.series) + list(self.color_nodes)
        return [n for n in nodes if n is not None]

    def summary_lines(self) -> List[str]:
        """Plain-text summary for the panel."""
        lines = []
        if self.laterality:
            lines.append("Laterality: %s knee" % self.laterality)
        for key, value in sorted(self.bscores.items()):
            lines.append("B-score (%s): %.2f" % (key, value))
        rows, col = regional_thickness(self.results)
        for r in rows:
            v = r.get(col)
            if isinstance(v, (int, float)):
                lines.append("%s: %.2f mm" % (r.get("display") or r.get("name"), v))
        if self.warnings:
            lines.append("Warnings: %d (see log)" % len(self.warnings))
        return lines


# -- small helpers --------------------------------------------------------------------------------
# -- the run --------------------------------------------------------------------------------------
def existing_runs(scene: Any, run_dir: Optional[str] = None) -> List[int]:
    """Subject-hierarchy folder items made by :func:`load_run` (optionally only for ``run_dir``)."""
    sh = subject_hierarchy(scene)
    ids = []
    import vtk

    children = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), children, True)
    for i in range(children.GetNumberOfIds()):
        item = children.GetId(i)
        value = sh.GetItemAttribute(item, RUN_ATTRIBUTE)
        if value and (run_dir is None or os.path.abspath(run_dir) == value):
            ids.append(item)
    return ids


def remove_run(scene: Any, folder_item: int) -> None:
    sh = subject_hierarchy(scene)
    sh.RemoveItem(folder_item, True, True)


def load_run(scene: Any, run_dir: str, name: Optional[str] = None, replace: bool = False,
             create_surfaces: bool = True, allow_incomplete: bool = False,
             thickness_range_mm: Tuple[float, float] = THICKNESS_RANGE_MM) -> LoadedRun:
    """Load everything a run wrote into ``scene``, in one subject-hierarchy folder.

    Loading the same run again makes a new folder ``"<name> (run N)"``; ``replace=True`` first removes the
    folders (and their nodes) of earlier loads of the same run folder.
    """
    from .. import labels as L

    run_dir = os.path.abspath(run_dir)
    try:
        manifest = load_manifest(run_dir)
    except OSError:
        raise LoadError("No manifest.json in %s: not a KneePipeline run folder." % run_dir)
    if manifest.status != "complete" and not allow_incomplete:
        from ..manifest import run_liveness

        if manifest.status == "running":   # a live run, or one killed without a chance to say so
            raise LoadError("The run in %s is not complete: %s." % (run_dir, run_liveness(run_dir, manifest)[1]))
        raise LoadError("The run in %s is %s, not complete." % (run_dir, manifest.status))
    ensure_logics(scene)
    sh = subject_hierarchy(scene)
    if replace:
        for item in existing_runs(scene, run_dir):
            remove_run(scene, item)
    index = 1 + max([int(sh.GetItemAttribute(i, RUN_INDEX_ATTRIBUTE) or 0) for i in existing_runs(scene)] or [0])
    name = name or os.path.basename(run_dir.rstrip(os.sep)) or "KneePipeline"
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "%s (run %d)" % (name, index))
    sh.SetItemAttribute(folder, RUN_ATTRIBUTE, run_dir)
    sh.SetItemAttribute(folder, RUN_INDEX_ATTRIBUTE, str(index))
    loaded = LoadedRun(run_dir=run_dir, name=name, index=index, folder_item=folder, manifest=manifest,
                       warnings=list(manifest.warnings))
    prefix = "%s #%d" % (name, index)

    def place(node: Any, entry: Optional[OutputEntry] = None, sub: Optional[int] = None) -> Any:
        tag(node, run_dir, entry)
        item = sh.GetItemByDataNode(node)
        parent = sub or folder
        if not item:
            sh.CreateItem(parent, node)
        else:
            sh.SetItemParent(item, parent)
        return node

    def missing(entry: OutputEntry) -> bool:
        if not os.path.isfile(output_path(run_dir, entry)):
            loaded.warnings.append("Missing output file %s." % entry.path)
            return True
        return False

    for entry in manifest.find(kind="json"):
        if stem(entry.path) == "results" and not missing(entry):
            with open(output_path(run_dir, entry), encoding="utf-8") as fh:
                loaded.results = json.load(fh)

    for entry in manifest.find(kind="labelmap"):
        if missing(entry):
            continue
        labels = {int(k): v for k, v in (entry.labels or {}).items()}
        if is_tissue_labelmap(entry) and loaded.segmentation is None:
            loaded.segmentation = place(load_segmentation(scene, output_path(run_dir, entry), labels, prefix,
                                                          create_surfaces=create_surfaces,
                                                          laterality=loaded.laterality), entry)
        else:
            labels = labels or L.region_label_names()
            node, colors = load_labelmap_volume(scene, output_path(run_dir, entry), labels, prefix + " " + stem(entry.path))
            place(node, entry)
            place(colors)
            loaded.color_nodes.append(colors)
            if loaded.regions is None and (entry.structure == "regions" or stem(entry.path).startswith("regions")):
                loaded.regions = node
            else:
                loaded.volumes[entry.path] = node

    for entry in manifest.find(kind="volume"):
        if missing(entry):
            continue
        is_t2 = "t2" in stem(entry.path).lower() or "t2" in (entry.units or {})
        node = load_scalar_volume(scene, output_path(run_dir, entry), prefix + " " + stem(entry.path),
                                  window=T2_WINDOW_MS if is_t2 else None,
                                  color_node_id=T2_COLOR_NODE if is_t2 else None)
        loaded.volumes[entry.path] = place(node, entry)

    shape_folder = None
    for entry in manifest.find(kind="mesh"):
        if missing(entry):
            continue
        structure = entry.structure or stem(entry.path)
        is_nsm = structure.startswith("nsm")
        sub = None
        if is_nsm:
            if shape_folder is None:
                shape_folder = sh.CreateFolderItem(folder, "Shape model")
            sub = shape_folder
        color = L.COLORS.get(structure) or ((180, 200, 240) if is_nsm else None)
        node = load_model(scene, output_path(run_dir, entry), prefix + " " + structure, entry.coordinate_system,
                          entry.scalars, thickness_range_mm, color=color)
        loaded.models[structure] = place(node, entry, sub)

    for entry in manifest.find(kind="table"):
        if missing(entry) or not entry.path.endswith(".csv"):
            continue
        rows = read_csv_rows(output_path(run_dir, entry))
        key = "results" if stem(entry.path) == "results" else stem(entry.path)
        loaded.tables[key] = place(table_from_rows(scene, prefix + " " + stem(entry.path), rows), entry)
    for entry in manifest.find(kind="report"):
        if entry.path.endswith(".html") and loaded.report_path is None and os.path.isfile(output_path(run_dir, entry)):
            loaded.report_path = output_path(run_dir, entry)

    rows, col = regional_thickness(loaded.results)
    if rows:
        loaded.tables["regions"] = place(table_from_rows(scene, prefix + " regional thickness", rows,
                                                         units=loaded.results.get("chondrometrics_units")))
        if col is not None:
            chart, series = thickness_chart(scene, loaded.tables["regions"], col, prefix)
            loaded.chart = place(chart)
            loaded.series.append(place(series))
        else:
            loaded.warnings.append("results.json has no mean-thickness column; no chart made.")
    t2_rows = [r for r in (loaded.results.get("t2") or []) if isinstance(r, dict)]
    if t2_rows:
        loaded.tables["t2"] = place(table_from_rows(scene, prefix + " regional T2", t2_rows))
    return loaded
