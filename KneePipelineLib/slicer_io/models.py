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
        import vtk

        disp.SetActiveScalar("thickness_mm", vtk.vtkAssignAttribute.POINT_DATA)
        disp.SetAndObserveColorNodeID(builtin_color(scene, THICKNESS_COLOR_NODE))
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


