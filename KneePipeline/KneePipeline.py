"""KneePipeline: quantitative knee MRI in 3D Slicer -- the module's entry point (Python 3.9).

Slicer finds the module here; the panel, logic, parameters, environment set-up and self-test live one per
file in KneePipelineModule/ beside this file. The pipeline itself runs in a separate Python environment as
``python -m KneePipelineLib run ...`` (the same command as the CLI).
"""
import os
import sys

# KneePipelineModule sits beside this file. KneePipelineLib sits beside it in an installed extension, one
# folder up when Slicer runs the source tree ("Additional module paths" = <repo>/KneePipeline).
_HERE = os.path.dirname(os.path.abspath(__file__))
for _folder in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_folder, "KneePipelineLib")) and _folder not in sys.path:
        sys.path.insert(0, _folder)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from slicer.ScriptedLoadableModule import ScriptedLoadableModule  # noqa: E402

from KneePipelineModule.export import segmentation_to_canonical_labelmap  # noqa: E402,F401
from KneePipelineModule.logic import KneePipelineLogic  # noqa: E402,F401
from KneePipelineModule.parameters import (SEGMENTATION_MODELS, KneePipelineParameterNode,  # noqa: E402,F401
                                           path_or_none)
from KneePipelineModule.selftest import KneePipelineTest  # noqa: E402,F401
from KneePipelineModule.widget import KneePipelineWidget  # noqa: E402,F401


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
            "background; set it up once under 'Pipeline environment', or press 'Try with sample data'.")
        self.parent.acknowledgementText = (
            "Built on nnU-Net, DOSMA, pymskt and the NSM / B-score models; see the project's README for "
            "citations and model licences.")
