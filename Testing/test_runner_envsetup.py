"""Pipeline environment set-up: torch build from nvidia-smi, the plan, Slicer's Python refused, probing."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from KneePipelineLib import envsetup as E
from KneePipelineLib.errors import ConfigurationError
from KneePipelineLib.progress import parse_line

ROOT = Path(__file__).resolve().parents[1]

NVSMI_H100 = """Tue Nov 25 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:00:07.0 Off |                    0 |
| N/A   32C    P0             71W /  700W |       1MiB /  81559MiB |      0%      Default |
|                                         |                        |             Disabled |
+-----------------------------------------+------------------------+----------------------+
|   1  Tesla T4                       Off |   00000000:00:08.0 Off |                    0 |
| N/A   40C    P8              9W /   70W |       0MiB /  15360MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
"""


def test_parse_nvidia_smi_reads_gpus_driver_and_cuda():
    r = E.parse_nvidia_smi(NVSMI_H100)
    assert r.driver_version == "570.86.15"
    assert r.cuda_version == (12, 8)
    assert [g.name for g in r.gpus] == ["NVIDIA H100 80GB HBM3", "Tesla T4"]
    assert [g.memory_mib for g in r.gpus] == [81559, 15360]


@pytest.mark.parametrize("cuda, variant", [("13.1", "cu130"), ("12.8", "cu128"), ("12.9", "cu128"),
                                           ("12.6", "cu126"), ("12.4", "cpu"), ("11.8", "cpu")])
def test_torch_build_follows_the_driver(cuda, variant):
    report = E.parse_nvidia_smi(NVSMI_H100.replace("CUDA Version: 12.8", "CUDA Version: " + cuda))
    got, url, why = E.choose_torch(report, system="Linux")
    assert got == variant
    assert url == "https://download.pytorch.org/whl/" + variant
    if variant == "cpu":
        assert "driver" in why  # tells the user why the GPU is not used


def test_no_gpu_gives_cpu_build_and_macos_gives_pypi():
    assert E.choose_torch(E.parse_nvidia_smi(""), system="Linux")[0] == "cpu"
    assert E.choose_torch(E.GpuReport(), system="Windows")[:2] == ("cpu", "https://download.pytorch.org/whl/cpu")
    assert E.choose_torch(E.parse_nvidia_smi(NVSMI_H100), system="Darwin")[:2] == ("default", None)
    with pytest.raises(ConfigurationError):
        E.torch_variant_url("cu999")


def test_plan_installs_pinned_torch_then_pipeline_into_the_new_env(tmp_path):
    env_dir = str(tmp_path / "env")
    steps = E.plan_setup(env_dir, "/usr/bin/python3.11", "cu128", "https://download.pytorch.org/whl/cu128",
                         source=str(ROOT))
    names = [s.name for s in steps]
    assert names == ["venv", "pip", "torch", "pipeline", "verify"]
    torch = steps[2].argv
    assert torch[0] == E.env_python(env_dir) and "torch==" + E.TORCH_VERSION in torch
    assert torch[torch.index("--index-url") + 1].endswith("/cu128")
    assert steps[3].argv[-1] == str(ROOT)
    # every pip call runs the new environment's Python, never the base one
    assert all(s.argv[0] == E.env_python(env_dir) for s in steps[1:])
    no_src = E.plan_setup(env_dir, "/usr/bin/python3.11", "cpu", None, source=None)
    assert set(E.DEPENDENCIES) <= set(no_src[3].argv)
    assert "--index-url" not in no_src[2].argv


def test_plan_refuses_slicers_python(tmp_path):
    slicer_py = tmp_path / "Slicer-5.8" / "bin" / "PythonSlicer"
    slicer_py.parent.mkdir(parents=True)
    slicer_py.write_text("")
    with pytest.raises(ConfigurationError) as e:
        E.plan_setup(str(tmp_path / "env"), str(slicer_py), "cpu", None, forbidden_pythons=[str(slicer_py)])
    assert "Slicer" in e.value.message and e.value.hint
    with pytest.raises(ConfigurationError):   # an env folder that *is* Slicer's prefix
        E.plan_setup(str(tmp_path / "Slicer-5.8"), "/usr/bin/python3", "cpu", None, forbidden_pythons=[str(slicer_py)])


def test_dependencies_match_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
    deps = set(re.findall(r'"([^"]+)"', block))
    assert set(E.DEPENDENCIES) == deps - {"torch==" + E.TORCH_VERSION}, \
        "update envsetup.DEPENDENCIES to pyproject.toml's dependency list"
    assert "torch==" + E.TORCH_VERSION in deps


def test_real_venv_step_and_probe(tmp_path):
    """Run the venv step for real (no network), then probe the new env: it lacks the pipeline's packages."""
    from KneePipelineLib.progress import Progress

    env_dir = str(tmp_path / "env")
    events = []
    steps = [E.SetupStep("venv", "Create the environment", [sys.executable, "-m", "venv", "--without-pip", env_dir],
                         skip_if_exists=E.env_python(env_dir))]
    E.run_plan(steps, Progress(sink=events.append))
    assert os.path.isfile(E.env_python(env_dir))
    assert events[-1]["event"] == "step" and events[-1]["fraction"] == 1.0
    assert E.resolve_python(env_dir) == E.env_python(env_dir)
    info = E.check_environment(E.env_python(env_dir))
    assert info["usable"] is False and "torch" in info["missing"] and "Set up" in info["problem"]
    here = E.check_environment(sys.executable)   # the test environment has the whole stack
    assert here["usable"] is True, here.get("problem")


def test_failing_step_raises_with_output_and_hint(tmp_path):
    from KneePipelineLib.errors import KneePipelineError
    from KneePipelineLib.progress import Progress

    steps = [E.SetupStep("pip", "Install", [sys.executable, "-c", "import sys; print('no matching distribution'); sys.exit(1)"])]
    with pytest.raises(KneePipelineError) as e:
        E.run_plan(steps, Progress(sink=lambda ev: None))
    assert "no matching distribution" in e.value.message and "PyPI" in e.value.hint


def test_envsetup_cli_dry_run_speaks_the_protocol(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    out = subprocess.run([sys.executable, "-m", "KneePipelineLib.envsetup", "--env-dir", str(tmp_path / "env"),
                          "--torch", "cpu", "--dry-run"], cwd=str(ROOT), capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    events = [parse_line(l) for l in out.stdout.splitlines()]
    assert events[0]["event"] == "hello"
    msgs = [e["message"] for e in events if e and e["event"] == "log"]
    assert any(m.startswith("torch:") and "whl/cpu" in m for m in msgs)
    # a matching torch wheel in a find-links folder is installed instead of downloaded
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    tag = "cp%d%d" % sys.version_info[:2]
    plat = {"Linux": "manylinux_2_28_x86_64", "Darwin": "macosx_11_0_arm64", "Windows": "win_amd64"}
    name = "torch-%s+cpu-%s-%s-%s.whl" % (E.TORCH_VERSION, tag, tag, plat.get(__import__("platform").system(), "x"))
    (wheels / name).write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "KneePipelineLib.envsetup", "--env-dir", str(tmp_path / "env"),
                          "--torch", "cpu", "--find-links", str(wheels), "--dry-run"], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60, env=env)
    msgs = [e["message"] for e in map(parse_line, out.stdout.splitlines()) if e and e["event"] == "log"]
    torch = next(m for m in msgs if m.startswith("torch:"))
    if __import__("platform").machine().lower() in ("x86_64", "amd64", "arm64"):
        assert torch.endswith(name) and "--index-url" not in torch


def test_resolve_python_errors_are_typed(tmp_path):
    with pytest.raises(ConfigurationError):
        E.resolve_python("")
    with pytest.raises(ConfigurationError):
        E.resolve_python(str(tmp_path / "nope"))
    assert E.default_env_dir("/home/u/.config/NA-MIC", system="Linux") == os.path.join("/home/u/.config/NA-MIC",
                                                                                       E.ENV_FOLDER_NAME)
