"""KneePipelineTest: the self-test Slicer runs (ctest, "Reload and Test", slicer.testing.runUnitTest).

1. Offline, always: a small run folder written by KneePipelineLib.slicer_io.sample_run is loaded into the
   scene (segments, terminology, models with thickness, regions, tables, chart, one folder).
2. The real pipeline on the real sample label map (existing-segmentation path, no model weights), only when
   a pipeline environment and the sample label map exist; otherwise skipped with the reason.
"""
import os
import pathlib
import tempfile

import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from .install import PYTHON_ENV
from .logic import SAMPLE_LABELS, KneePipelineLogic

SAMPLE_LABELS_ENV = "KNEEPIPELINE_SAMPLE_LABELS"


class KneePipelineTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_LoadSampleRunOffline()
        self.setUp()
        self.test_ExistingSegmentation()

    # -- 1 ----------------------------------------------------------------------------------------
    def test_LoadSampleRunOffline(self):
        from KneePipelineLib.slicer_io.sample_run import write_sample_run

        self.delayDisplay("Loading a small generated run folder")
        folder = write_sample_run(os.path.join(tempfile.mkdtemp(prefix="KneePipelineTest-"), "sample-run"))
        logic = KneePipelineLogic()
        loaded = logic.loadResults(folder)
        seg = loaded.segmentation.GetSegmentation()
        for name in ("femur", "tibia", "femoral_cartilage"):
            self.assertTrue(seg.GetSegmentIdBySegmentName(name), name)
        entry = vtk.mutable("")
        seg.GetSegment(seg.GetSegmentIdBySegmentName("femur")).GetTag("TerminologyEntry", entry)
        self.assertIn("71341001", str(entry))
        femur = loaded.models["femur"]
        self.assertEqual(femur.GetDisplayNode().GetActiveScalarName(), "thickness_mm")
        self.assertIsNotNone(loaded.regions)
        self.assertIsNotNone(loaded.chart)
        self.assertEqual(loaded.laterality, "right")
        shNode = slicer.mrmlScene.GetSubjectHierarchyNode()
        self.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(femur)), loaded.folder_item)
        logic.showResults(loaded)
        self.delayDisplay("Offline test passed")

    # -- 2 ----------------------------------------------------------------------------------------
    def _sampleLabels(self):
        candidates = [os.environ.get(SAMPLE_LABELS_ENV)]
        here = os.path.dirname(os.path.abspath(__file__))
        repo = os.path.dirname(os.path.dirname(here))
        candidates.append(os.path.join(os.path.dirname(repo), "shared", "data", *SAMPLE_LABELS.split("/")))
        cache = os.environ.get("KNEEPIPELINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kneepipeline")
        candidates.append(os.path.join(cache, "sample-data", *SAMPLE_LABELS.split("/")))
        return next((c for c in candidates if c and os.path.isfile(c)), None)

    def test_ExistingSegmentation(self):
        logic = KneePipelineLogic()
        python = os.environ.get(PYTHON_ENV) or logic.install.defaultPython()
        labels = self._sampleLabels()
        if not python:
            self.skipTest("no pipeline environment: press 'Set up' in the module or set %s" % PYTHON_ENV)
        if not labels:
            self.skipTest("sample label map not found: set %s or run `kneepipeline sample-data`" % SAMPLE_LABELS_ENV)
        self.delayDisplay("Running the pipeline on the sample label map")
        labelsNode = slicer.util.loadLabelVolume(labels)
        params = logic.getParameterNode()
        params.inputLabels = labelsNode
        params.labelConvention = "pymskt"
        params.outputDirectory = pathlib.Path(tempfile.mkdtemp(prefix="KneePipelineTest-"))
        status = logic.runSynchronously(params, python=python)
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
