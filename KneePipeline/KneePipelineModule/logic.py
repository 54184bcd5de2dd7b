"""KneePipelineLogic: parameters -> RunOptions -> the background run -> the scene. No pipeline step lives here:
runs are ``python -m KneePipelineLib ...`` in the separate environment (KneePipelineLib.runner), results are
loaded by the Qt-free KneePipelineLib.slicer_io.
"""
import logging
import os
import tempfile
import time
from typing import Optional

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from .export import segmentation_to_canonical_labelmap
from .install import InstallLogic, library_parent
from .parameters import KneePipelineParameterNode, path_or_none

SAMPLE_LABELS = "pymskt/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"   # KneePipelineLib.sample_data


class KneePipelineLogic(ScriptedLoadableModuleLogic):
    """Glue: parameters -> RunOptions -> background runner -> slicer_io."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.install = InstallLogic()
        self.runner = None
        self.outDir = None
        self._tempFiles = []

    def getParameterNode(self):
        return KneePipelineParameterNode(super().getParameterNode())

    def defaultOutputFolder(self) -> str:
        """Where runs go when the user chose no folder: a KneePipeline folder in Slicer's temporary folder."""
        return os.path.join(slicer.app.temporaryPath, "KneePipeline")

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.running

    # -- inputs -> options -----------------------------------------------------------------------
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
        from KneePipelineLib.errors import ConfigurationError
        from KneePipelineLib.options import RunOptions

        echoes = path_or_none(params.echoesPath) if params.t2Enabled else None
        if params.t2Enabled and not echoes:
            raise ConfigurationError("T2 mapping is on but no echo images were chosen.",
                                     hint="Choose the multi-echo series (DICOM folder, zip or 4D volume), or turn "
                                          "T2 mapping off.")
        opts = RunOptions(out_dir=outDir, image=image, labels=labels, label_convention=convention,
                          model=params.model or "nnunet_fullres", device=params.device, tta=bool(params.tta),
                          step_size=float(params.stepSize), profile=params.profile, bone_smooth_var_mm2=float(params.boneSmoothVarMm2),
                          cartilage_smooth_var_mm2=float(params.cartilageSmoothVarMm2), nsm=params.nsm,
                          echoes=[echoes] if echoes else None,
                          timeout_s=float(params.timeoutMinutes) * 60.0 if params.timeoutMinutes else None)
        return opts.validate()

    def newOutputFolder(self, params, name: Optional[str] = None) -> str:
        base = path_or_none(params.outputDirectory) or self.defaultOutputFolder()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        node = params.inputVolume or params.inputLabels
        name = name or (node.GetName() if node else "run")
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        folder = os.path.join(base, "%s-%s" % (safe, stamp))
        os.makedirs(folder, exist_ok=True)
        return folder

    # -- runs ------------------------------------------------------------------------------------
    def startRun(self, params, python: Optional[str] = None):
        """Export the selected nodes and start the pipeline on them."""
        from KneePipelineLib.errors import ConfigurationError

        if self.running:
            raise RuntimeError("A run is already in progress.")
        python = self.install.resolvePython(python or path_or_none(params.pythonEnvironment))
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
        return self._start(python, opts, outDir)

    def startSampleData(self, params, python: Optional[str] = None):
        """First stage of "Try with sample data": fetch the sample knee (``kneepipeline sample-data``)."""
        from KneePipelineLib import runner

        if self.running:
            raise RuntimeError("A run is already in progress.")
        python = self.install.resolvePython(python or path_or_none(params.pythonEnvironment))
        self.outDir = None
        self.runner = runner.start_pipeline(python, ["sample-data"], env=self.install.childBaseEnvironment(),
                                            pythonpath=[library_parent()])
        return self.runner

    def startSampleRun(self, params, sampleFolder: str, python: Optional[str] = None):
        """Second stage: the existing-segmentation path on the sample label map (no model download)."""
        python = self.install.resolvePython(python or path_or_none(params.pythonEnvironment))
        labels = os.path.join(sampleFolder, *SAMPLE_LABELS.split("/"))
        outDir = self.newOutputFolder(params, name="sample-knee")
        opts = self.buildOptions(params, None, labels, "pymskt", outDir)
        return self._start(python, opts, outDir)

    def startCompare(self, params, baselineDir: str, followupDir: str, python: Optional[str] = None):
        """``kneepipeline longitudinal`` in the pipeline environment: the earlier run (baseline) against the
        current one; the comparison goes into a new output folder."""
        from KneePipelineLib import runner

        if self.running:
            raise RuntimeError("A job is already in progress.")
        python = self.install.resolvePython(python or path_or_none(params.pythonEnvironment))
        outDir = self.newOutputFolder(params, name="change-" + os.path.basename(os.path.normpath(followupDir)))
        self.outDir = outDir
        argv = ["longitudinal", "--baseline", baselineDir, "--followup", followupDir, "--out", outDir,
                "--progress", "json"]
        self.runner = runner.start_pipeline(python, argv, env=self.install.childBaseEnvironment(),
                                            pythonpath=[library_parent()], out_dir=outDir)
        return self.runner

    def loadComparison(self, outDir: str):
        from KneePipelineLib.slicer_io.longitudinal import load_longitudinal

        return load_longitudinal(slicer.mrmlScene, outDir)

    def _start(self, python: str, opts, outDir: str):
        from KneePipelineLib import runner

        self.outDir = outDir
        logging.info("KneePipeline: %s -m KneePipelineLib %s", python, " ".join(opts.to_argv()))
        # Hard limit slightly above the pipeline's own time limit, so the pipeline reports it first.
        hard = opts.timeout_s * 1.1 + 30 if opts.timeout_s else None
        try:
            self.runner = runner.start_pipeline(python, opts.to_argv(), env=slicer.util.startupEnvironment(),
                                                pythonpath=[library_parent()], timeout_s=hard, out_dir=outDir)
        except BaseException:
            self.removeTempFiles()
            raise
        return self.runner

    def startEnvironmentSetup(self, envDir: str, basePython: Optional[str] = None):
        if self.running:
            raise RuntimeError("A job is already in progress.")
        self.runner = self.install.startEnvironmentSetup(envDir, basePython)
        return self.runner

    def startCheck(self, path: Optional[str]):
        if self.running:
            raise RuntimeError("A job is already in progress.")
        self.runner, python = self.install.startCheck(path)
        return self.runner, python

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
        self.install.cleanup()

    # -- results ---------------------------------------------------------------------------------
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
