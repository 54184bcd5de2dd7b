"""The NSM fit's memory estimate (shape/memory.py) and the refusal before the fit starts: `kneepipeline nsm`
on a machine reporting too little memory stops with insufficient_memory (exit 34), the figures in the message,
nothing written. The estimate's constants come from bench/bench_nsm_memory.py (peak RSS of the full-size
published decoder at 10 000 / 20 000 / 40 000 points per step: 866 / 988 / 1248 MB in
bench/results/nsm_memory-20261208-000535.json; 881 / 1016 / 1279 MB in an earlier run on the same machine)."""
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")

from KneePipelineLib.errors import InsufficientMemoryError  # noqa: E402
from KneePipelineLib.resources import SAFETY, simulated_available_memory  # noqa: E402
from KneePipelineLib.shape.decoder import NsmArchitecture  # noqa: E402
from KneePipelineLib.shape.memory import nsm_fit_bytes, parts, require_nsm_memory  # noqa: E402

SMALL = Path(__file__).resolve().parent / "fixtures" / "nsm_small"
PUBLISHED = NsmArchitecture(512, 2, (512,) * 5, 2, 128, (512,) * 3)
MEASURED_MB = {10000: (866.4, 880.6), 20000: (988.3, 1016.1), 40000: (1248.2, 1279.1)}   # two runs, fit only


def test_estimate_bounds_the_measured_peaks_closely():
    for n, (lo, hi) in MEASURED_MB.items():
        est = nsm_fit_bytes(PUBLISHED, [n // 2, n // 2], n, mesh_resolution=0) / 2 ** 20
        assert hi <= est <= 1.05 * lo, (n, est, lo, hi)
    p = parts(PUBLISHED, [10000, 10000], 20000)
    assert p["weights"] == pytest.approx(4 * 20_800_386, rel=1e-3)        # the published decoder's parameters
    assert parts(PUBLISHED, [10000, 10000], 10000)["points_per_step"] == 10000    # samples split over surfaces
    assert parts(PUBLISHED, [3000, 10000], 20000)["points_per_step"] == 13000     # at most each surface


def test_refusal_threshold_and_message_figures():
    need = nsm_fit_bytes(PUBLISHED, [10000, 10000], 20000, 256)
    with simulated_available_memory(int(need / SAFETY) + 1024):
        require_nsm_memory(PUBLISHED, [10000, 10000], 20000, 256)
    with simulated_available_memory(int(need / SAFETY) - 1024 ** 2):
        with pytest.raises(InsufficientMemoryError) as err:
            require_nsm_memory(PUBLISHED, [10000, 10000], 20000, 256)
    msg = err.value.message
    assert "%.2f GB" % (need / 1e9) in msg and "latent 512" in msg and "20.8 M parameters" in msg
    assert "20000 points per step" in msg and "meshes at 256" in msg and "device cpu" in msg
    assert "--nsm-samples" in err.value.hint and "--nsm-mesh-resolution" in err.value.hint


def test_nsm_command_refuses_before_fitting_on_a_small_machine(tmp_path, femur_meshes_dir, capsys):
    from KneePipelineLib.cli import main

    out = tmp_path / "out"
    with simulated_available_memory(300 * 10 ** 6):
        rc = main(["--progress", "none", "nsm", "--femur", str(sorted(femur_meshes_dir.glob("*.vtk"))[0]),
                   "--laterality", "right", "--nsm-dir", str(SMALL), "--out", str(out), "--no-bscore",
                   "--iterations", "1", "--mesh-resolution", "64", "--device", "cpu", "--threads", "1", "--json"])
    assert rc == 34
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    err = doc["error"]
    assert err["category"] == "insufficient_memory" and "0.30 GB available" in err["message"]
    assert "latent 16" in err["message"] and "points per step" in err["message"] and "meshes at 64" in err["message"]
    assert not out.exists()
