"""Volumes into the scene: the tissue label map as a segmentation node (named, coloured segments with their
label values and terminology), other label maps (sub-regions) with a colour table, scalar maps (T2)."""
from typing import Any, Dict, Optional, Tuple

from ..manifest import OutputEntry
from .common import LoadError, builtin_color, ensure_logics, fallback_color, read_into, slicer_module, stem
from .terminology import terminology_entry


def _read_volume(scene: Any, path: str, name: str, labelmap: bool) -> Any:
    cls = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(cls, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(path)
    storage.SetCenterImage(False)
    storage.SetSingleFile(True)
    read_into(scene, node, storage, path)
    return node


def _label_color_table(scene: Any, name: str, labels: Dict[int, str], colors: Dict[str, tuple]) -> Any:
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(max(labels) + 1 if labels else 1)
    for value in range(table.GetNumberOfColors()):
        table.SetColor(value, "", 0.0, 0.0, 0.0, 0.0)
    for value, label in labels.items():
        r, g, b = colors.get(label, fallback_color(value))
        table.SetColor(int(value), label, r / 255.0, g / 255.0, b / 255.0, 1.0)
    return table


def region_colors(names: Dict[int, str]) -> Dict[str, tuple]:
    """Sub-region colours: one hue per region; deep layers darker, superficial lighter."""
    from .. import labels as L

    out: Dict[str, tuple] = {}
    for value, label in names.items():
        base_code = value % 100
        base = L.TISSUES.get(base_code) if base_code in L.TISSUES and base_code not in L.REGION_BY_CODE else None
        if base is not None and value < 100:
            out[label] = L.COLORS.get(base, fallback_color(value))
            continue
        r, g, b = fallback_color(base_code)
        scale = 1.0 if value < 100 else (0.7 if value < 200 else 1.25)
        out[label] = tuple(int(min(255, c * scale)) for c in (r, g, b))
    return out


def is_tissue_labelmap(entry: OutputEntry) -> bool:
    from .. import labels as L

    if entry.structure in ("regions",) or stem(entry.path).startswith("regions"):
        return False
    names = set((entry.labels or {}).values())
    return bool(names) and names <= set(L.TISSUES.values()) | {"background"}


def load_segmentation(scene: Any, path: str, labels: Dict[int, str], name: str,
                      create_surfaces: bool = True, laterality: Optional[str] = None) -> Any:
    """Label map -> segmentation node with named, coloured segments that keep their label values."""
    slicer = slicer_module()
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
        r, g, b = L.COLORS.get(label, fallback_color(value))
        segment.SetColor(r / 255.0, g / 255.0, b / 255.0)
        term = terminology_entry(label, laterality)
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
        disp.SetAndObserveColorNodeID(builtin_color(scene, color_node_id))
    return node


