"""Shared pieces of the scene loaders: run/output attributes, module logics on a bare scene, colours,
reading a file through a storage node (Qt-free, Python 3.9; ``slicer`` and ``vtk`` imported in functions).

LPS -> RAS happens exactly once, in the loaders: volumes are read by Slicer's archetype storage node (which
converts the file's LPS geometry to RAS), meshes by a model storage node told the file is in LPS.
"""
import os
from typing import Any, Dict, Optional, Tuple

from ..manifest import OutputEntry

RUN_ATTRIBUTE = "KneePipeline.RunDir"
OUTPUT_ATTRIBUTE = "KneePipeline.Output"
RUN_INDEX_ATTRIBUTE = "KneePipeline.RunIndex"


class LoadError(Exception):
    """The run folder cannot be loaded (missing or unfinished manifest, missing file)."""


def read_into(scene, node, storage, path) -> None:
    """Read ``path`` through ``storage`` into ``node``; on failure remove both and raise LoadError."""
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise LoadError("Could not read %s." % path)
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()


def slicer_module():
    import slicer

    return slicer


def output_path(run_dir: str, entry: OutputEntry) -> str:
    return os.path.join(run_dir, *entry.path.split("/"))


def stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".nii.gz", ".nii", ".nrrd", ".vtp", ".vtk", ".csv", ".json", ".html"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


def tag(node: Any, run_dir: str, entry: Optional[OutputEntry]) -> Any:
    node.SetAttribute(RUN_ATTRIBUTE, os.path.abspath(run_dir))
    if entry is not None:
        node.SetAttribute(OUTPUT_ATTRIBUTE, entry.path)
    return node


def ensure_logics(scene: Any) -> None:
    """Outside the Slicer application (slicer-core), create the module logics Slicer would have set on the
    scene. The segmentations logic must exist BEFORE segmentation nodes, or closed surfaces silently fail."""
    slicer = slicer_module()
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


def subject_hierarchy(scene: Any) -> Any:
    slicer = slicer_module()
    return slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)


def builtin_color(scene: Any, node_id: str) -> str:
    """ID of a built-in colour table; created in the scene if this scene has none (slicer-core)."""
    slicer = slicer_module()
    if scene.GetNodeByID(node_id) is not None:
        return node_id
    logic = slicer.vtkMRMLColorLogic()
    logic.SetMRMLScene(scene)
    logic.AddDefaultColorNodes()
    logic.SetMRMLScene(None)
    if scene.GetNodeByID(node_id) is None:  # pragma: no cover - defensive
        raise LoadError("Colour table %s is not available." % node_id)
    return node_id


def fallback_color(value: int) -> tuple:
    # deterministic, well separated hues for values without a named colour
    import colorsys

    h = (value * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.55, 0.95)
    return (int(r * 255), int(g * 255), int(b * 255))


