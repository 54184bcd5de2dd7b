"""Build Slicer scene content from a run folder's manifest (Qt-free; takes a ``vtkMRMLScene``).

Python 3.9-safe. Imports ``slicer`` and ``vtk`` inside functions: this file runs in Slicer's Python (or
against PyPI's ``slicer-core`` in tests), never in the pipeline process.

LPS -> RAS happens exactly once, here: volumes are read by Slicer's archetype storage node (which converts
the file's LPS geometry to RAS), meshes by a model storage node told the file is in LPS.
"""
import csv
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..manifest import Manifest, OutputEntry, load_manifest

RUN_ATTRIBUTE = "KneePipeline.RunDir"
OUTPUT_ATTRIBUTE = "KneePipeline.Output"
RUN_INDEX_ATTRIBUTE = "KneePipeline.RunIndex"
THICKNESS_RANGE_MM = (0.0, 4.0)
THICKNESS_COLOR_NODE = "vtkMRMLColorTableNodeRainbow"      # built in; red (thin) ... purple-blue (thick)
T2_COLOR_NODE = "vtkMRMLColorTableNodeRainbow"
T2_WINDOW_MS = (0.0, 100.0)

# DICOM / SNOMED-CT codes for structures Slicer's general anatomy terminology knows.
_ANATOMY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_SNOMED = {
    "femur": ("71341001", "Bone structure of femur"),
    "tibia": ("12611008", "Bone structure of tibia"),
    "patella": ("64234005", "Patella"),
    "fibula": ("87342007", "Bone structure of fibula"),
}


class LoadError(Exception):
    """The run folder cannot be loaded (missing or unfinished manifest, missing file)."""


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

def _read_into(scene, node, storage, path) -> None:
    """Read ``path`` through ``storage`` into ``node``; on failure remove both and raise LoadError."""
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise LoadError("Could not read %s." % path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()

def _slicer():
    import slicer

    return slicer


def _abs(run_dir: str, entry: OutputEntry) -> str:
    return os.path.join(run_dir, *entry.path.split("/"))


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".nrrd", ".vtp", ".vtk", ".csv", ".json", ".html"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


def _tag(node: Any, run_dir: str, entry: Optional[OutputEntry]) -> Any:
    node.SetAttribute(RUN_ATTRIBUTE, os.path.abspath(run_dir))
    if entry is not None:
        node.SetAttribute(OUTPUT_ATTRIBUTE, entry.path)
    return node


def ensure_logics(scene: Any) -> None:
    """Outside the Slicer application (slicer-core), create the module logics Slicer would have set on the
    scene. The segmentations logic must exist BEFORE segmentation nodes, or closed surfaces silently fail."""
    slicer = _slicer()
    if getattr(slicer, "app", None) is not None:
        return  # the application already set every module logic on its scene
    key = scene.GetAddressAsString("") if hasattr(scene, "GetAddressAsString") else str(id(scene))
    if key in _LOGICS:
        return
    seg = slicer.vtkSlicerSegmentationsModuleLogic()
    seg.SetMRMLScene(scene)
    sh = slicer.vtkSlicerSubjectHierarchyModuleLogic()
    sh.SetMRMLScene(scene)
    for cls in ("vtkMRMLColorLegendDisplayNode",):   # registered by the Colors module in the application
        if not scene.IsNodeClassRegistered(cls) and hasattr(slicer, cls):
            scene.RegisterNodeClass(getattr(slicer, cls)())
    _LOGICS[key] = (scene, seg, sh)


_LOGICS: Dict[str, Tuple[Any, ...]] = {}


def _sh(scene: Any) -> Any:
    slicer = _slicer()
    return slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)


def _builtin_color(scene: Any, node_id: str) -> str:
    """ID of a built-in colour table; created in the scene if this scene has none (slicer-core)."""
    slicer = _slicer()
    if scene.GetNodeByID(node_id) is not None:
        return node_id
    logic = slicer.vtkMRMLColorLogic()
    logic.SetMRMLScene(scene)
    logic.AddDefaultColorNodes()
    logic.SetMRMLScene(None)
    if scene.GetNodeByID(node_id) is None:  # pragma: no cover - defensive
        raise LoadError("Colour table %s is not available." % node_id)
    return node_id


def _read_volume(scene: Any, path: str, name: str, labelmap: bool) -> Any:
    slicer = _slicer()
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    storage.SetCenterImage(False)
    storage.SetSingleFile(True)
    _read_into(scene, node, storage, path)
    return node


def _label_color_table(scene: Any, name: str, labels: Dict[int, str], colors: Dict[str, tuple]) -> Any:
    slicer = _slicer()
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(max(labels) + 1 if labels else 1)
    for value in range(table.GetNumberOfColors()):
        table.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
    for value, label in labels.items():
        r, g, b = colors.get(label, _fallback_color(value))
        table.SetColor(int(value), label, r / 255.0, g / 255.0, b / 255.0, 1.0)
    return table


def _fallback_color(value: int) -> tuple:
    # deterministic, well separated hues for values without a named colour
    import colorsys

    h = (value * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.55, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


def region_colors(names: Dict[int, str]) -> Dict[str, tuple]:
    """Sub-region colours: one hue per region; deep layers darker, superficial lighter."""
    from .. import labels as L

    out: Dict[str, tuple] = {}
    for value, label in names.items():
        base_code = value % 100
        base = L.TISSUES.get(base_code) if base_code in L.TISSUES and base_code not in L.REGION_BY_CODE else None
        if base is not None and value < 100:
            out[label] = L.COLORS.get(base, _fallback_color(value))
            continue
        r, g, b = _fallback_color(base_code)
        scale = 1.0 if value < 100 else (0.7 if value < 200 else 1.25)
        out[label] = tuple(int(min(255, c * scale)) for c in (r, g, b))
    return out


def terminology_entry(structure: str) -> Optional[str]:
    code = _SNOMED.get(structure)
    if code is None:
        return None
    return "%s~SCT^123037004^Anatomical Structure~SCT^%s^%s~^^~Anatomic codes - DICOM master list~^^~^^" % (
        _ANATOMY_CONTEXT, code[0], code[1])


# -- loaders per kind -----------------------------------------------------------------------------
def _is_tissue_labelmap(entry: OutputEntry) -> bool:
    from .. import labels as L

    if entry.structure in ("regions",) or _stem(entry.path).startswith("regions"):
        return False
    names = set((entry.labels or {}).values())
    return bool(names) and names <= set(L.TISSUES.values()) | {"background"}


def load_segmentation(scene: Any, path: str, labels: Dict[int, str], name: str,
                      create_surfaces: bool = True) -> Any:
    """Label map -> segmentation node with named, coloured segments that keep their label values."""
    slicer = _slicer()
    from .. import labels as L

    ensure_logics(scene)
    labelmap = _read_volume(scene, path, name + " labels (import)", labelmap=True)
    colors = _label_color_table(scene, name + " tissue colors", labels, L.COLORS)
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name + " segmentation")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(labelmap)
    ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
    storage = labelmap.GetStorageNode()
    scene.RemoveNode(labelmap)
    if storage is not None:
        scene.RemoveNode(storage)
    scene.RemoveNode(colors)
    if not ok:
        scene.RemoveNode(seg)
        raise LoadError("Could not convert %s to a segmentation." % path)
    segmentation = seg.GetSegmentation()
    for i in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(i)
        value = segment.GetLabelValue()
        label = labels.get(value, "label_%d" % value)
        segment.SetName(label)
        r, g, b = L.COLORS.get(label, _fallback_color(value))
        segment.SetColor(r / 255.0, g / 255.0, b / 255.0)
        term = terminology_entry(label)
        if term:
            segment.SetTag("TerminologyEntry", term)
        segment.SetTag("KneePipeline.LabelValue", str(value))
    if create_surfaces:
        seg.CreateClosedSurfaceRepresentation()
    return seg


def load_labelmap_volume(scene: Any, path: str, labels: Dict[int, str], name: str) -> Tuple[Any, Any]:
    node = _read_volume(scene, path, name, labelmap=True)
    colors = _label_color_table(scene, name + " colors", labels, region_colors(labels))
    node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    return node, colors


def load_scalar_volume(scene: Any, path: str, name: str, window: Optional[Tuple[float, float]] = None,
                       color_node_id: Optional[str] = None) -> Any:
    node = _read_volume(scene, path, name, labelmap=False)
    disp = node.GetDisplayNode()
    if window is not None:
        disp.AutoWindowLevelOff()
        disp.SetWindowLevelMinMax(window[0], window[1])
    if color_node_id:
        disp.SetAndObserveColorNodeID(_builtin_color(scene, color_node_id))
    return node


def load_model(scene: Any, path: str, name: str, coordinate_system: Optional[str] = "LPS",
               scalars: Sequence[str] = (), thickness_range_mm: Tuple[float, float] = THICKNESS_RANGE_MM,
               color: Optional[tuple] = None) -> Any:
    """A mesh file -> model node in RAS; thickness (if present) shown with a fixed range and a legend."""
    slicer = _slicer()
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(path)
    cs = (coordinate_system or "LPS").upper()
    storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemLPS if cs == "LPS"
                                else slicer.vtkMRMLStorageNode.CoordinateSystemRAS)
    _read_into(scene, node, storage, path)
    disp = node.GetDisplayNode()
    if color is not None:
        disp.SetColor(color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)
    poly = node.GetPolyData()
    pd = poly.GetPointData() if poly is not None else None
    if pd is not None and "thickness_mm" in [pd.GetArrayName(i) for i in range(pd.GetNumberOfArrays())]:
        import vtk

        disp.SetActiveScalar("thickness_mm", vtk.vtkAssignAttribute.POINT_DATA)
        disp.SetAndObserveColorNodeID(_builtin_color(scene, THICKNESS_COLOR_NODE))
        disp.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
        disp.SetScalarRange(float(thickness_range_mm[0]), float(thickness_range_mm[1]))
        disp.SetScalarVisibility(True)
        try:
            legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
            if legend is not None:
                legend.SetTitleText("Cartilage thickness (mm)")
                legend.SetLabelFormat("%.1f")
        except (AttributeError, TypeError):  # pragma: no cover - older Slicer
            pass
    return node


def _numeric(values: Sequence[Any]) -> bool:
    seen = False
    for v in values:
        if v is None or v == "":
            continue
        if isinstance(v, bool):
            return False
        if isinstance(v, (int, float)):
            seen = True
            continue
        try:
            float(v)
            seen = True
        except (TypeError, ValueError):
            return False
    return seen


def table_from_rows(scene: Any, name: str, rows: List[Dict[str, Any]], columns: Optional[List[str]] = None,
                    units: Optional[Dict[str, str]] = None) -> Any:
    """A table node whose numeric columns are vtkDoubleArray (not text); others are strings."""
    import vtk

    if columns is None:
        columns = []
        for r in rows:
            for k, v in r.items():
                if k not in columns and not isinstance(v, (dict, list)):
                    columns.append(k)
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = node.GetTable()
    for col in columns:
        values = [r.get(col) for r in rows]
        if _numeric(values):
            arr = vtk.vtkDoubleArray()
            arr.SetName(col)
            for v in values:
                arr.InsertNextValue(float("nan") if v is None or v == "" else float(v))
        else:
            arr = vtk.vtkStringArray()
            arr.SetName(col)
            for v in values:
                arr.InsertNextValue("" if v is None else str(v))
        table.AddColumn(arr)
    for col in columns:
        unit = (units or {}).get(col)
        if unit is None and col.endswith("_mm"):
            unit = "mm"
        elif unit is None and col.endswith("_ms"):
            unit = "ms"
        if unit:
            node.SetColumnUnitLabel(col, unit)
    node.Modified()
    return node


def regional_thickness(results: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], Optional[str]]:
    """(region rows, the mean-thickness column name) from results.json."""
    rows = [r for r in (results.get("regions") or []) if isinstance(r, dict)]
    col = None
    if rows:
        keys = [k for k in rows[0] if isinstance(rows[0].get(k), (int, float)) or rows[0].get(k) is None]
        cands = [k for k in keys if "thickness" in k and "mean" in k and "std" not in k]
        cands.sort(key=lambda k: (not k.endswith("_mm"), len(k)))
        col = cands[0] if cands else None
    return rows, col


def _read_csv_rows(path: str) -> List[Dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def thickness_chart(scene: Any, table_node: Any, column: str, name: str) -> Tuple[Any, Any]:
    slicer = _slicer()
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name + " mean thickness")
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeBar)
    series.SetLabelColumnName("display" if table_node.GetTable().GetColumnByName("display") else "name")
    if table_node.GetTable().GetColumnByName("code") is not None:
        series.SetXColumnName("code")
    series.SetYColumnName(column)
    series.SetColor(0.85, 0.45, 0.2)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name + " regional thickness")
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle("Regional cartilage thickness")
    chart.SetXAxisTitle("Region")
    chart.SetYAxisTitle("Mean thickness (mm)")
    chart.SetLegendVisibility(False)
    return chart, series


# -- the run --------------------------------------------------------------------------------------
def existing_runs(scene: Any, run_dir: Optional[str] = None) -> List[int]:
    """Subject-hierarchy folder items made by :func:`load_run` (optionally only for ``run_dir``)."""
    sh = _sh(scene)
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
    sh = _sh(scene)
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
        raise LoadError("The run in %s is %s, not complete." % (run_dir, manifest.status))
    ensure_logics(scene)
    sh = _sh(scene)
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
        _tag(node, run_dir, entry)
        item = sh.GetItemByDataNode(node)
        parent = sub or folder
        if not item:
            sh.CreateItem(parent, node)
        else:
            sh.SetItemParent(item, parent)
        return node

    def missing(entry: OutputEntry) -> bool:
        if not os.path.isfile(_abs(run_dir, entry)):
            loaded.warnings.append("Missing output file %s." % entry.path)
            return True
        return False

    for entry in manifest.find(kind="labelmap"):
        if missing(entry):
            continue
        labels = {int(k): v for k, v in (entry.labels or {}).items()}
        if _is_tissue_labelmap(entry) and loaded.segmentation is None:
            loaded.segmentation = place(load_segmentation(scene, _abs(run_dir, entry), labels, prefix,
                                                          create_surfaces=create_surfaces), entry)
        else:
            labels = labels or L.region_label_names()
            node, colors = load_labelmap_volume(scene, _abs(run_dir, entry), labels, prefix + " " + _stem(entry.path))
            place(node, entry)
            place(colors)
            loaded.color_nodes.append(colors)
            if loaded.regions is None and (entry.structure == "regions" or _stem(entry.path).startswith("regions")):
                loaded.regions = node
            else:
                loaded.volumes[entry.path] = node

    for entry in manifest.find(kind="volume"):
        if missing(entry):
            continue
        is_t2 = "t2" in _stem(entry.path).lower() or "t2" in (entry.units or {})
        node = load_scalar_volume(scene, _abs(run_dir, entry), prefix + " " + _stem(entry.path),
                                  window=T2_WINDOW_MS if is_t2 else None,
                                  color_node_id=T2_COLOR_NODE if is_t2 else None)
        loaded.volumes[entry.path] = place(node, entry)

    shape_folder = None
    for entry in manifest.find(kind="mesh"):
        if missing(entry):
            continue
        structure = entry.structure or _stem(entry.path)
        is_nsm = structure.startswith("nsm")
        sub = None
        if is_nsm:
            if shape_folder is None:
                shape_folder = sh.CreateFolderItem(folder, "Shape model")
            sub = shape_folder
        color = L.COLORS.get(structure) or ((180, 200, 240) if is_nsm else None)
        node = load_model(scene, _abs(run_dir, entry), prefix + " " + structure, entry.coordinate_system,
                          entry.scalars, thickness_range_mm, color=color)
        loaded.models[structure] = place(node, entry, sub)

    for entry in manifest.find(kind="json"):
        if _stem(entry.path) == "results" and not missing(entry):
            with open(_abs(run_dir, entry), encoding="utf-8") as fh:
                loaded.results = json.load(fh)
    for entry in manifest.find(kind="table"):
        if missing(entry) or not entry.path.endswith(".csv"):
            continue
        rows = _read_csv_rows(_abs(run_dir, entry))
        key = "results" if _stem(entry.path) == "results" else _stem(entry.path)
        loaded.tables[key] = place(table_from_rows(scene, prefix + " " + _stem(entry.path), rows), entry)
    for entry in manifest.find(kind="report"):
        if entry.path.endswith(".html") and loaded.report_path is None and os.path.isfile(_abs(run_dir, entry)):
            loaded.report_path = _abs(run_dir, entry)

    rows, col = regional_thickness(loaded.results)
    if rows:
        loaded.tables["regions"] = place(table_from_rows(scene, prefix + " regional thickness", rows))
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
