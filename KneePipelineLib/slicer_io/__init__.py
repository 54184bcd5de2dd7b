"""Qt-free scene building for the Slicer module: ``load_run(scene, run_dir)`` (Python 3.9-safe).

Everything here takes a ``vtkMRMLScene`` argument, so it runs in the Slicer application and, for tests,
against PyPI's ``slicer-core`` (Slicer's real MRML classes without Qt).
"""
from .loader import (LoadError, LoadedRun, ensure_logics, existing_runs, load_model, load_run,  # noqa: F401
                     load_segmentation, regional_thickness, remove_run, table_from_rows, terminology_entry)
