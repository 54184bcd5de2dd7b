"""KneePipelineWidget: the panel. Buttons start background jobs (run, set-up, check, sample data) that a
QTimer polls; nothing here blocks the GUI for longer than an export or a scene load."""
import pathlib
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from KneePipelineLib.registry import list_models

from .logic import KneePipelineLogic
from .parameters import GuiBinding, path_or_none

POLL_INTERVAL_MS = 200
RELOADED_PACKAGES = ("KneePipelineLib", "KneePipelineModule")


class KneePipelineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.binding = None
        self._timer = None
        self._job = None        # "run" | "setup" | "check" | "sample-data" | "sample-run" while one is followed
        self._checkPython = None
        self._loaded = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KneePipeline.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = KneePipelineLogic()
        self.binding = GuiBinding(self.ui)

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
        self.ui.sampleDataButton.connect("clicked(bool)", self.onSampleDataButton)
        self.ui.setupEnvButton.connect("clicked(bool)", self.onSetupEnvButton)
        self.ui.checkEnvButton.connect("clicked(bool)", self.onCheckEnvButton)
        self.ui.openReportButton.connect("clicked(bool)", self.onOpenReportButton)
        self.ui.compareRunButton.connect("clicked(bool)", self.onCompareRunButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module unloaded (reload, exit) or Slicer quitting: stop the background job, drop observers.
        Safe to call more than once."""
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.cancel(wait=True)
        if self.binding is not None:
            self.binding.release()
        self.removeObservers()
        try:
            slicer.app.disconnect("aboutToQuit()", self.cleanup)
        except Exception:  # already disconnected
            pass

    def onReload(self) -> None:
        """Developer "Reload": re-import the library and this package too, not only KneePipeline.py."""
        for name in sorted(sys.modules):
            if name.split(".")[0] in RELOADED_PACKAGES:
                del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    # -- parameter node (connected once per node: see parameters.py) ----------------------------
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        pass   # the binding stays: reconnecting on the next enter is what reset the combos in Slicer 5.8

    def onSceneStartClose(self, caller, event) -> None:
        # A run exports from and loads into this scene: stop it. Set-up and Check do not depend on the scene.
        if self._job in ("run", "sample-run") and self.logic is not None and self.logic.running:
            self.logic.cancel(wait=True)
            self._appendLog("Run cancelled: the scene was closed.")
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @property
    def _parameterNode(self):
        return self.binding.node if self.binding is not None else None

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        p = self._parameterNode
        if not p.inputVolume:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if node and not node.IsA("vtkMRMLLabelMapVolumeNode"):
                p.inputVolume = node
        if not path_or_none(p.pythonEnvironment):
            default = self.logic.install.defaultPython()
            if default:
                p.pythonEnvironment = pathlib.Path(default)
        if not path_or_none(p.outputDirectory):
            # an unset pathlib.Path is Path("."), which the path line edit would show as "."
            p.outputDirectory = pathlib.Path(self.logic.defaultOutputFolder())

    def setParameterNode(self, node) -> None:
        old = self._parameterNode
        if node is not None and old is not None and node.parameterNode is old.parameterNode:
            return   # the same parameter node: already connected
        if old is not None and self.hasObserver(old.parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun):
            self.removeObserver(old.parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun)
        self.binding.bind(node)   # releases the old node's connection first
        if node is not None:
            self.addObserver(node.parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanRun)
            self._setModelToolTips()
            self._checkCanRun()

    def _setModelToolTips(self) -> None:
        """connectGui fills the model combo from the Choice annotation; give its items the display names."""
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
        for button in (self.ui.setupEnvButton, self.ui.checkEnvButton, self.ui.sampleDataButton):
            button.enabled = not busy
        self.ui.modelComboBox.enabled = not (p and p.inputLabels)
        self.ui.echoesPathLineEdit.enabled = bool(p and p.t2Enabled)

    # -- actions --------------------------------------------------------------------------------
    def _start(self, job: str, what: str, start) -> bool:
        """Run ``start()`` (which starts a background job); on an error show it with its hint."""
        try:
            with slicer.util.tryWithErrorDisplay("Could not start the %s." % what, waitCursor=True):
                start()
        except Exception as exc:
            self._appendLog("ERROR: %s" % exc)
            self._checkCanRun()
            return False
        self._startFollowing(job)
        return True

    def onRunButton(self) -> None:
        self.ui.logTextEdit.clear()
        self.ui.openReportButton.enabled = False
        if self._start("run", "pipeline", lambda: self.logic.startRun(self._parameterNode)):
            self.ui.resultsLabel.text = "Running..."
        else:
            self.ui.resultsLabel.text = "Not started."

    def onSampleDataButton(self) -> None:
        self.ui.logTextEdit.clear()
        self.ui.logCollapsibleButton.collapsed = False
        self._appendLog("Fetching the sample knee (segmentation of a right knee, 3D DESS)...")
        self._start("sample-data", "sample data download", lambda: self.logic.startSampleData(self._parameterNode))

    def onCancelButton(self) -> None:
        self.logic.cancel(wait=False)
        self.ui.stepLabel.text = "Cancelling..."

    def onSetupEnvButton(self) -> None:
        if self.logic.running:
            return
        target = self.logic.install.defaultEnvironmentFolder()
        base = self.logic.install.basePythonChoice(path_or_none(self._parameterNode.pythonEnvironment)
                                                   if self._parameterNode else None, target)
        source = ("from the Python you chose (%s)" % base) if base else "with its own Python, downloaded by uv"
        if not slicer.util.confirmOkCancelDisplay(
                "Create the pipeline environment in\n%s\n%s.\n\nThis downloads torch and nnU-Net (several GB) "
                "and takes a while. Slicer's own Python only gets the small 'uv' installer." % (target, source),
                windowTitle="KneePipeline set-up"):
            return
        self.ui.logTextEdit.clear()
        self.ui.logCollapsibleButton.collapsed = False
        self._start("setup", "set-up", lambda: self.logic.startEnvironmentSetup(target, base))

    def onCheckEnvButton(self) -> None:
        if not self._parameterNode or self.logic.running:
            return
        self.ui.envStatusLabel.text = "Checking (the first import of torch takes a while)..."

        def start():
            _, self._checkPython = self.logic.startCheck(path_or_none(self._parameterNode.pythonEnvironment))
        if not self._start("check", "check", start):
            self.ui.envStatusLabel.text = "Not checked."

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

    def onCompareRunButton(self) -> None:
        """The loaded run is the follow-up; the user picks the earlier visit's run folder."""
        if self._loaded is None:
            return
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Earlier run of this knee (baseline)")
        if folder:
            current = self._loaded.run_dir
            self._start("compare", "comparison", lambda: self.logic.startCompare(self._parameterNode, folder, current))

    # -- following the background job -----------------------------------------------------------
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
            if kind in ("log", "warning") and self._job != "check":
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
                self._checkCanRun()   # re-enable the buttons even when loading the results failed

    def _onFinished(self, s) -> None:
        job, self._job = self._job, None
        self.logic.removeTempFiles()   # the exported inputs, whatever the outcome
        if job == "check":
            self._showCheck(self.logic.install.checkResult(self.logic.runner, self._checkPython))
            return
        if s.state == "complete":
            self.ui.progressBar.value = 100
            self.ui.stepLabel.text = "Done in %.0f s." % s.elapsed_s
            if job == "setup":
                python = (s.result or {}).get("python")
                if python:
                    if self._parameterNode:
                        self._parameterNode.pythonEnvironment = pathlib.Path(python)
                    self.logic.install.remember(python)
                self.ui.envStatusLabel.text = "Environment ready: %s" % python
            elif job == "compare":
                with slicer.util.tryWithErrorDisplay("The comparison finished but could not be loaded.", waitCursor=True):
                    loaded = self.logic.loadComparison(self.logic.outDir)
                    self.ui.resultsLabel.text = "Change from %s: bones coloured by cartilage change (±%.2f mm), " \
                        "table 'Cartilage change'." % (loaded["document"]["baseline"]["visit"], loaded["limit_mm"])
            elif job == "sample-data":
                folder = (s.result or {}).get("sample_data")
                self._start("sample-run", "sample run",
                            lambda: self.logic.startSampleRun(self._parameterNode, folder))
            else:
                with slicer.util.tryWithErrorDisplay("The run finished but its results could not be loaded.", waitCursor=True):
                    self._showResults(self.logic.loadResults(self.logic.outDir, replace=self._replaceResults()),
                                      overInput=(job == "run"))
            return
        err = s.error or {}
        self.ui.stepLabel.text = "%s: %s" % (s.state.capitalize(), err.get("message", ""))
        self.ui.resultsLabel.text = "No results (%s)." % s.state
        if s.state != "cancelled":
            slicer.util.errorDisplay("%s\n\n%s" % (err.get("message", "The job failed."), err.get("hint", "")),
                                     windowTitle="KneePipeline")

    def _showCheck(self, info) -> None:
        if info.get("usable"):
            gpu = "CUDA" if info.get("cuda") else ("Apple MPS" if info.get("mps") else "no GPU (CPU)")
            self.ui.envStatusLabel.text = "Ready: Python %s, torch %s, %s." % (
                ".".join(str(v) for v in info["version"]), info["modules"].get("torch"), gpu)
        else:
            self.ui.envStatusLabel.text = info.get("problem", "Not usable.")

    def _showResults(self, loaded, overInput: bool = True) -> None:
        self._loaded = loaded
        lines = loaded.summary_lines() or ["Results loaded."]
        self.ui.resultsLabel.text = "\n".join(lines)
        self.ui.resultsCollapsibleButton.collapsed = False
        self.ui.openReportButton.enabled = bool(loaded.report_path)
        self.ui.compareRunButton.enabled = True
        background = self._parameterNode.inputVolume if (overInput and self._parameterNode) else None
        self.logic.showResults(loaded, background=background)
