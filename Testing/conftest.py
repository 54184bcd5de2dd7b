import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data"
SAMPLE_LABELS = SHARED / "pymskt" / "SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"
MESE_DIR = SHARED / "pymskt" / "MESE_T2_dicom_anon"
FEMUR_MESHES = SHARED / "pymskt" / "femur_meshes"
BSCORE_DIR = SHARED / "bscore"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip("shared sample data not present: %s" % path)
    return path


@pytest.fixture(scope="session")
def sample_labels_path() -> Path:
    return need(SAMPLE_LABELS)


@pytest.fixture(scope="session")
def mese_dir() -> Path:
    return need(MESE_DIR)


@pytest.fixture(scope="session")
def femur_meshes_dir() -> Path:
    return need(FEMUR_MESHES)


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
