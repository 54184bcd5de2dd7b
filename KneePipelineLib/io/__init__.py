"""Input and output: images, label maps, DICOM series, safe zip extraction, writers."""
from .volume import Volume
from .readers import read_volume, read_image, read_labels

__all__ = ["Volume", "read_volume", "read_image", "read_labels"]
