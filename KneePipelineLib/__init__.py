"""KneePipeline library: knee MRI -> segmentation -> meshes, cartilage thickness, T2, NSM and B-score.

Importable without Slicer. Modules that Slicer's own Python imports (``options``, ``progress``,
``errors``, ``manifest``, ``runner``) use only the standard library and Python 3.9 syntax.
"""

__version__ = "0.1.0"
