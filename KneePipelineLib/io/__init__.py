"""Input and output: images, label maps, DICOM series, safe zip extraction, checks of what was read, writers.

Names are imported lazily so that the standard-library-only parts (``io.writers``) can be used from
Slicer's Python (the manifest writes through them) without importing numpy or SimpleITK.
"""
from typing import Any

__all__ = ["Volume", "read_volume", "read_image", "read_labels"]


def __getattr__(name: str) -> Any:
    if name == "Volume":
        from .volume import Volume
        return Volume
    if name in ("read_volume", "read_image", "read_labels"):
        from . import readers
        return getattr(readers, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
