"""KneePipeline: quantitative knee MRI in 3D Slicer (module, panel, thin logic, self-test).

The pipeline itself runs in a separate Python environment as ``python -m KneePipelineLib run ...`` (the
same command as the CLI); this file only builds the options, follows the background process from a timer
and loads the results through the Qt-free ``KneePipelineLib.slicer_io`` layer. Python 3.9-compatible.
"""
import logging
import os
import pathlib
import sys
import tempfile
import time
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin

# Running from the source tree ("Additional module paths"): the library sits beside this module's folder.
# In an installed extension it sits beside this file.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_folder, "KneePipelineLib")):
        if _folder not in sys.path:
            sys.path.insert(0, _folder)
        LIBRARY_PARENT = _folder
        break
else:  # pragma: no cover - broken installation
    LIBRARY_PARENT = _HERE

from KneePipelineLib.registry import list_models  # noqa: E402  (stdlib-only; needs the sys.path above)

# The model combo's choices: parameterNodeWrapper binds a QComboBox only to a field annotated with Choice
# (it fills the combo from the choices itself), so the registry's ids are read once, here.
SEGMENTATION_MODELS = [m.id for m in list_models(kind="segmentation")]
SETTINGS_PYTHON = "KneePipeline/PythonEnvironment"
POLL_INTERVAL_MS = 200
SAMPLE_LABELS_ENV = "KNEEPIPELINE_SAMPLE_LABELS"
PYTHON_ENV = "KNEEPIPELINE_PYTHON"


#
# Module
#
class KneePipeline(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Knee Pipeline"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["KneePipeline contributors"]
        self.parent.helpText = (
            "Knee MRI to segmentation, bone and cartilage meshes, regional cartilage thickness, T2 maps, "
            "neural shape model and B-score. The pipeline runs in a separate Python environment in the "
            "background; set it up once under 'Pipeline environment'.")
        self.parent.acknowledgementText = (
            "Built on nnU-Net, DOSMA, pymskt and the NSM / B-score models; see the project's README for "
            "citations and model licences.")


#
# Parameters (every field is bound to a widget with the same SlicerParameterName in the .ui)
#
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
    device: Annotated[str, Choice(["auto", "cuda", "cpu"])] = "auto"
    boneSmoothVarMm2: Annotated[float, WithinRange(0.0, 5.0)] = 0.5
    cartilageSmoothVarMm2: Annotated[float, WithinRange(0.0, 5.0)] = 0.3125
    tta: bool = False
    stepSize: Annotated[float, WithinRange(0.1, 1.0)] = 0.5
    timeoutMinutes: Annotated[int, WithinRange(0, 1440)] = 0
    outputDirectory: pathlib.Path
    replaceResults: bool = True
    pythonEnvironment: pathlib.Path


def _path_or_none(p) -> Optional[str]:
    s = str(p) if p is not None else ""
    return None if s in ("", ".") else s


def segmentation_to_canonical_labelmap(segNode, referenceVolume=None):
    """Segments named like the canonical tissues (femur, femoral_cartilage, ...) -> a new label map node in
    the segmentation's scene with the canonical label values (segment names looked up in a colour table).
    Other segments are left out. The caller removes the returned node when done with it."""
    from KneePipelineLib import labels as L
    from KneePipelineLib.errors import LabelConventionError

    scene = segNode.GetScene()
    seg = segNode.GetSegmentation()
    names = [seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())]
    known = [n for n in names if n in L.TISSUE_CODES]
    if not known:
        raise LabelConventionError("None of the segments (%s) is named like a knee tissue." % ", ".join(names),
                                   hint="Name segments femur, tibia, patella, femoral_cartilage, ... or export "
                                        "the segmentation to a label map and choose its convention.")
    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "KneePipeline export colors")
    labelmap = None
    try:
        colors.SetTypeToUser()
        colors.SetNumberOfColors(max(L.TISSUES) + 1)
        colors.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
        for value, name in L.TISSUES.items():
            colors.SetColor(value, name, 1.0, 1.0, 1.0, 1.0)
        ids = vtk.vtkStringArray()
        for name in known:
            ids.InsertNextValue(seg.GetSegmentIdBySegmentName(name))
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "KneePipeline export")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segNode, ids, labelmap, referenceVolume, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors)
        if not ok:
            raise RuntimeError("Could not export the segmentation %s to a label map." % segNode.GetName())
    except BaseException:
        if labelmap is not None:
            scene.RemoveNode(labelmap)
        raise
    finally:
        scene.RemoveNode(colors)
    return labelmap


#
# Widget
#
class KneePipelineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._job = None        # "run" | "setup" while a background process is followed
        self._loaded = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KneePipeline.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KneePipelineLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # Slicer calls cleanup() when it unloads the module at exit; aboutToQuit comes earlier, while the
        # pipeline process can still be stopped cleanly.
        slicer.app.connect("aboutToQuit()", self.cleanup)

        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.loadRunButton.connect("clicked(bool)", self.onLoadRunButton)
        self.ui.setupEnvButton.connect("clicked(bool)", self.onSetupEnvButton)
        self.ui.checkEnvButton.connect("clicked(bool)", self.onCheckEnvButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReportButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module unloaded (reload, exit) or Slicer quitting: stop the background process, drop observers.
        Safe to call more than once."""
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.cancel(wait=True)
        self.removeObservers()
        try:
            slicer.app.disconnect("aboutToQuit()", self.cleanup)
        except Exception:  # already disconnected
            pass

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun)

    def onSceneStartClose(self, caller, event) -> None:
        # A run exports from and loads into this scene: stop it. An environment set-up does not depend on
        # the scene and keeps going.
        if self._job == "run" and self.logic is not None and self.logic.running:
            self.logic.cancel(wait=True)
            self._appendLog("Run cancelled: the scene was closed.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if node and not node.IsA("vtkMRMLLabelMapVolumeNode"):
                p.inputVolume = node
        if not _path_or_none(p.pythonEnvironment):
            default = self.logic.defaultPython()
            if default:
                p.pythonEnvironment = pathlib.Path(default)
        if not _path_or_none(p.outputDirectory):
            # an unset pathlib.Path is Path("."), which the path line edit would show as "."
            p.outputDirectory = pathlib.Path(self.logic.defaultOutputFolder())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun):
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun)
            self._setModelToolTips()
            self._checkCanRun()

    def _setModelToolTips(self) -> None:
        """connectGui refills the model combo from the Choice annotation; give its items the display names."""
        names = {m.id: m.display_name for m in list_models(kind="segmentation")}
        combo = self.ui.modelComboBox
        for i in range(combo.count):
            combo.setItemData(i, names.get(combo.itemText(i), ""), qt.Qt.ToolTipRole)

    def _checkCanRun(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self.logic.running
        has_input = bool(p and (p.inputVolume or p.inputLabels))
        self.ui.runButton.enabled = has_input and not busy
        self.ui.runButton.toolTip = ("Run the pipeline" if has_input else "Select a knee MRI or an existing segmentation")
        self.ui.cancelButton.enabled = busy
        self.ui.setupEnvButton.enabled = not busy
        self.ui.modelComboBox.enabled = not (p and p.inputLabels)
        self.ui.echoesPathLineEdit.enabled = bool(p and p.t2Enabled)

    # -- actions --------------------------------------------------------------------------------
    def onRunButton(self) -> None:
        self.ui.logTextEdit.clear()
        self.ui.openReportButton.enabled = False
        try:
            # shows the message (and the KneePipelineError's hint, part of str(error)), then re-raises
            with slicer.util.tryWithErrorDisplay("Could not start the pipeline.", waitCursor=True):
                self.logic.startRun(self._parameterNode)
        except Exception as exc:
            self.ui.resultsLabel.text = "Not started."
            self._appendLog("ERROR: %s" % exc)
            self._checkCanRun()
            return
        self.ui.resultsLabel.text = "Running..."
        self._startFollowing("run")

    def onCancelButton(self) -> None:
        self.logic.cancel(wait=False)
        self.ui.stepLabel.text = "Cancelling..."

    def onSetupEnvButton(self) -> None:
        if self.logic.running:
            return
        target = self.logic.defaultEnvironmentFolder()
        if not slicer.util.confirmOkCancelDisplay(
                "Create the pipeline environment in\n%s\n\nThis downloads several GB (torch, nnU-Net) and takes "
                "a while. Slicer's own Python is not changed." % target, windowTitle="KneePipeline set-up"):
            return
        self.ui.logTextEdit.clear()
        self.ui.logCollapsibleButton.collapsed = False
        try:
            with slicer.util.tryWithErrorDisplay("Could not start the set-up.", waitCursor=True):
                self.logic.startEnvironmentSetup(target)
        except Exception as exc:
            self._appendLog("ERROR: %s" % exc)
            return
        self._startFollowing("setup")

    def onCheckEnvButton(self) -> None:
        if not self._parameterNode:
            return
        with slicer.util.tryWithErrorDisplay("Could not check the environment.", waitCursor=True):
            info = self.logic.checkEnvironment(_path_or_none(self._parameterNode.pythonEnvironment) or "")
            if info.get("usable"):
                self.ui.envStatusLabel.text = "Ready: Python %s, torch %s, CUDA %s." % (
                    ".".join(str(v) for v in info["version"]), info["modules"].get("torch"),
                    "available" if info.get("cuda") else "not available")
            else:
                self.ui.envStatusLabel.text = info.get("problem", "Not usable.")

    def onLoadRunButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "KneePipeline run folder")
        if folder:
            with slicer.util.tryWithErrorDisplay("Could not load the results.", waitCursor=True):
                self._showResults(self.logic.loadResults(folder, replace=self._replaceResults()))

    def _replaceResults(self) -> bool:
        return bool(self._parameterNode.replaceResults) if self._parameterNode else True

    def onOpenReportButton(self) -> None:
        if self._loaded is not None and self._loaded.report_path:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._loaded.report_path))

    # -- following the background process -----------------------------------------------------
    def _startFollowing(self, job: str) -> None:
        self._job = job
        self.ui.progressBar.value = 0
        self.ui.stepLabel.text = "Starting..."
        self._timer.start()
        self._checkCanRun()

    def _appendLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onPoll(self) -> None:
        runner = self.logic.runner
        if runner is None:
            self._timer.stop()
            return
        for event in runner.poll():
            kind = event.get("event")
            if kind in ("log", "warning"):
                self._appendLog(("WARNING: " if kind == "warning" else "") + str(event.get("message", "")))
            elif kind == "error":
                self._appendLog("ERROR: %s\nHint: %s" % (event.get("message"), event.get("hint")))
        s = runner.status
        self.ui.progressBar.value = int(round(100 * s.fraction))
        if s.step:
            eta = " (about %d s left)" % s.eta_s if isinstance(s.eta_s, (int, float)) and s.eta_s > 1 else ""
            self.ui.stepLabel.text = "Step %d/%d: %s - %s%s" % (s.step_index, s.step_total, s.step, s.message, eta)
        if s.done:
            self._timer.stop()
            try:
                self._onFinished(s)
            finally:
                self._checkCanRun()   # re-enable Run even when loading the results failed

    def _onFinished(self, s) -> None:
        job, self._job = self._job, None
        self.logic.removeTempFiles()   # the exported inputs, whatever the outcome
        if s.state == "complete":
            self.ui.progressBar.value = 100
            self.ui.stepLabel.text = "Done in %.0f s." % s.elapsed_s
            if job == "setup":
                python = (s.result or {}).get("python")
                if python:
                    if self._parameterNode:
                        self._parameterNode.pythonEnvironment = pathlib.Path(python)
                    slicer.app.userSettings().setValue(SETTINGS_PYTHON, python)
                self.ui.envStatusLabel.text = "Environment ready: %s" % python
                return
            with slicer.util.tryWithErrorDisplay("The run finished but its results could not be loaded.", waitCursor=True):
                self._showResults(self.logic.loadResults(self.logic.outDir, replace=self._replaceResults()))
            return
        err = s.error or {}
        self.ui.stepLabel.text = "%s: %s" % (s.state.capitalize(), err.get("message", ""))
        self.ui.resultsLabel.text = "No results (%s)." % s.state
        if s.state != "cancelled":
            slicer.util.errorDisplay("%s\n\n%s" % (err.get("message", "The run failed."), err.get("hint", "")),
                                     windowTitle="KneePipeline")

    def _showResults(self, loaded) -> None:
        self._loaded = loaded
        lines = loaded.summary_lines() or ["Results loaded."]
        self.ui.resultsLabel.text = "\n".join(lines)
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.openReportButton.enabled = bool(loaded.report_path)
        background = self._parameterNode.inputVolume if self._parameterNode else None
        self.logic.showResults(loaded, background=background)


#
# Logic
#
class KneePipelineLogic(ScriptedLoadableModuleLogic):
    """Glue: parameters -> RunOptions -> background runner -> slicer_io. No pipeline step lives here."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.runner = None
        self.outDir = None
        self._tempFiles = []

    def getParameterNode(self):
        return KneePipelineParameterNode(super().getParameterNode())

    # -- environment ----------------------------------------------------------------------------
    def settingsFolder(self) -> str:
        return os.path.dirname(slicer.app.slicerUserSettingsFilePath)

    def defaultOutputFolder(self) -> str:
        """Where runs go when the user chose no folder: a KneePipeline folder in Slicer's temporary folder."""
        return os.path.join(slicer.app.temporaryPath, "KneePipeline")

    @staticmethod
    def childBaseEnvironment() -> dict:
        """The environment for every foreign Python this module starts or probes: Slicer's *startup*
        environment (Slicer's own sets PYTHONHOME/PYTHONPATH for its Python, which breaks another one)."""
        return dict(slicer.util.startupEnvironment())

    def defaultEnvironmentFolder(self) -> str:
        from KneePipelineLib import envsetup

        return envsetup.default_env_dir(self.settingsFolder())

    def defaultPython(self) -> Optional[str]:
        from KneePipelineLib import envsetup

        for cand in (os.environ.get(PYTHON_ENV), slicer.app.userSettings().value(SETTINGS_PYTHON),
                     envsetup.env_python(self.defaultEnvironmentFolder())):
            if cand and os.path.exists(str(cand)):
                return str(cand)
        return None

    def resolvePython(self, path: Optional[str]) -> str:
        from KneePipelineLib import envsetup
        from KneePipelineLib.errors import ConfigurationError

        python = envsetup.resolve_python(path or self.defaultPython() or "")
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            raise ConfigurationError("The pipeline cannot run in Slicer's own Python.",
                                     hint="Press 'Set up' to create a separate environment, or choose one.")
        return python

    def checkEnvironment(self, path: str) -> dict:
        from KneePipelineLib import envsetup

        return envsetup.check_environment(self.resolvePython(path), env=self.childBaseEnvironment())

    def startEnvironmentSetup(self, envDir: str):
        from KneePipelineLib import envsetup, runner
        from KneePipelineLib.errors import ConfigurationError

        base = envsetup.find_base_python(env=self.childBaseEnvironment())
        if not base:
            raise ConfigurationError("No Python 3.10 or newer was found on this computer to build the environment from.",
                                     hint="Install Python 3.11 (python.org or conda), or choose an existing environment.")
        cmd = [base, "-u", "-m", "KneePipelineLib.envsetup", "--env-dir", envDir, "--forbid-python", sys.executable]
        env = runner.child_environment(self.childBaseEnvironment(), [LIBRARY_PARENT])
        self.runner = runner.PipelineRunner(cmd, env=env).start()
        return self.runner

    # -- runs -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    def exportInputs(self, params, workDir: str):
        """(image path, labels path, convention) written as NRRD into ``workDir`` (inputs are not modified)."""
        image = labels = None
        convention = params.labelConvention
        if params.inputVolume:
            image = os.path.join(workDir, "input_image.nrrd")
            self._export(params.inputVolume, image)
        if params.inputLabels:
            node = params.inputLabels
            labels = os.path.join(workDir, "input_labels.nrrd")
            if node.IsA("vtkMRMLSegmentationNode"):
                exported = segmentation_to_canonical_labelmap(node, params.inputVolume)
                try:
                    self._export(exported, labels)
                finally:
                    exported.GetScene().RemoveNode(exported)
                convention = "dosma"   # segment names -> canonical (DOSMA) values
            else:
                self._export(node, labels)
        return image, labels, convention

    def _export(self, node, path: str) -> None:
        """Write ``node`` to ``path`` in world coordinates (a parent transform is hardened into the copy, so the
        results line up with what the user sees); the scene's own node and storage are not changed."""
        self._tempFiles.append(path)
        # a fresh properties dict each call: exportNode stores the chosen fileFormat in it
        if not slicer.util.exportNode(node, path, {}, world=True):
            raise RuntimeError("Could not write %s to %s (see the error log)." % (node.GetName(), path))

    def buildOptions(self, params, image: Optional[str], labels: Optional[str], convention: str, outDir: str):
        from KneePipelineLib.options import RunOptions

        from KneePipelineLib.errors import ConfigurationError

        echoes = _path_or_none(params.echoesPath) if params.t2Enabled else None
        if params.t2Enabled and not echoes:
            raise ConfigurationError("T2 mapping is on but no echo images were chosen.",
                                     hint="Choose the multi-echo series (DICOM folder, zip or 4D volume), or turn "
                                          "T2 mapping off.")
        opts = RunOptions(out_dir=outDir, image=image, labels=labels, label_convention=convention,
                          model=params.model or "nnunet_fullres", device=params.device, tta=bool(params.tta),
                          step_size=float(params.stepSize), bone_smooth_var_mm2=float(params.boneSmoothVarMm2),
                          cartilage_smooth_var_mm2=float(params.cartilageSmoothVarMm2), nsm=params.nsm,
                          echoes=[echoes] if echoes else None,
                          timeout_s=float(params.timeoutMinutes) * 60.0 if params.timeoutMinutes else None)
        return opts.validate()

    def newOutputFolder(self, params) -> str:
        base = _path_or_none(params.outputDirectory) or self.defaultOutputFolder()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = (params.inputVolume or params.inputLabels).GetName() if (params.inputVolume or params.inputLabels) else "run"
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        folder = os.path.join(base, "%s-%s" % (safe, stamp))
        os.makedirs(folder, exist_ok=True)
        return folder

    def startRun(self, params, python: Optional[str] = None):
        from KneePipelineLib import runner
        from KneePipelineLib.errors import ConfigurationError

        if self.running:
            raise RuntimeError("A run is already in progress.")
        python = self.resolvePython(python or _path_or_none(params.pythonEnvironment))
        if not (params.inputVolume or params.inputLabels):
            raise ConfigurationError("No input selected.", hint="Select a knee MRI or an existing segmentation.")
        outDir = self.newOutputFolder(params)
        os.makedirs(slicer.app.temporaryPath, exist_ok=True)
        workDir = tempfile.mkdtemp(prefix="KneePipeline-inputs-", dir=slicer.app.temporaryPath)
        try:
            image, labels, convention = self.exportInputs(params, workDir)
            opts = self.buildOptions(params, image, labels, convention, outDir)
        except BaseException:
            self.removeTempFiles()
            raise
        self.outDir = outDir
        logging.info("KneePipeline: %s -m KneePipelineLib %s", python, " ".join(opts.to_argv()))
        # Hard limit slightly above the pipeline's own time limit, so the pipeline reports it first.
        hard = opts.timeout_s * 1.1 + 30 if opts.timeout_s else None
        try:
            self.runner = runner.start_pipeline(python, opts.to_argv(), env=slicer.util.startupEnvironment(),
                                                pythonpath=[LIBRARY_PARENT], timeout_s=hard, out_dir=outDir)
        except BaseException:
            self.removeTempFiles()
            raise
        return self.runner

    def cancel(self, wait: bool = False) -> None:
        if self.runner is not None and self.runner.running:
            self.runner.cancel(wait=wait)
        if wait:
            self.removeTempFiles()

    def removeTempFiles(self) -> None:
        """Delete the exported inputs and their folder (never called while a run reads them)."""
        if self.running:
            return
        folders = []
        for path in self._tempFiles:
            try:
                os.remove(path)
            except OSError:
                pass
            if os.path.dirname(path) not in folders:
                folders.append(os.path.dirname(path))
        for folder in folders:
            try:
                os.rmdir(folder)
            except OSError:
                pass
        self._tempFiles = []

    def loadResults(self, runDir: str, replace: bool = True):
        from KneePipelineLib.slicer_io import load_run

        self.removeTempFiles()
        return load_run(slicer.mrmlScene, runDir, replace=replace)

    def showResults(self, loaded, background=None) -> None:
        """Slice views show the sub-regions over ``background`` (the input MRI; None keeps the current
        background); a plot view shows the regional thickness chart."""
        if loaded.regions is not None:
            slicer.util.setSliceViewerLayers(background=background if background is not None else "keep-current",
                                             label=loaded.regions, fit=True)
        if loaded.chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(loaded.chart)

    def runSynchronously(self, params, python: Optional[str] = None, timeout_s: float = 1800.0):
        """Start and wait (self-test, scripting), keeping the GUI responsive."""
        self.startRun(params, python)
        end = time.time() + timeout_s
        while self.runner.running and time.time() < end:
            self.runner.poll()
            slicer.app.processEvents()
            time.sleep(0.1)
        if self.runner.running:
            self.runner.cancel(wait=True)
        self.removeTempFiles()
        return self.runner.status


#
# Self-test
#
class KneePipelineTest(ScriptedLoadableModuleTest):
    """Runs the real pipeline on the real sample label map (existing-segmentation path: no model weights)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ExistingSegmentation()

    def _sampleLabels(self) -> str:
        candidates = [os.environ.get(SAMPLE_LABELS_ENV)]
        repo = os.path.dirname(_HERE)
        candidates.append(os.path.join(os.path.dirname(repo), "shared", "data", "pymskt",
                                       "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"))
        cache = os.environ.get("KNEEPIPELINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kneepipeline")
        candidates.append(os.path.join(cache, "sample-data", "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"))
        for c in candidates:
            if c and os.path.isfile(c):
                return c
        raise RuntimeError("Sample label map not found; set %s or run `kneepipeline sample-data`." % SAMPLE_LABELS_ENV)

    def test_ExistingSegmentation(self):
        self.delayDisplay("Running the pipeline on the sample label map")
        labelsNode = slicer.util.loadLabelVolume(self._sampleLabels())
        logic = KneePipelineLogic()
        params = logic.getParameterNode()
        params.inputLabels = labelsNode
        params.labelConvention = "pymskt"
        params.outputDirectory = pathlib.Path(tempfile.mkdtemp(prefix="KneePipelineTest-"))
        status = logic.runSynchronously(params, python=os.environ.get(PYTHON_ENV) or logic.defaultPython())
        self.assertEqual(status.state, "complete", msg=str(status.error))
        self.assertEqual(status.fraction, 1.0)
        loaded = logic.loadResults(logic.outDir)
        seg = loaded.segmentation.GetSegmentation()
        for name in ("femur", "tibia", "patella", "femoral_cartilage"):
            self.assertTrue(seg.GetSegmentIdBySegmentName(name), name)
        femur = loaded.models["femur"]
        self.assertEqual(femur.GetDisplayNode().GetActiveScalarName(), "thickness_mm")
        self.assertIsNotNone(loaded.regions)
        self.assertIsNotNone(loaded.chart)
        self.assertEqual(loaded.laterality, "right")
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(femur)), loaded.folder_item)
        logic.showResults(loaded)
        self.delayDisplay("Test passed")
