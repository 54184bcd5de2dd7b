"""Find and probe the Pythons of a computer for the pipeline environment (Python 3.9-safe, stdlib only).

Used by :mod:`.envsetup` (which builds the environment) and by the Slicer module (Check / choose an existing
Python). Every function takes the operating system (``system``: "Windows", "Darwin", "Linux") and the
environment to search as arguments, so the decisions are tested on fake Windows / macOS / Linux machines:
Windows keeps its search path under ``Path`` as often as ``PATH`` and puts Microsoft Store *placeholders*
(``...\\Microsoft\\WindowsApps\\python.exe``) on it; macOS started from Finder has only ``/usr/bin/python3``
(3.9); Debian / Ubuntu ship Python without its ``venv`` module.
"""
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigurationError

MIN_PYTHON = (3, 11)   # numpy 2.4 / scipy 1.17 need 3.11; pyproject.toml's requires-python says the same
REQUIRED_IMPORTS = ("torch", "nnunetv2", "vtk", "SimpleITK", "numpy", "scipy", "h5py", "huggingface_hub")


def current_system() -> str:
    return platform.system()


def no_window_flags(system: Optional[str] = None) -> Dict[str, Any]:
    """``subprocess`` keyword arguments that keep a console window from flashing up on Windows."""
    if (system or current_system()) == "Windows":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000)}
    return {}


def env_get(env: Optional[Mapping[str, str]], key: str, system: Optional[str] = None) -> Optional[str]:
    """``env[key]``; on Windows names are case-insensitive (the search path is often stored as ``Path``)."""
    env = os.environ if env is None else env
    if key in env:
        return env[key]
    if (system or current_system()) == "Windows":
        for k, v in env.items():
            if k.upper() == key.upper():
                return v
    return None


def env_python(env_dir: str, system: Optional[str] = None) -> str:
    """The interpreter of a virtual environment folder."""
    if (system or current_system()) == "Windows":
        return os.path.join(env_dir, "Scripts", "python.exe")
    return os.path.join(env_dir, "bin", "python")


def python_names(system: Optional[str] = None) -> List[str]:
    """Executable names to look for on the search path, newest first."""
    names = ["python3.13", "python3.12", "python3.11", "python3", "python"]
    if (system or current_system()) == "Windows":
        return [n + ".exe" for n in names]
    return names


def is_store_placeholder(path: str) -> bool:
    """The Microsoft Store's ``python.exe`` placeholder (it opens the Store instead of running Python)."""
    p = path.replace("/", "\\").lower()
    return "\\microsoft\\windowsapps\\" in p


@dataclass
class FoundPython:
    """A Python found on the computer and why it can or cannot be used as a base."""

    path: str
    version: Optional[Tuple[int, int, int]] = None
    problem: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem


# -- probing --------------------------------------------------------------------------------------
_PROBE = r"""
import importlib, json, sys
out = {"version": list(sys.version_info[:3]), "executable": sys.executable, "prefix": sys.prefix,
       "in_slicer": "slicer" in sys.modules or "Slicer" in sys.executable.replace("\\", "/").split("/")[-1],
       "modules": {}}
try:
    import venv, ensurepip  # noqa: F401
    out["venv"] = True
except Exception:
    out["venv"] = False
for name in %r:
    try:
        m = importlib.import_module(name)
        out["modules"][name] = getattr(m, "__version__", "?")
    except Exception as exc:
        out["modules"][name] = None
if "torch" in out["modules"] and out["modules"]["torch"]:
    import torch
    out["cuda"] = bool(torch.cuda.is_available())
    out["cuda_build"] = torch.version.cuda
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = bool(mps is not None and mps.is_available())
print(json.dumps(out))
"""


def probe_command(python: str, imports: Sequence[str] = REQUIRED_IMPORTS) -> List[str]:
    """The command that asks ``python`` for its version and modules (prints one JSON line)."""
    return [python, "-c", _PROBE % (tuple(imports),)]


def parse_probe_output(returncode: Optional[int], stdout: str, stderr: str = "") -> Dict[str, Any]:
    """What :func:`probe_command` printed -> the probe's dictionary (``ok`` False with ``error`` if it failed)."""
    if returncode != 0:
        return {"ok": False, "error": (stderr or stdout).strip()[-2000:] or "exit code %s" % returncode}
    lines = [line for line in stdout.strip().splitlines() if line.strip().startswith("{")]
    try:
        info = json.loads(lines[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": "unexpected output: %s" % stdout[-500:]}
    info["ok"] = True
    info["missing"] = [k for k, v in info.get("modules", {}).items() if not v]
    return info


def probe_python(python: str, imports: Sequence[str] = REQUIRED_IMPORTS, timeout_s: float = 120.0,
                 env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Ask ``python`` for its version and which of ``imports`` it has (never imports them here).
    ``env``: the probe's environment (inside Slicer: ``slicer.util.startupEnvironment()``)."""
    try:
        out = subprocess.run(probe_command(python, imports), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, universal_newlines=True, timeout=timeout_s, env=env,
                             **no_window_flags())
    except (OSError, subprocess.SubprocessError) as exc:
        return {"ok": False, "error": str(exc)}
    return parse_probe_output(out.returncode, out.stdout, out.stderr)


def judge_environment(python: str, info: Dict[str, Any]) -> Dict[str, Any]:
    """A probe's result -> ``usable`` and, if not, ``problem`` (what the panel shows after Check)."""
    info = dict(info)
    if not info.get("ok"):
        info["usable"] = False
        info["problem"] = "The Python at %s does not run: %s" % (python, info.get("error"))
    elif tuple(info["version"][:2]) < MIN_PYTHON:
        info["usable"] = False
        info["problem"] = "Python %d.%d is too old; the pipeline needs %d.%d or newer." % (
            tuple(info["version"][:2]) + MIN_PYTHON)
    elif info.get("missing"):
        info["usable"] = False
        info["problem"] = "Missing packages: %s (press 'Set up')." % ", ".join(info["missing"])
    else:
        info["usable"] = True
        info["problem"] = ""
    return info


def check_environment(python: str, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Probe and judge a chosen Python in one blocking call (CLI, tests; the panel runs it as a job)."""
    return judge_environment(python, probe_python(python, env=env))


# -- finding a base Python ------------------------------------------------------------------------
def candidate_paths(env: Optional[Mapping[str, str]] = None, system: Optional[str] = None,
                    extra: Sequence[str] = ()) -> List[str]:
    """Every distinct Python executable on the search path of ``env`` (plus ``extra``), newest names first."""
    system = system or current_system()
    search = env_get(env, "PATH", system)
    if search is None:
        search = ""
    sep = ";" if system == "Windows" else ":"
    out: List[str] = []
    for name in list(extra) + python_names(system):
        if os.path.isabs(name):
            found = [name] if os.path.isfile(name) else []
        else:
            found = []
            for folder in search.split(sep):
                if not folder:
                    continue
                cand = os.path.join(folder, name)
                if os.path.isfile(cand) and (system == "Windows" or os.access(cand, os.X_OK)):
                    found.append(cand)
        for exe in found:
            if exe not in out:
                out.append(exe)
    return out


def survey_pythons(env: Optional[Dict[str, str]] = None, system: Optional[str] = None,
                   extra: Sequence[str] = (), need_venv: bool = True) -> List[FoundPython]:
    """Each Python on the search path, probed: its version and what keeps it from being a base."""
    system = system or current_system()
    found = []
    for exe in candidate_paths(env, system, extra):
        if system == "Windows" and is_store_placeholder(exe):
            found.append(FoundPython(exe, None, "the Microsoft Store placeholder, not a Python"))
            continue
        info = probe_python(exe, imports=(), env=dict(env) if env is not None else None, timeout_s=30.0)
        if not info.get("ok"):
            found.append(FoundPython(exe, None, "does not run (%s)" % str(info.get("error", ""))[:200]))
            continue
        version = tuple(info["version"][:3])
        fp = FoundPython(exe, version)  # type: ignore[arg-type]
        if info.get("in_slicer"):
            fp.problem = "Slicer's own Python"
        elif version[:2] < MIN_PYTHON:
            fp.problem = "Python %d.%d is older than %d.%d" % (version[:2] + MIN_PYTHON)
        elif need_venv and not info.get("venv", True):
            fp.problem = "its venv module is missing"
        found.append(fp)
    return found


def find_base_python(candidates: Sequence[str] = (), env: Optional[Dict[str, str]] = None,
                     system: Optional[str] = None) -> Optional[str]:
    """The first usable Python (>= MIN_PYTHON, with venv, not Slicer's) on the search path, or None."""
    for fp in survey_pythons(env, system, candidates):
        if fp.usable:
            return fp.path
    return None


def no_base_python_error(found: Sequence[FoundPython], system: Optional[str] = None) -> ConfigurationError:
    """Why no base Python could be used, named per computer, with what to do about it."""
    system = system or current_system()
    seen = "; ".join("%s: %s" % (f.path, f.problem) for f in found) or "no python on the search path"
    hint = "Press 'Set up' while connected to the internet (it brings its own Python), or choose an existing " \
           "Python %d.%d+ environment (conda, venv) in the Python field." % MIN_PYTHON
    if any("venv module" in f.problem for f in found):
        versions = sorted({"%d.%d" % f.version[:2] for f in found if f.version and "venv" in f.problem})
        hint = ("Install the venv module of your Python (Debian/Ubuntu: sudo apt install %s), or press 'Set "
                "up' while connected to the internet." % " ".join("python%s-venv" % v for v in versions))
    elif system == "Windows" and found and all("Store placeholder" in f.problem for f in found):
        hint = ("Only the Microsoft Store placeholders are on this computer. " + hint)
    elif system == "Darwin" and any(f.version and f.version[:2] < MIN_PYTHON for f in found):
        hint = ("macOS's own python3 is too old. " + hint)
    return ConfigurationError("No Python %d.%d or newer that can create environments was found (%s)."
                              % (MIN_PYTHON + (seen,)), hint=hint)


def resolve_python(path: str, system: Optional[str] = None) -> str:
    """A Python executable from what the user typed: an executable, a venv / conda folder."""
    if not path:
        raise ConfigurationError("No pipeline Python environment is set.",
                                 hint="Press 'Set up' to create one, or choose an existing Python (conda/venv).")
    if os.path.isdir(path):
        for cand in (env_python(path, system), os.path.join(path, "python.exe"), os.path.join(path, "bin", "python3"),
                     os.path.join(path, "bin", "python")):
            if os.path.isfile(cand):
                return cand
        raise ConfigurationError("No Python found in %s." % path, hint="Choose the environment folder or its python executable.")
    if os.path.isfile(path):
        return path
    raise ConfigurationError("The Python environment %s does not exist." % path,
                             hint="Press 'Set up' to create it, or choose an existing Python.")


def which(name: str, env: Optional[Mapping[str, str]] = None, system: Optional[str] = None) -> Optional[str]:
    """``shutil.which`` on the search path of ``env`` (``Path`` or ``PATH``)."""
    return shutil.which(name, path=env_get(env, "PATH", system))
