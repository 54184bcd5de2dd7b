"""Shared fixtures: the real sample data (found or fetched once per session) and small helpers.

The real sample files (label map, MESE series, femur meshes) come from
:func:`KneePipelineLib.sample_data.ensure_sample_data`: ``../shared/data`` (or ``$KNEEPIPELINE_SHARED/data``,
``$KNEEPIPELINE_SAMPLE_DATA``) first, then the user cache ``~/.cache/kneepipeline/sample-data`` (or
``$KNEEPIPELINE_CACHE``), and when neither holds them the mskt 0.1.22 archive is fetched from PyPI into the
cache, sha256-checked. A test skips only when the package index cannot be reached, and says so.
"""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data"
BSCORE_DIR = SHARED / "bscore"

_SAMPLE: dict = {}


def sample_data_root() -> Path:
    """The folder laid out like ``shared/data`` with the sample files (fetched once); skips only when the
    package index is unreachable."""
    if "root" not in _SAMPLE and "skip" not in _SAMPLE:
        from KneePipelineLib import sample_data as SD

        try:
            _SAMPLE["root"] = SD.ensure_sample_data()
        except SD.IndexUnreachableError as exc:
            _SAMPLE["skip"] = ("real sample data: not in %s nor the cache %s, and the package index is unreachable "
                               "to fetch it (%s)" % (SHARED, SD.default_cache(), exc.message))
    if "skip" in _SAMPLE:
        pytest.skip(_SAMPLE["skip"])
    return _SAMPLE["root"]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip("shared sample data not present: %s" % path)
    return path


@pytest.fixture(scope="session")
def sample_data_dir() -> Path:
    return sample_data_root()


@pytest.fixture(scope="session")
def sample_labels_path(sample_data_dir) -> Path:
    from KneePipelineLib.sample_data import SAMPLE_LABELS

    return sample_data_dir / SAMPLE_LABELS


@pytest.fixture(scope="session")
def mese_dir(sample_data_dir) -> Path:
    from KneePipelineLib.sample_data import SAMPLE_MESE

    return sample_data_dir / SAMPLE_MESE


@pytest.fixture(scope="session")
def femur_meshes_dir(sample_data_dir) -> Path:
    from KneePipelineLib.sample_data import SAMPLE_FEMUR_MESHES

    return sample_data_dir / SAMPLE_FEMUR_MESHES


@pytest.fixture(scope="session")
def bscore_dir() -> Path:
    return need(BSCORE_DIR)


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread (small models are faster so on a shared 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
