"""Qt-free scene building for the Slicer module: ``load_run(scene, run_dir)`` (Python 3.9-safe).

Everything here takes a ``vtkMRMLScene`` argument, so it runs in the Slicer application and, for tests,
against PyPI's ``slicer-core`` (Slicer's real MRML classes without Qt). loader.py loads a run folder; the
node types have their own files (volumes, models, tables, terminology); sample_run.py writes a small run
folder for the offline self-test.
"""
from .common import LoadError, ensure_logics  # noqa: F401
from .loader import LoadedRun, existing_runs, load_run, remove_run  # noqa: F401
from .models import load_model  # noqa: F401
from .tables import regional_thickness, table_from_rows  # noqa: F401
from .terminology import terminology_entry  # noqa: F401
from .volumes import load_segmentation  # noqa: F401
