"""Apple GPUs (MPS): ``auto`` picks cuda > mps > cpu everywhere, the CLI turns on torch's MPS->CPU operation
fallback before torch loads, and a step the Apple GPU cannot run reruns on the CPU with a warning.

No Mac exists here, so MPS *availability* is monkeypatched (``torch.backends.mps.is_available``; also
``torch.cuda.is_available`` for the order). Nothing else is: with availability claimed, this Linux torch
really fails to put a network on "mps" (``RuntimeError: PyTorch is not linked with support for mps
devices``), which is exactly the kind of error the per-step fallback must turn into a CPU run and a warning.
On a real Mac these fallback tests are skipped (the GPU would simply run).
"""
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.devices import MPS_FALLBACK_ENV, auto_device, enable_mps_fallback  # noqa: E402
from KneePipelineLib.errors import ConfigurationError  # noqa: E402
from KneePipelineLib.io.volume import Volume  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.registry import get_model  # noqa: E402
from KneePipelineLib.segmentation.nnunet import predict_nnunet, select_device  # noqa: E402
from KneePipelineLib.shape.model import resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
REAL_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_built())


def _claim(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu_for_every_torch_step(monkeypatch, cuda, mps, expected):
    _claim(monkeypatch, cuda, mps)
    assert auto_device(torch).type == expected
    assert select_device("auto").type == expected      # nnU-Net and the 2D U-Nets
    assert resolve_device("auto").type == expected     # the NSM fit


def test_mps_asked_for_without_an_apple_gpu_is_a_clear_configuration_error(monkeypatch):
    _claim(monkeypatch, False, False)
    for pick in (select_device, resolve_device):
        with pytest.raises(ConfigurationError) as err:
            pick("mps")
        assert "mps" in err.value.message.lower() and "cpu" in err.value.hint


def test_the_cli_enables_torchs_mps_fallback_before_any_command_and_keeps_a_users_choice(monkeypatch):
    from KneePipelineLib.cli import main

    monkeypatch.delenv(MPS_FALLBACK_ENV, raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ[MPS_FALLBACK_ENV] == "1"
    env = {MPS_FALLBACK_ENV: "0"}
    enable_mps_fallback(env)
    assert env[MPS_FALLBACK_ENV] == "0"


@pytest.mark.skipif(REAL_MPS, reason="this torch has MPS: the Apple GPU would run the step")
def test_nnunet_step_the_apple_gpu_cannot_run_reruns_on_the_cpu_with_a_warning(monkeypatch):
    _claim(monkeypatch, False, True)
    rng = np.random.default_rng(0)
    img = Volume(rng.normal(300, 80, (24, 48, 48)).astype(np.float32), (0.36, 0.36, 0.7), (0, 0, 0), np.eye(3))
    opts = RunOptions(out_dir="x", image="x", device="mps", threads=1, model_dir=str(TINY))
    res = predict_nnunet(img, get_model("nnunet_fullres"), TINY / "models" / "Dataset500_KneeMRI", opts)
    assert res.model["device"] == "cpu"
    assert any("Apple GPU (MPS)" in w and "CPU" in w for w in res.model["warnings"]), res.model["warnings"]
    assert res.labels.array.shape == img.array.shape


@pytest.mark.skipif(REAL_MPS, reason="this torch has MPS: the Apple GPU would run the step")
def test_2d_unet_the_apple_gpu_cannot_hold_runs_on_the_cpu_with_a_warning(monkeypatch, tmp_path):
    from test_dosma import ACQUISITIONS, box_volume, entry, threshold_model

    from KneePipelineLib.segmentation import dosma

    _claim(monkeypatch, False, True)
    threshold_model(tmp_path / "m.h5")
    img = box_volume(ACQUISITIONS["sagittal"])
    res = dosma.predict_dosma(img, entry("sagittal"), tmp_path / "m.h5", RunOptions(device="mps"))
    assert res.model["device"] == "cpu"
    assert any("Apple GPU (MPS)" in w for w in res.model["warnings"]), res.model["warnings"]
