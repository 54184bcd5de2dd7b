"""The module's parameter node (typed fields, each bound to the panel widget with the same
SlicerParameterName in the .ui) and its connection to the panel, made once per parameter node.

Why once: in Slicer 5.8 ``connectGui`` returns no tag, so ``disconnectGui(tag)`` cannot undo it (fixed in
5.10). Reconnecting on every module enter then refills the combo boxes while the earlier, still connected
callbacks write the refill's first choice back: model, NSM, device and label convention reset each time.
Testing/test_parameter_binding.py drives Slicer's real 5.8.0 and 5.12.3 wrapper code to show the fix.
"""
import pathlib
from typing import Annotated, Optional, Union

import slicer
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from KneePipelineLib.registry import list_models

# The model combo's choices: parameterNodeWrapper binds a QComboBox only to a field annotated with Choice
# (it fills the combo from the choices itself), so the registry's ids are read once, here.
SEGMENTATION_MODELS = [m.id for m in list_models(kind="segmentation")]


@parameterNodeWrapper
class KneePipelineParameterNode:
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    # A union of node types must include None, or the wrapper cannot store "nothing selected" (its default).
    inputLabels: Union[slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLSegmentationNode, None]
    labelConvention: Annotated[str, Choice(["dosma", "pymskt"])] = "dosma"
    model: Annotated[str, Choice(SEGMENTATION_MODELS)] = "nnunet_fullres"
    nsm: Annotated[str, Choice(["none", "bone_cartilage", "bone_only", "both"])] = "none"
    t2Enabled: bool = False
    echoesPath: pathlib.Path
    device: Annotated[str, Choice(["auto", "cuda", "mps", "cpu"])] = "auto"
    profile: Annotated[str, Choice(["default", "fast"])] = "default"
    boneSmoothVarMm2: Annotated[float, WithinRange(0.0, 5.0)] = 0.5
    cartilageSmoothVarMm2: Annotated[float, WithinRange(0.0, 5.0)] = 0.3125
    tta: bool = False
    stepSize: Annotated[float, WithinRange(0.1, 1.0)] = 0.5
    timeoutMinutes: Annotated[int, WithinRange(0, 1440)] = 0
    outputDirectory: pathlib.Path
    replaceResults: bool = True
    pythonEnvironment: pathlib.Path


def path_or_none(p) -> Optional[str]:
    """An unset pathlib.Path field is Path("."): that and "" mean "not set"."""
    s = str(p) if p is not None else ""
    return None if s in ("", ".") else s


def _mrml_node(wrapper):
    return getattr(wrapper, "parameterNode", wrapper)


class GuiBinding:
    """The panel's connection to one parameter node: made when the node first appears, kept across module
    enter / exit, undone only when the node changes (scene closed)."""

    def __init__(self, gui) -> None:
        self.gui = gui
        self.node = None
        self._tag = None

    def bind(self, node) -> bool:
        """Connect ``node`` (a wrapper) unless its MRML node is already connected. True if it connected."""
        if node is not None and self.node is not None and _mrml_node(node) is _mrml_node(self.node):
            return False
        self.release()
        if node is None:
            return False
        tag = node.connectGui(self.gui)
        if tag is None:   # Slicer 5.8: connectGui returns nothing; the connection it made has the newest tag
            tags = list(getattr(node, "_parameterGUIs", {}) or [])
            tag = max(tags) if tags else None
        self.node, self._tag = node, tag
        return True

    def release(self) -> None:
        """Disconnect the current node (scene closing, module unloading)."""
        if self.node is not None and self._tag is not None:
            self.node.disconnectGui(self._tag)
        self.node, self._tag = None, None
