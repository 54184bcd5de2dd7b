"""The panel keeps its choices across module enter / exit in Slicer 5.8 and 5.12.

Slicer's real parameterNodeWrapper of each version (Testing/fixtures/slicer_parameterNodeWrapper, unmodified)
wraps a real vtkMRMLScriptedModuleNode (PyPI slicer-core) with the module's own KneePipelineParameterNode class
and GuiBinding. Only Qt is stood in for: combo boxes, check boxes and spin boxes that follow Qt's rules for
signals (clear() on a filled combo emits currentIndexChanged(-1); adding the first item selects it and emits
currentIndexChanged(0); setting the current index emits when it changes). Those rules are how Slicer 5.8
reset the combos: its connectGui returns no tag, so nothing is disconnected, and reconnecting refills the
combos while the earlier connection writes the refill's choice back.
"""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="PyPI slicer-core is needed (pip install slicer-core==5.12.4.0)")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover
    pytest.skip("the installed `slicer` is not slicer-core", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "Testing" / "fixtures" / "slicer_parameterNodeWrapper"
VERSIONS = ["v5_8_0", "v5_12_3"]
COMBOS = {"labelConvention": "pymskt", "model": None, "nsm": "both", "device": "cpu"}


# -- Qt stand-ins with Qt's signal semantics ----------------------------------------------------------
class Signal:
    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def disconnect(self, slot):
        self._slots.remove(slot)

    def emit(self, *args):
        """Like PythonQt: a slot gets as many of the signal's arguments as it accepts."""
        import inspect

        for slot in list(self._slots):
            try:
                n = len([p for p in inspect.signature(slot).parameters.values()
                         if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
            except (TypeError, ValueError):
                n = len(args)
            slot(*args[:n])


class QWidget:
    def __init__(self, parameter=None):
        self._properties = {"SlicerParameterName": parameter} if parameter else {}

    def property(self, name):
        return self._properties.get(name)

    def isWidgetType(self):
        return False   # connectGui then reads the widgets from the ui namespace, as for childWidgetVariables


class QComboBox(QWidget):
    def __init__(self, parameter=None):
        super().__init__(parameter)
        self._items, self._index = [], -1
        self.currentIndexChanged = Signal()
        self.currentTextChanged = Signal()

    def _set(self, index):
        if index != self._index:
            self._index = index
            self.currentIndexChanged.emit(index)
            self.currentTextChanged.emit(self.currentText)

    def clear(self):
        self._items = []
        self._set(-1)

    def addItem(self, text, *args):
        self._items.append(str(text))
        if self._index == -1:
            self._set(0)

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, index):
        self._set(index)

    @property
    def currentText(self):
        return self._items[self._index] if 0 <= self._index < len(self._items) else ""

    @property
    def count(self):
        return len(self._items)


class QCheckBox(QWidget):
    def __init__(self, parameter=None):
        super().__init__(parameter)
        self._checked = False
        self.toggled = Signal()
        self.stateChanged = Signal()

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        if bool(value) != self._checked:
            self._checked = bool(value)
            self.toggled.emit(self._checked)
            self.stateChanged.emit(2 if self._checked else 0)


def _qt_module(name, classes):
    mod = types.ModuleType(name)
    for cls in classes:
        setattr(mod, cls.__name__, cls)

    def __getattr__(attr):   # every other Qt / CTK class: a distinct placeholder no widget here is
        cls = type(attr, (QWidget,), {})
        setattr(mod, attr, cls)
        return cls
    mod.__getattr__ = __getattr__
    return mod


@pytest.fixture(params=VERSIONS)
def slicer_version(request, monkeypatch):
    """Slicer's wrapper of one version imported as slicer.parameterNodeWrapper, and our parameters module."""
    monkeypatch.setitem(sys.modules, "qt", _qt_module("qt", [QWidget, QComboBox, QCheckBox]))
    monkeypatch.setitem(sys.modules, "ctk", _qt_module("ctk", []))
    for name in ("qMRMLNodeComboBox", "qMRMLSpinBox", "qMRMLSliderWidget", "qMRMLRangeWidget"):
        monkeypatch.setattr(slicer, name, type(name, (QWidget,), {}), raising=False)
    for name in [k for k in sys.modules if k.startswith("slicer.parameterNodeWrapper")
                 or k.split(".")[0] == "KneePipelineModule"]:
        monkeypatch.delitem(sys.modules, name)
    folder = FIXTURES / request.param
    spec = importlib.util.spec_from_file_location("slicer.parameterNodeWrapper", str(folder / "__init__.py"),
                                                  submodule_search_locations=[str(folder)])
    pnw = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    spec.loader.exec_module(pnw)
    monkeypatch.setattr(slicer, "parameterNodeWrapper", pnw, raising=False)
    monkeypatch.syspath_prepend(str(ROOT / "KneePipeline"))
    params = importlib.import_module("KneePipelineModule.parameters")
    yield request.param, pnw, params
    for name in [k for k in sys.modules if k.startswith("slicer.parameterNodeWrapper.")
                 or k.split(".")[0] == "KneePipelineModule"]:
        del sys.modules[name]


def _panel():
    ui = types.SimpleNamespace()
    ui.labelConventionComboBox = QComboBox("labelConvention")
    ui.modelComboBox = QComboBox("model")
    ui.nsmComboBox = QComboBox("nsm")
    ui.deviceComboBox = QComboBox("device")
    ui.ttaCheckBox = QCheckBox("tta")
    return ui


def _node():
    scene = slicer.vtkMRMLScene()
    return scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "KneePipeline")


def _choose(params, ui):
    """The user picks non-default values in the panel."""
    wanted = dict(COMBOS, model=params.SEGMENTATION_MODELS[-1])
    combos = {"labelConvention": ui.labelConventionComboBox, "model": ui.modelComboBox, "nsm": ui.nsmComboBox,
              "device": ui.deviceComboBox}
    for name, value in wanted.items():
        combos[name].currentIndex = combos[name]._items.index(value)
    ui.ttaCheckBox.checked = True
    return wanted


def test_choices_survive_enter_exit_enter(slicer_version):
    version, _pnw, params = slicer_version
    ui, mrml = _panel(), _node()
    binding = params.GuiBinding(ui)
    assert binding.bind(params.KneePipelineParameterNode(mrml))          # module entered the first time
    assert ui.modelComboBox.count == len(params.SEGMENTATION_MODELS)     # the wrapper filled the combos
    wanted = _choose(params, ui)
    node = params.KneePipelineParameterNode(mrml)
    assert {k: getattr(node, k) for k in wanted} == wanted and node.tta   # the GUI wrote the node
    for _ in range(3):                                                    # exit, enter: a new wrapper object
        assert not binding.bind(params.KneePipelineParameterNode(mrml))   # of the same node: nothing reconnects
    node = params.KneePipelineParameterNode(mrml)
    assert {k: getattr(node, k) for k in wanted} == wanted, version
    assert ui.deviceComboBox.currentText == "cpu" and ui.nsmComboBox.currentText == "both"
    node.device = "mps"                                                   # node -> GUI still works
    assert ui.deviceComboBox.currentText == "mps"


def test_a_new_parameter_node_is_connected_and_the_old_one_released(slicer_version):
    version, _pnw, params = slicer_version
    ui, first, second = _panel(), _node(), _node()
    binding = params.GuiBinding(ui)
    binding.bind(params.KneePipelineParameterNode(first))
    _choose(params, ui)
    assert binding.bind(params.KneePipelineParameterNode(second))        # scene closed: a new node
    fresh = params.KneePipelineParameterNode(second)
    assert fresh.device == "auto" and ui.deviceComboBox.currentText == "auto"
    ui.deviceComboBox.currentIndex = ui.deviceComboBox._items.index("cuda")
    assert params.KneePipelineParameterNode(second).device == "cuda"
    assert params.KneePipelineParameterNode(first).device == "cpu", "the released node must not follow the GUI"
    binding.release()
    ui.deviceComboBox.currentIndex = 0
    assert params.KneePipelineParameterNode(second).device == "cuda"


def test_reconnecting_on_every_enter_resets_the_combos_in_58_only(slicer_version):
    """The pattern the module used before (disconnect on exit, connect on enter), on the same real code:
    Slicer 5.8 resets every combo to its first choice; 5.12 keeps them. This is what GuiBinding avoids."""
    version, _pnw, params = slicer_version
    ui, mrml = _panel(), _node()
    first = params.KneePipelineParameterNode(mrml)
    tag = first.connectGui(ui)
    wanted = _choose(params, ui)
    first.disconnectGui(tag)                                              # exit
    params.KneePipelineParameterNode(mrml).connectGui(ui)                 # enter: a new wrapper of the node
    node = params.KneePipelineParameterNode(mrml)
    got = {k: getattr(node, k) for k in wanted}
    if version == "v5_8_0":
        assert tag is None
        assert got["device"] == "auto" and got["nsm"] == "none" and got["labelConvention"] == "dosma"
    else:
        assert tag is not None and got == wanted
