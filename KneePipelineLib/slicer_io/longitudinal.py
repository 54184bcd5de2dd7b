"""A longitudinal comparison into the scene: the baseline bones coloured by cartilage change (blue = loss,
white = none, red = gain, symmetric range, with a legend) and the regional change table (Python 3.9, Qt-free)."""
import json
import os
from typing import Any, Dict, List, Optional

from .common import LoadError, ensure_logics, slicer_module, subject_hierarchy
from .models import load_model, show_scalars
from .tables import read_csv_rows, table_from_rows

CHANGE_COLOR_NODE_NAME = "KneePipeline cartilage change"
LONGITUDINAL_ATTRIBUTE = "KneePipeline.Longitudinal"


def change_color_node(scene: Any) -> Any:
    """A procedural blue-white-red colour node (built once per scene; Slicer's diverging tables are files that
    only the application's Colors module loads)."""
    import vtk

    slicer = slicer_module()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLProceduralColorNode")):
        n = scene.GetNthNodeByClass(i, "vtkMRMLProceduralColorNode")
        if n.GetName() == CHANGE_COLOR_NODE_NAME:
            return n
    node = slicer.vtkMRMLProceduralColorNode()
    node.SetName(CHANGE_COLOR_NODE_NAME)
    node.SetAttribute("Category", "KneePipeline")
    ctf = vtk.vtkColorTransferFunction()
    ctf.AddRGBPoint(-1.0, 0.13, 0.40, 0.67)
    ctf.AddRGBPoint(0.0, 0.97, 0.97, 0.97)
    ctf.AddRGBPoint(1.0, 0.70, 0.09, 0.17)
    node.SetAndObserveColorTransferFunction(ctf)
    scene.AddNode(node)
    return node


def change_limit_mm(doc: Dict[str, Any]) -> float:
    """Symmetric colour range: the largest regional |mean change| x 2, at least 0.2 mm."""
    vals = [abs(r.get("change_mean_mm") or 0.0) for v in doc.get("followups", []) for r in v.get("regions", [])]
    return max(0.2, 2.0 * max(vals) if vals else 0.2)


def load_longitudinal(scene: Any, out_dir: str) -> Dict[str, Any]:
    """Load ``kneepipeline longitudinal``'s folder: change-coloured baseline bones and the change table."""
    path = os.path.join(out_dir, "longitudinal.json")
    if not os.path.isfile(path):
        raise LoadError("%s holds no longitudinal.json (is the comparison complete?)." % out_dir)
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    ensure_logics(scene)
    limit = change_limit_mm(doc)
    color = change_color_node(scene)
    nodes: List[Any] = []
    for bone in ("femur", "tibia", "patella"):
        mesh = os.path.join(out_dir, "meshes", bone + ".vtp")
        if not os.path.isfile(mesh):
            continue
        node = load_model(scene, mesh, "%s change" % bone, coordinate_system="LPS")
        show_scalars(node, "change_mm", color.GetID(), (-limit, limit), "Cartilage change (mm)", "%.2f")
        node.SetAttribute(LONGITUDINAL_ATTRIBUTE, os.path.abspath(out_dir))
        nodes.append(node)
    table: Optional[Any] = None
    csv_path = os.path.join(out_dir, "longitudinal.csv")
    if os.path.isfile(csv_path):
        table = table_from_rows(scene, "Cartilage change", read_csv_rows(csv_path))
        table.SetAttribute(LONGITUDINAL_ATTRIBUTE, os.path.abspath(out_dir))
        nodes.append(table)
    sh = subject_hierarchy(scene)
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "KneePipeline change: " + os.path.basename(os.path.abspath(out_dir)))
    sh.SetItemAttribute(folder, LONGITUDINAL_ATTRIBUTE, os.path.abspath(out_dir))
    for n in nodes:
        item = sh.GetItemByDataNode(n)
        if not item:    # outside the application nothing creates the items for new nodes
            sh.CreateItem(folder, n)
        else:
            sh.SetItemParent(item, folder)
    return {"models": [n for n in nodes if n is not table], "table": table, "limit_mm": limit, "document": doc,
            "folder_item": folder}
