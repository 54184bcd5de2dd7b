"""Meshes into the scene: a model node in RAS (files are LPS); cartilage thickness shown as scalars with a fixed
range, a colour map and a legend."""
from typing import Any, Optional, Sequence, Tuple

from .common import builtin_color, read_into, slicer_module

THICKNESS_RANGE_MM = (0.0, 4.0)
THICKNESS_COLOR_NODE = "vtkMRMLColorTableNodeRainbow"      # built in; red (thin) ... purple-blue (thick)


def load_model(scene: Any, path: str, name: str, coordinate_system: Optional[str] = "LPS",
               scalars: Sequence[str] = (), thickness_range_mm: Tuple[float, float] = THICKNESS_RANGE_MM,
               color: Optional[tuple] = None) -> Any:
    """A mesh file -> model node in RAS; thickness (if present) shown with a fixed range and a legend."""
    slicer = slicer_module()
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(path)
    cs = (coordinate_system or "LPS").upper()
    storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemLPS if cs == "LPS"
                                else slicer.vtkMRMLStorageNode.CoordinateSystemRAS)
    read_into(scene, node, storage, path)
    disp = node.GetDisplayNode()
    if color is not None:
        disp.SetColor(color[0] / 255.0, color[1] / 255.0, color[2] / 255.0)
    poly = node.GetPolyData()
    pd = poly.GetPointData() if poly is not None else None
    if pd is not None and "thickness_mm" in [pd.GetArrayName(i) for i in range(pd.GetNumberOfArrays())]:
        show_scalars(node, "thickness_mm", builtin_color(scene, THICKNESS_COLOR_NODE), thickness_range_mm,
                     "Cartilage thickness (mm)", "%.1f")
    return node




def show_scalars(node: Any, array: str, color_node_id: str, value_range: Tuple[float, float], title: str,
                 label_format: str) -> None:
    """Colour ``node`` by its point array ``array`` over a fixed range, with a colour legend."""
    import vtk

    slicer = slicer_module()
    disp = node.GetDisplayNode()
    disp.SetActiveScalar(array, vtk.vtkAssignAttribute.POINT_DATA)
    disp.SetAndObserveColorNodeID(color_node_id)
    disp.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    disp.SetScalarRange(float(value_range[0]), float(value_range[1]))
    disp.SetScalarVisibility(True)
    try:
        legend = slicer.vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode(node)
        if legend is not None:
            legend.SetTitleText(title)
            legend.SetLabelFormat(label_format)
    except (AttributeError, TypeError):  # pragma: no cover - older Slicer / slicer-core without Colors
        pass
