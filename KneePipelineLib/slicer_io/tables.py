"""Tables and charts into the scene: rows -> a table node with typed columns (numbers as vtkDoubleArray,
whatever the columns are), the regional mean-thickness bar chart."""
import csv
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import slicer_module


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


def read_csv_rows(path: str) -> List[Dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def thickness_chart(scene: Any, table_node: Any, column: str, name: str) -> Tuple[Any, Any]:
    slicer = slicer_module()
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
