"""The set-up plan on fake Windows, macOS and Linux computers: fake Pythons (scripts that answer the probe
like a real interpreter of a given version would) on fake search paths, and uv's managed-Python plan that
does not depend on them at all."""
import json
import os
import stat
import sys

import pytest

from KneePipelineLib import envpython as P
from KneePipelineLib import envsetup as E
from KneePipelineLib.errors import ConfigurationError


def fake_python(folder, name, version=(3, 12, 1), venv=True, works=True):
    """An executable that prints what the probe script would print for a Python of ``version``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    info = {"version": list(version), "executable": str(path), "prefix": str(folder), "in_slicer": False,
            "modules": {}, "venv": venv}
    body = "echo '%s'" % json.dumps(info) if works else "echo 'Python was not found; run without arguments to install from the Microsoft Store' >&2; exit 9009"
    path.write_text("#!/bin/sh\n%s\n" % body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


pytestmark = pytest.mark.skipif(os.name == "nt", reason="fake interpreters are POSIX shell scripts")
UV = "/opt/uv/bin/uv"


# -- Windows ---------------------------------------------------------------------------------------------
def test_windows_store_placeholders_only_is_a_clear_error_without_uv_and_irrelevant_with_it(tmp_path):
    apps = tmp_path / "Users" / "u" / "AppData" / "Local" / "Microsoft" / "WindowsApps"
    fake_python(apps, "python.exe", works=False)
    fake_python(apps, "python3.exe", works=False)
    env = {"Path": str(apps), "SystemRoot": "C:\\Windows"}          # Windows spells it Path
    found = P.survey_pythons(env, system="Windows")
    assert [f.problem for f in found] == ["the Microsoft Store placeholder, not a Python"] * 2
    with pytest.raises(ConfigurationError) as e:
        E.choose_method(None, env=env, system="Windows")
    assert "Store placeholder" in e.value.message and "Microsoft Store" in e.value.hint
    choice = E.choose_method(UV, env=env, system="Windows")
    assert choice.method == "uv-managed" and choice.python_version == (3, 12)


def test_windows_path_key_is_searched(tmp_path):
    good = fake_python(tmp_path / "Python312", "python.exe", (3, 12, 4))
    env = {"Path": "C:\\nothing;%s" % good.parent}
    assert P.find_base_python(env=env, system="Windows") == str(good)
    choice = E.choose_method(None, env=env, system="Windows")
    assert (choice.method, choice.base_python, choice.python_version) == ("venv", str(good), (3, 12))
    assert P.find_base_python(env={"PATH_LIKE": str(good.parent)}, system="Windows") is None


def test_windows_plan_uses_uv_managed_python_and_local_app_data(tmp_path):
    local = "C:\\Users\\u\\AppData\\Local"
    env_dir = E.default_env_dir("C:\\Users\\u\\AppData\\Roaming\\slicer.org", system="Windows",
                                environ={"LOCALAPPDATA": local})
    assert env_dir.startswith(local) and "Roaming" not in env_dir
    assert E.default_env_dir("/s", system="Windows", environ={}) == os.path.join("/s", E.ENV_FOLDER_NAME)
    steps = E.plan_setup(env_dir, None, "cu128", E.TORCH_INDEX + "cu128", use_uv=UV, system="Windows")
    py = P.env_python(env_dir, "Windows")
    assert py.endswith(os.path.join("Scripts", "python.exe"))
    assert steps[0].argv == [UV, "venv", "--no-config", "--python", E.MANAGED_PYTHON, "--python-preference",
                             "only-managed", env_dir]
    assert steps[0].extra_env["UV_PYTHON_INSTALL_DIR"] == E.managed_python_dir(env_dir)
    for s in steps[1:-1]:
        assert s.argv[:6] == [UV, "pip", "install", "--no-config", "--python", py], s.name
    assert steps[-1].argv[0] == py
    assert [s.name for s in steps] == ["venv", "torch", "pipeline", "verify"]


def test_no_console_windows_on_windows():
    flags = P.no_window_flags("Windows")["creationflags"]
    assert flags & 0x08000000   # CREATE_NO_WINDOW
    assert P.no_window_flags("Linux") == {} and P.no_window_flags("Darwin") == {}


# -- macOS -----------------------------------------------------------------------------------------------
def test_macos_from_finder_has_only_python39(tmp_path):
    usr = fake_python(tmp_path / "usr" / "bin", "python3", (3, 9, 6))
    env = {"PATH": "%s:%s" % (usr.parent, tmp_path / "bin")}
    with pytest.raises(ConfigurationError) as e:
        E.choose_method(None, env=env, system="Darwin")
    assert "3.9" in e.value.message and str(usr) in e.value.message
    assert "too old" in e.value.hint
    with pytest.raises(ConfigurationError) as e:           # choosing it by hand is refused too
        E.choose_method(UV, base_python=str(usr), env=env, system="Darwin")
    assert "3.9" in e.value.message
    choice = E.choose_method(UV, env=env, system="Darwin")
    assert choice.method == "uv-managed"
    variant, url, _ = E.choose_torch(E.GpuReport(), system="Darwin")
    steps = E.plan_setup(str(tmp_path / "env"), None, variant, url, use_uv=UV, system="Darwin")
    assert "--index-url" not in steps[1].argv and steps[1].argv[-1] == "torch==" + E.TORCH_VERSION


# -- Linux -----------------------------------------------------------------------------------------------
def test_debian_python_without_venv_module_names_the_package(tmp_path):
    py = fake_python(tmp_path / "usr" / "bin", "python3.11", (3, 11, 2), venv=False)
    env = {"PATH": str(py.parent)}
    with pytest.raises(ConfigurationError) as e:
        E.choose_method(None, env=env, system="Linux")
    assert "venv module" in e.value.message
    assert "python3.11-venv" in e.value.hint and "internet connection" not in e.value.hint.split(",")[0]
    # uv does not need the venv module: the same Python works as a chosen base with uv
    choice = E.choose_method(UV, base_python=str(py), env=env, system="Linux")
    assert (choice.method, choice.python_version) == ("uv-base", (3, 11))
    steps = E.plan_setup(str(tmp_path / "env"), str(py), "cpu", E.TORCH_INDEX + "cpu", use_uv=UV, system="Linux")
    assert steps[0].argv == [UV, "venv", "--no-config", "--python", str(py), str(tmp_path / "env")]


def test_no_python_on_path_at_all(tmp_path):
    env = {"PATH": str(tmp_path / "empty")}
    assert P.survey_pythons(env, system="Linux") == []
    with pytest.raises(ConfigurationError) as e:
        E.choose_method(None, env=env, system="Linux")
    assert "no python on the search path" in e.value.message and "Set up" in e.value.hint
    assert E.choose_method(UV, env=env, system="Linux").method == "uv-managed"


def test_newest_usable_python_wins_and_old_ones_are_named(tmp_path):
    fake_python(tmp_path / "a", "python3", (3, 10, 12))
    new = fake_python(tmp_path / "b", "python3.12", (3, 12, 3))
    env = {"PATH": "%s:%s" % (tmp_path / "a", tmp_path / "b")}
    found = P.survey_pythons(env, system="Linux")
    assert [(f.path, f.usable) for f in found] == [(str(new), True), (str(tmp_path / "a" / "python3"), False)]
    assert "older than 3.11" in found[1].problem


def test_one_python_floor_everywhere():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert P.MIN_PYTHON == E.MIN_PYTHON == (3, 11)
    req = re.search(r'^requires-python = ">=(\d+)\.(\d+)"', (root / "pyproject.toml").read_text(), re.M)
    assert tuple(int(x) for x in req.groups()) == P.MIN_PYTHON
    assert tuple(int(x) for x in E.MANAGED_PYTHON.split(".")) >= P.MIN_PYTHON
    doc = (root / "docs" / "SLICER_MODULE.md").read_text()
    assert "3.11" in doc and "3.10" not in doc


def test_local_torch_wheel_matches_python_platform_and_build(tmp_path):
    for n in ("torch-%s+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "torch-%s+cu128-cp312-cp312-manylinux_2_28_x86_64.whl",
              "torch-%s-cp312-none-macosx_11_0_arm64.whl", "torch-%s+cpu-cp312-cp312-win_amd64.whl"):
        (tmp_path / (n % E.TORCH_VERSION)).write_bytes(b"")
    d = [str(tmp_path)]
    assert E.local_torch_wheel(d, (3, 11), "cpu", "Linux", "x86_64").endswith("cp311-cp311-manylinux_2_28_x86_64.whl")
    assert E.local_torch_wheel(d, (3, 12), "cpu", "Linux", "x86_64") is None          # wrong Python
    assert E.local_torch_wheel(d, (3, 11), "cu128", "Linux", "x86_64") is None        # wrong build
    assert "cu128" in E.local_torch_wheel(d, (3, 12), "cu128", "Linux", "x86_64")
    assert "macosx" in E.local_torch_wheel(d, (3, 12), "default", "Darwin", "arm64")
    assert E.local_torch_wheel(d, (3, 12), "default", "Darwin", "x86_64") is None
    assert "win_amd64" in E.local_torch_wheel(d, (3, 12), "cpu", "Windows", "AMD64")
    assert E.find_links_dirs({"PIP_FIND_LINKS": "%s /nope" % tmp_path}) == [str(tmp_path)]


def test_check_runs_the_probe_as_a_job_and_judges_it(tmp_path):
    """What the panel's Check does: the probe command in the background runner, then judged."""
    from KneePipelineLib import runner

    job = runner.PipelineRunner(P.probe_command(sys.executable, ("json",)), env=runner.child_environment()).start()
    status = job.wait(timeout=60)
    stdout = "\n".join(e["message"] for e in job.events if e.get("stream") == "stdout")
    info = P.judge_environment(sys.executable, P.parse_probe_output(status.returncode, stdout))
    assert info["usable"] and tuple(info["version"][:2]) == sys.version_info[:2]
    old = fake_python(tmp_path, "python3", (3, 9, 18))
    job = runner.PipelineRunner(P.probe_command(str(old)), env=runner.child_environment()).start()
    status = job.wait(timeout=60)
    stdout = "\n".join(e["message"] for e in job.events if e.get("stream") == "stdout")
    info = P.judge_environment(str(old), P.parse_probe_output(status.returncode, stdout))
    assert not info["usable"] and "3.9 is too old" in info["problem"]
    broken = P.judge_environment("/nope/python", P.parse_probe_output(1, "", "No such file"))
    assert not broken["usable"] and "does not run" in broken["problem"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("KNEEPIPELINE_E2E_SETUP"), reason="downloads the pipeline's packages from PyPI: set "
                    "KNEEPIPELINE_E2E_SETUP=<base python> to run the real set-up through uv")
def test_real_setup_through_uv_then_check_accepts_it(tmp_path):
    """The whole set-up for real: uv from PyPI, the environment from scratch, packages from the index, then
    the Check the panel runs."""
    import subprocess

    from pathlib import Path

    uv = os.environ.get("KNEEPIPELINE_UV")
    if not uv:
        uv = pytest.importorskip("uv", reason="set KNEEPIPELINE_UV or pip install uv").find_uv_bin()

    root = Path(__file__).resolve().parents[1]
    env_dir = tmp_path / "env"
    out = subprocess.run([sys.executable, "-m", "KneePipelineLib.envsetup", "--env-dir", str(env_dir),
                          "--uv", uv, "--base-python", os.environ["KNEEPIPELINE_E2E_SETUP"]],
                         cwd=str(root), capture_output=True, text=True, timeout=3000)
    assert out.returncode == 0, out.stderr[-3000:]
    info = P.check_environment(P.env_python(str(env_dir)))
    assert info["usable"], info["problem"]
