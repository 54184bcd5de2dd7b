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


# -- the real knee's morphometry, computed once per session and shared by the morphometry tests --------
def mirror_volume(v):
    """A physical mirror image (a left knee from a right one): flip the array axis nearest LPS x."""
    import numpy as np
    from KneePipelineLib.io import Volume

    axis_ijk = int(np.argmax(np.abs(v.direction[0])))
    return Volume(np.flip(v.array, axis=2 - axis_ijk).copy(), v.spacing_mm, v.origin_mm, v.direction)


@pytest.fixture(scope="session")
def real_knee_labels(sample_labels_path):
    """The real sample label map in canonical labels (a right knee)."""
    from KneePipelineLib import labels as L
    from KneePipelineLib.io import read_labels

    v = read_labels(sample_labels_path)
    return v.with_array(L.remap(v.array, L.CONVENTIONS["pymskt"]))


@pytest.fixture(scope="session")
def real_knee_morphometry(real_knee_labels):
    from KneePipelineLib.morphometry import analyze_labels

    return analyze_labels(real_knee_labels)


@pytest.fixture(scope="session")
def left_knee_morphometry(real_knee_labels):
    """The same knee mirrored into a left knee, analysed once."""
    from KneePipelineLib.morphometry import analyze_labels

    return analyze_labels(mirror_volume(real_knee_labels))


@pytest.fixture(scope="session")
def coarse_knee_path(tmp_path_factory, sample_labels_path):
    """The real knee on a 3 x 3 x 2 coarser grid (``bad_inputs.coarse_knee``: 128 x 128 x 80, canonical labels,
    NRRD; a run in ~2 CPU-s), written once per session and shared: tests use it as an input only."""
    from bad_inputs import coarse_knee

    return coarse_knee(sample_labels_path, tmp_path_factory.mktemp("coarse_knee") / "knee.nrrd")


@pytest.fixture(scope="session")
def sample_analyze_run(tmp_path_factory, sample_labels_path):
    """One real ``kneepipeline analyze`` (the CLI in a subprocess, report on) of the sample label map per
    session, shared by test_pipeline and test_slicer_io (one full-size analysis instead of two): its folder,
    its JSON-lines progress events and the input's sha256 taken before the run. Tests only read the folder."""
    import hashlib
    import json
    import subprocess

    digest = hashlib.sha256(sample_labels_path.read_bytes()).hexdigest()
    out = tmp_path_factory.mktemp("sample_analyze") / "run"
    proc = subprocess.run([sys.executable, "-m", "KneePipelineLib", "analyze", "--labels", str(sample_labels_path),
                           "--label-convention", "pymskt", "--out", str(out)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, "analyze failed on the sample label map:\n%s" % proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {"dir": out, "events": events, "input_sha256": digest}
