"""The pipeline's Python environment as seen from Slicer: where it is, Set up and Check as background jobs.

Set up does not depend on the computer's Pythons: ``uv`` is installed into Slicer's Python from PyPI
(``slicer.util.pip_install``, a small wheel), then ``python -m KneePipelineLib.envsetup`` runs in Slicer's
Python in the background and lets uv create the environment with its own pinned CPython
(``envsetup.MANAGED_PYTHON``) and install torch and the pipeline. Choosing an existing Python (conda / venv)
in the Python field and pressing Check is the alternative. Every foreign Python gets Slicer's *startup*
environment (Slicer's own sets PYTHONHOME / library paths for its Python, which break another one).
"""
import json
import logging
import os
import sys
import tempfile
from typing import Optional

import slicer

SETTINGS_PYTHON = "KneePipeline/PythonEnvironment"
PYTHON_ENV = "KNEEPIPELINE_PYTHON"


def library_parent() -> str:
    """The folder that holds KneePipelineLib (on sys.path; see KneePipeline.py)."""
    import KneePipelineLib

    return os.path.dirname(os.path.dirname(os.path.abspath(KneePipelineLib.__file__)))


class InstallLogic:
    """Environment location, uv, and the Set up / Check jobs (each returns a started PipelineRunner)."""

    def __init__(self) -> None:
        self._childEnvFile = None

    # -- where things are ------------------------------------------------------------------------
    @staticmethod
    def childBaseEnvironment() -> dict:
        """The environment for every foreign Python this module starts or probes."""
        return dict(slicer.util.startupEnvironment())

    @staticmethod
    def settingsFolder() -> str:
        return os.path.dirname(slicer.app.slicerUserSettingsFilePath)

    def defaultEnvironmentFolder(self) -> str:
        from KneePipelineLib import envsetup

        return envsetup.default_env_dir(self.settingsFolder(), environ=self.childBaseEnvironment())

    def defaultPython(self) -> Optional[str]:
        """$KNEEPIPELINE_PYTHON, else the remembered choice, else the environment 'Set up' makes."""
        from KneePipelineLib import envpython

        for cand in (os.environ.get(PYTHON_ENV), slicer.app.userSettings().value(SETTINGS_PYTHON),
                     envpython.env_python(self.defaultEnvironmentFolder())):
            if cand and os.path.exists(str(cand)):
                return str(cand)
        return None

    def remember(self, python: str) -> None:
        slicer.app.userSettings().setValue(SETTINGS_PYTHON, python)

    def resolvePython(self, path: Optional[str]) -> str:
        from KneePipelineLib import envpython
        from KneePipelineLib.errors import ConfigurationError

        python = envpython.resolve_python(path or self.defaultPython() or "")
        if os.path.realpath(python) == os.path.realpath(sys.executable):
            raise ConfigurationError("The pipeline cannot run in Slicer's own Python.",
                                     hint="Press 'Set up' to create a separate environment, or choose one.")
        return python

    @staticmethod
    def slicerPython() -> str:
        """Slicer's Python as a command (PythonSlicer sets up Slicer's Python environment itself)."""
        import shutil

        exe = shutil.which("PythonSlicer")
        if not exe:
            name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
            cand = os.path.join(os.path.dirname(sys.executable), name)
            exe = cand if os.path.isfile(cand) else sys.executable
        return exe

    def basePythonChoice(self, fieldValue: Optional[str], envDir: str) -> Optional[str]:
        """The Python field names a Python other than the environment Set up makes (a conda or python.org
        Python): Set up builds from it (behind a firewall that blocks uv's Python download). Else None."""
        from KneePipelineLib import envpython

        if not fieldValue:
            return None
        try:
            python = envpython.resolve_python(fieldValue)
        except Exception:  # noqa: BLE001 - a stale path: Set up brings its own Python
            return None
        own = envpython.env_python(envDir)
        if os.path.realpath(python) in (os.path.realpath(own), os.path.realpath(sys.executable)):
            return None
        return python

    # -- uv --------------------------------------------------------------------------------------
    @staticmethod
    def uvExecutable(install: bool = True) -> Optional[str]:
        """uv inside Slicer's Python; installed from PyPI on first use (one ~18 MB wheel, no other package)."""
        from KneePipelineLib import envsetup

        try:
            import uv
        except ImportError:
            if not install:
                return None
            slicer.util.pip_install("uv==%s" % envsetup.UV_VERSION)
            import importlib

            importlib.invalidate_caches()
            import uv
        try:
            return uv.find_uv_bin()
        except Exception:  # noqa: BLE001 - a broken uv wheel: fall back to a base Python
            return None

    # -- jobs ------------------------------------------------------------------------------------
    def startEnvironmentSetup(self, envDir: str, basePython: Optional[str] = None):
        """Start building the environment in ``envDir`` (uv + managed CPython, or from ``basePython``)."""
        from KneePipelineLib import runner

        uv = None
        try:
            uv = self.uvExecutable()
        except Exception as exc:  # noqa: BLE001 - offline: fall back to a Python of the computer
            logging.warning("KneePipeline: could not install uv into Slicer's Python (%s); looking for a base "
                            "Python instead.", exc)
        os.makedirs(slicer.app.temporaryPath, exist_ok=True)
        fd, self._childEnvFile = tempfile.mkstemp(prefix="KneePipeline-env-", suffix=".json",
                                                  dir=slicer.app.temporaryPath)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.childBaseEnvironment(), fh)
        cmd = [self.slicerPython(), "-u", "-m", "KneePipelineLib.envsetup", "--env-dir", envDir,
               "--forbid-python", sys.executable, "--child-env", self._childEnvFile]
        if uv:
            cmd += ["--uv", uv]
        if basePython:
            cmd += ["--base-python", basePython]
        # the driver runs in Slicer's Python, so it keeps Slicer's environment; its commands get the startup one
        env = runner.child_environment(dict(os.environ), [library_parent()])
        return runner.PipelineRunner(cmd, env=env).start()

    def startCheck(self, path: Optional[str]):
        """Start probing the chosen Python (it imports torch, which takes a while)."""
        from KneePipelineLib import envpython, runner

        python = self.resolvePython(path)
        cmd = envpython.probe_command(python)
        return runner.PipelineRunner(cmd, env=runner.child_environment(self.childBaseEnvironment())).start(), python

    @staticmethod
    def checkResult(job, python: str) -> dict:
        """A finished Check job -> ``usable`` / ``problem`` / versions (envpython.judge_environment)."""
        from KneePipelineLib import envpython

        stdout = "\n".join(str(e.get("message", "")) for e in job.events if e.get("stream") == "stdout")
        stderr = "\n".join(job.stderr_tail)
        return envpython.judge_environment(python, envpython.parse_probe_output(job.status.returncode, stdout, stderr))

    def cleanup(self) -> None:
        if self._childEnvFile and os.path.exists(self._childEnvFile):
            try:
                os.remove(self._childEnvFile)
            except OSError:
                pass
        self._childEnvFile = None
