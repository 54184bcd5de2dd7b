"""The panel: KneePipeline.ui is valid, matches the module code and the parameter node (no Qt needed)."""
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from KneePipelineLib.options import DEVICE_CHOICES, NSM_CHOICES, RunOptions

ROOT = Path(__file__).resolve().parents[1]
UI = ROOT / "KneePipeline" / "Resources" / "UI" / "KneePipeline.ui"
MODULE = ROOT / "KneePipeline" / "KneePipeline.py"
PACKAGE = ROOT / "KneePipeline" / "KneePipelineModule"


@pytest.fixture(scope="module")
def ui():
    return ET.parse(str(UI)).getroot()


@pytest.fixture(scope="module")
def tree():
    """The module file and its package, as one tree (each parsed with Python 3.9's grammar)."""
    body = []
    for path in [MODULE] + sorted(PACKAGE.glob("*.py")):
        body += ast.parse(path.read_text(encoding="utf-8"), feature_version=(3, 9)).body
    return ast.Module(body=body, type_ignores=[])


def _widgets(ui):
    return {w.get("name"): w for w in ui.iter("widget")}


def _bound(ui):
    out = {}
    for w in ui.iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = w
    return out


def _param_fields(tree):
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "KneePipelineParameterNode")
    assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in cls.decorator_list)
    fields = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            default = ast.literal_eval(stmt.value) if stmt.value is not None else None
            fields[stmt.target.id] = (ast.unparse(stmt.annotation), default)
    return fields


def _prop(widget, name):
    for p in widget.findall("property"):
        if p.get("name") == name:
            child = list(p)[0]
            return child
    return None


def test_ui_is_a_qt_designer_file_with_a_qmrmlwidget_root(ui):
    assert ui.tag == "ui" and ui.get("version") == "4.0"
    root = ui.find("widget")
    assert root.get("class") == "qMRMLWidget"
    declared = {c.find("class").text for c in ui.iter("customwidget")}
    used = {w.get("class") for w in ui.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared
    names = [w.get("name") for w in ui.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_parameter_names_equal_the_parameter_node_fields(ui, tree):
    assert set(_bound(ui)) == set(_param_fields(tree))


def test_every_widget_the_module_uses_exists(ui, tree):
    used = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            used.add(node.attr)
    missing = used - set(_widgets(ui))
    assert not missing, "widgets used by the module but absent from the .ui: %s" % sorted(missing)
    for name in ("runButton", "cancelButton", "progressBar", "stepLabel", "logTextEdit", "resultsLabel",
                 "setupEnvButton", "checkEnvButton", "sampleDataButton", "modelComboBox"):
        assert name in used


def _union_members(annotation):
    inner = annotation[len("Union["):-1] if annotation.startswith("Union[") else annotation
    return [t.strip() for t in inner.split(",")]


def test_widgets_suit_their_parameter_types(ui, tree):
    """Each field is bound to a widget Slicer's parameterNodeWrapper can connect it to (its guiConnectors):
    bool-QCheckBox, int-QSpinBox, float-QDoubleSpinBox, pathlib.Path-ctkPathLineEdit, node (or a Union of
    node types that includes None)-qMRMLNodeComboBox, and QComboBox only with a Choice annotation (the
    connector raises without one)."""
    bound = _bound(ui)
    for name, (annotation, default) in _param_fields(tree).items():
        cls = bound[name].get("class")
        if annotation == "bool":
            assert cls == "QCheckBox", name
        elif annotation == "pathlib.Path":
            assert cls == "ctkPathLineEdit", name
        elif annotation.startswith("slicer.vtkMRML") or annotation.startswith("Union[slicer.vtkMRML"):
            assert cls == "qMRMLNodeComboBox", name
            members = _union_members(annotation)
            if len(members) > 1:
                # the wrapper writes the default (None) at once; a Union without None cannot hold it
                assert "None" in members, "%s: a Union of node types must include None" % name
            types = {s.text for s in _prop(bound[name], "nodeTypes").findall("string")}
            want = {t.replace("slicer.", "") for t in members if t != "None"}
            assert types == want, name
        elif "Choice(" in annotation:
            assert cls == "QComboBox", name
            arg = annotation.split("Choice(")[1].split(")")[0]
            if arg.startswith("["):   # literal choices; SEGMENTATION_MODELS is checked at import (test_ui_module)
                choices = ast.literal_eval(arg)
                items = [i.find("property/string").text for i in bound[name].findall("item")]
                assert items == choices, name
                assert default in choices
        elif annotation.startswith("Annotated[float") or annotation == "float":
            assert cls == "QDoubleSpinBox", name
            assert float(_prop(bound[name], "value").text) == pytest.approx(default), name
            if "WithinRange(" in annotation:
                lo, hi = ast.literal_eval("(" + annotation.split("WithinRange(")[1].split(")")[0] + ")")
                assert float(_prop(bound[name], "minimum").text) == lo and float(_prop(bound[name], "maximum").text) == hi
        elif annotation.startswith("Annotated[int") or annotation == "int":
            assert cls == "QSpinBox", name
        else:
            pytest.fail("no widget rule for %s: %s (a QComboBox needs a Choice annotation)" % (name, annotation))


def test_choices_and_defaults_agree_with_run_options(tree):
    f = _param_fields(tree)
    nsm = ast.literal_eval(f["nsm"][0].split("Choice(")[1].split(")")[0])
    device = ast.literal_eval(f["device"][0].split("Choice(")[1].split(")")[0])
    assert tuple(nsm) == NSM_CHOICES
    assert tuple(device) == DEVICE_CHOICES, "offer every device the library knows (mps on Apple Silicon)"
    d = RunOptions()
    assert f["boneSmoothVarMm2"][1] == d.bone_smooth_var_mm2
    assert f["cartilageSmoothVarMm2"][1] == d.cartilage_smooth_var_mm2
    assert f["stepSize"][1] == d.step_size and f["tta"][1] == d.tta
    assert f["nsm"][1] == d.nsm and f["device"][1] == d.device and f["model"][1] == d.model


def test_module_classes_and_conventions(tree):
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in c.bases] for name, c in classes.items()}
    assert "ScriptedLoadableModule" in bases["KneePipeline"]
    assert "ScriptedLoadableModuleWidget" in bases["KneePipelineWidget"]
    assert "VTKObservationMixin" in bases["KneePipelineWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["KneePipelineLogic"]
    assert "ScriptedLoadableModuleTest" in bases["KneePipelineTest"]
    assert any(isinstance(n, ast.FunctionDef) and n.name == "runTest" for n in classes["KneePipelineTest"].body)
    src = "\n".join(p.read_text(encoding="utf-8") for p in [MODULE] + sorted(PACKAGE.glob("*.py")))
    assert "slicer.util.startupEnvironment()" in src   # the child never gets Slicer's library paths
    assert "qt.QTimer" in src and "cancel(" in src
    # the module never runs a pipeline step itself, only the library's runner / loader
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("KneePipelineLib.") and m.split(".")[1] in
                ("pipeline", "morphometry", "segmentation", "shape", "t2")}


def test_ui_file_is_what_the_generator_writes(tmp_path):
    """KneePipeline.ui is generated by tools/make_slicer_ui.py: the committed file must match it."""
    import importlib.util
    import xml.dom.minidom

    spec = importlib.util.spec_from_file_location("make_slicer_ui", str(ROOT / "tools" / "make_slicer_ui.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)   # the generator writes only under `if __name__ == "__main__"`
    pretty = xml.dom.minidom.parseString(gen.ui.encode("utf-8")).toprettyxml(indent=" ", encoding="UTF-8").decode("utf-8")
    pretty = "\n".join(line for line in pretty.splitlines() if line.strip()) + "\n"
    assert UI.read_text(encoding="utf-8") == pretty, "run `python tools/make_slicer_ui.py` and commit the .ui"


def test_module_file_is_thin_and_its_package_is_one_file_per_concern():
    """Slicer loads KneePipeline.py; the rest lives in KneePipelineModule/ (a folder, so Slicer's module
    discovery, which reads only the .py files directly in the module folder, does not load it)."""
    assert len(MODULE.read_text(encoding="utf-8").splitlines()) < 100
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert files == ["__init__.py", "export.py", "install.py", "logic.py", "parameters.py", "selftest.py", "widget.py"]
    for p in PACKAGE.glob("*.py"):
        tree = ast.parse(p.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), "%s opens without saying what it is for" % p.name
        assert len(p.read_text(encoding="utf-8").splitlines()) < 400, p.name
