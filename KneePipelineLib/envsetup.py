"""Create the dedicated pipeline Python environment (Python 3.9-safe, stdlib only).

The heavy stack (torch, nnU-Net, VTK, SimpleITK) never goes into Slicer's own Python: it lives in a
separate virtual environment that the Slicer module runs as a subprocess. This module

* plans the set-up as a list of commands (a pure function of the machine's facts, tested on fake Windows,
  macOS and Linux machines). The default plan does not depend on the computer's Pythons: ``uv`` (installed
  into Slicer's Python from PyPI) creates the environment with its own managed, pinned CPython
  (:data:`MANAGED_PYTHON`) and installs the packages; the alternative builds it from an existing Python
  (``--base-python``, or one found on the search path when uv is not available);
* reads the GPU and the driver's CUDA version from ``nvidia-smi`` and picks the matching torch build (a
  matching torch wheel in pip's ``find-links`` folders is used instead of a download);
* runs the plan, reporting progress with the JSON-lines protocol, so the module follows it with the same
  :class:`~KneePipelineLib.runner.PipelineRunner` it uses for pipeline runs::

      <python> -m KneePipelineLib.envsetup --env-dir DIR [--uv UV] [--base-python PY] [--torch auto|cpu|cu128]

Finding and probing Pythons lives in :mod:`.envpython`.
"""
import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .envpython import (MIN_PYTHON, REQUIRED_IMPORTS, FoundPython, check_environment, env_get,  # noqa: F401
                        env_python, find_base_python, no_base_python_error, no_window_flags, probe_python,
                        resolve_python, survey_pythons)
from .errors import ConfigurationError, KneePipelineError, classify

TORCH_VERSION = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/"
# CUDA builds published for the pinned torch, newest first: (variant, minimum CUDA version of the driver).
TORCH_CUDA_VARIANTS: Tuple[Tuple[str, Tuple[int, int]], ...] = (
    ("cu130", (13, 0)),
    ("cu128", (12, 8)),
    ("cu126", (12, 6)),
)
UV_VERSION = "0.13.10"        # installed into Slicer's Python by the module (slicer.util.pip_install)
MANAGED_PYTHON = "3.12"       # the CPython uv downloads for the environment (one minor version, pinned)
ENV_FOLDER_NAME = "KneePipeline-env"
PYTHONS_FOLDER_NAME = "KneePipeline-python"   # uv's managed CPython, beside the environment
MARKER_NAME = "kneepipeline-env.json"
# The pipeline's direct dependencies (pyproject.toml [project] dependencies, torch installed separately);
# used when the module runs from an installed extension that carries no pyproject.toml.
DEPENDENCIES: Tuple[str, ...] = (
    "numpy==2.4.6", "scipy==1.17.1", "SimpleITK==2.5.7", "vtk==9.6.0", "pydicom==3.0.2", "h5py==3.16.0",
    "huggingface_hub==2.4.0", "nnunetv2==2.8.1", "matplotlib==3.11.2", "dask==2026.8.0",
    "distributed==2026.8.0", "pyarrow==26.0.1", "psutil==7.2.2",
)


# -- GPU detection --------------------------------------------------------------------------------
@dataclass
class GpuInfo:
    name: str
    memory_mib: Optional[int] = None


@dataclass
class GpuReport:
    gpus: List[GpuInfo] = field(default_factory=list)
    driver_version: Optional[str] = None
    cuda_version: Optional[Tuple[int, int]] = None   # the newest CUDA the driver supports

    @property
    def has_cuda(self) -> bool:
        return bool(self.gpus) and self.cuda_version is not None


def parse_nvidia_smi(text: str) -> GpuReport:
    """Parse the plain ``nvidia-smi`` table (header with driver and CUDA version, one block per GPU)."""
    report = GpuReport()
    m = re.search(r"Driver Version:\s*([0-9.]+)", text)
    if m:
        report.driver_version = m.group(1)
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", text)
    if m:
        report.cuda_version = (int(m.group(1)), int(m.group(2)))
    lines = text.splitlines()
    for i, line in enumerate(lines):
        # GPU line: "|   0  NVIDIA H100 80GB HBM3          On  |   00000000:...  Off |   0 |"
        g = re.match(r"^\|\s+(\d+)\s+(.+?)\s+(On|Off)\s+\|", line)
        if not g:
            continue
        mem = None
        for nxt in lines[i + 1:i + 3]:
            mm = re.search(r"(\d+)MiB\s*/\s*(\d+)MiB", nxt)
            if mm:
                mem = int(mm.group(2))
                break
        name = re.sub(r"\s+", " ", g.group(2)).strip()
        report.gpus.append(GpuInfo(name=name, memory_mib=mem))
    return report


def detect_gpu(timeout_s: float = 20.0) -> GpuReport:
    """Run ``nvidia-smi``; no NVIDIA driver (or no tool) gives an empty report."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return GpuReport()
    try:
        out = subprocess.run([exe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             universal_newlines=True, timeout=timeout_s, **no_window_flags())
    except (OSError, subprocess.SubprocessError):
        return GpuReport()
    if out.returncode != 0:
        return GpuReport()
    return parse_nvidia_smi(out.stdout)


def choose_torch(report: GpuReport, system: Optional[str] = None) -> Tuple[str, Optional[str], str]:
    """(variant, pip index URL or None for PyPI, why) for the pinned torch on this machine."""
    system = system or platform.system()
    if system == "Darwin":
        return "default", None, "macOS: PyPI's torch (Apple GPUs through MPS)"
    if report.has_cuda:
        for variant, need in TORCH_CUDA_VARIANTS:
            if report.cuda_version >= need:
                return (variant, TORCH_INDEX + variant,
                        "%s with a driver for CUDA %d.%d" % (report.gpus[0].name, report.cuda_version[0],
                                                             report.cuda_version[1]))
        oldest = TORCH_CUDA_VARIANTS[-1][1]
        return ("cpu", TORCH_INDEX + "cpu",
                "the NVIDIA driver supports CUDA %d.%d only; torch %s needs %d.%d or newer (update the driver "
                "to use the GPU)" % (report.cuda_version + (TORCH_VERSION,) + oldest))
    return "cpu", TORCH_INDEX + "cpu", "no NVIDIA GPU found"


def torch_variant_url(variant: str) -> Tuple[str, Optional[str]]:
    if variant == "default":
        return variant, None
    known = ["cpu"] + [v for v, _ in TORCH_CUDA_VARIANTS]
    if variant not in known:
        raise ConfigurationError("Unknown torch build %r." % variant, hint="Use auto, cpu or one of: %s." % ", ".join(known))
    return variant, TORCH_INDEX + variant


# -- locations ------------------------------------------------------------------------------------
def default_env_dir(settings_dir: str, system: Optional[str] = None,
                    environ: Optional[Mapping[str, str]] = None) -> str:
    """Where 'Set up' puts the environment: next to the user's Slicer settings, except on Windows, where the
    settings folder is the *roaming* profile (copied at every log-on): there the local application data."""
    system = system or platform.system()
    if system == "Windows":
        local = env_get(environ, "LOCALAPPDATA", system)
        if local:
            return os.path.join(local, "slicer.org", ENV_FOLDER_NAME)
    return os.path.join(settings_dir, ENV_FOLDER_NAME)


def managed_python_dir(env_dir: str) -> str:
    """uv's managed CPython for ``env_dir`` lives beside it (removing both folders removes everything)."""
    return os.path.join(os.path.dirname(os.path.abspath(env_dir)), PYTHONS_FOLDER_NAME)


def find_links_dirs(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """pip's ``find-links`` folders from the environment (``PIP_FIND_LINKS``, space separated)."""
    value = (os.environ if environ is None else environ).get("PIP_FIND_LINKS", "")
    return [d for d in value.split() if d and os.path.isdir(d)]


def _platform_tag_ok(tag: str, system: str, machine: str) -> bool:
    machine = machine.lower()
    if system == "Linux":
        return "linux" in tag and (machine in tag or (machine == "amd64" and "x86_64" in tag))
    if system == "Darwin":
        return "macosx" in tag and (("arm64" in tag and machine in ("arm64", "aarch64")) or
                                    ("x86_64" in tag and machine in ("x86_64", "amd64")) or "universal" in tag)
    if system == "Windows":
        return "win_amd64" in tag and machine in ("amd64", "x86_64")
    return False


def local_torch_wheel(folders: Sequence[str], python_version: Tuple[int, int], variant: str,
                      system: Optional[str] = None, machine: Optional[str] = None) -> Optional[str]:
    """A torch ``TORCH_VERSION`` wheel for this Python / platform / build already on disk, or None."""
    system = system or platform.system()
    machine = machine or platform.machine()
    py = "cp%d%d" % tuple(python_version[:2])
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "torch-%s*.whl" % TORCH_VERSION))):
            parts = os.path.basename(path)[:-4].split("-")
            if len(parts) < 5 or parts[2] != py:
                continue
            version = parts[1]
            local = version.split("+", 1)[1] if "+" in version else "default"
            if version.split("+")[0] != TORCH_VERSION or local != variant:
                continue
            if _platform_tag_ok(parts[-1], system, machine):
                return path
    return None


# -- the plan -------------------------------------------------------------------------------------
@dataclass
class SetupStep:
    name: str
    description: str
    argv: List[str]
    weight: float = 1.0
    skip_if_exists: Optional[str] = None
    extra_env: Dict[str, str] = field(default_factory=dict)


@dataclass
class SetupChoice:
    """How the environment gets its Python: ``uv-managed`` (uv downloads a pinned CPython), ``uv-base`` (uv
    from an existing Python) or ``venv`` (the standard library's venv from an existing Python, no uv)."""

    method: str
    base_python: Optional[str]
    python_version: Tuple[int, int]
    why: str


def _version_tuple(text: str) -> Tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def choose_method(uv: Optional[str], base_python: Optional[str] = None, env: Optional[Dict[str, str]] = None,
                  system: Optional[str] = None, managed: str = MANAGED_PYTHON) -> SetupChoice:
    """Decide where the environment's Python comes from (see :class:`SetupChoice`).

    With uv and no chosen Python the computer's Pythons do not matter at all. A chosen Python must be new
    enough; without uv it also needs its venv module. Without either, the search path is surveyed and the
    error names every Python found and why it cannot be used."""
    if base_python:
        info = probe_python(base_python, imports=(), env=env, timeout_s=60.0)
        if not info.get("ok"):
            raise ConfigurationError("The chosen Python %s does not run: %s" % (base_python, info.get("error")),
                                     hint="Choose another Python, or leave it empty to let 'Set up' bring its own.")
        version = tuple(info["version"][:2])
        if version < MIN_PYTHON:
            raise ConfigurationError("The chosen Python %s is %d.%d; the pipeline needs %d.%d or newer."
                                     % ((base_python,) + version + MIN_PYTHON),
                                     hint="Choose a newer Python, or leave it empty to let 'Set up' bring its own.")
        if uv:
            return SetupChoice("uv-base", base_python, version, "uv with the chosen Python %s" % base_python)
        if not info.get("venv", True):
            raise no_base_python_error([FoundPython(base_python, tuple(info["version"][:3]),
                                                    "its venv module is missing")], system)
        return SetupChoice("venv", base_python, version, "venv from the chosen Python %s" % base_python)
    if uv:
        return SetupChoice("uv-managed", None, _version_tuple(managed),
                           "uv with its own CPython %s (independent of the computer's Pythons)" % managed)
    found = survey_pythons(env, system)
    for fp in found:
        if fp.usable:
            return SetupChoice("venv", fp.path, fp.version[:2], "venv from %s (Python %d.%d)" % ((fp.path,) + fp.version[:2]))
    raise no_base_python_error(found, system)


def source_tree(library_dir: Optional[str] = None) -> Optional[str]:
    """The repository root when the library runs from a source checkout (it has pyproject.toml)."""
    lib = library_dir or os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(lib)
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def plan_setup(env_dir: str, base_python: Optional[str], torch_variant: str, index_url: Optional[str],
               source: Optional[str] = None, forbidden_pythons: Sequence[str] = (),
               use_uv: Optional[str] = None, python_request: str = MANAGED_PYTHON,
               torch_wheel: Optional[str] = None, system: Optional[str] = None) -> List[SetupStep]:
    """The commands that build the environment, in order. Refuses to touch a forbidden (Slicer's) Python.

    ``use_uv``: the uv executable; with ``base_python`` None uv creates the environment from its own managed
    CPython ``python_request`` (kept in :func:`managed_python_dir`). ``torch_wheel``: a local torch wheel
    installed instead of downloading ``torch==TORCH_VERSION``."""
    real = os.path.realpath
    env_py = env_python(env_dir, system)
    for bad in forbidden_pythons:
        if bad and ((base_python and real(base_python) == real(bad)) or real(env_py) == real(bad)
                    or real(env_dir) == real(os.path.dirname(os.path.dirname(bad)))):
            raise ConfigurationError("Refusing to install the pipeline into Slicer's own Python (%s)." % bad,
                                     hint="Leave the base Python empty ('Set up' brings its own) or choose a "
                                          "separate Python %d.%d+ (python.org, conda)." % MIN_PYTHON)
    if not use_uv and not base_python:
        raise ConfigurationError("Neither uv nor a base Python was given to create the environment.",
                                 hint="Press 'Set up' again while connected to the internet.")
    steps: List[SetupStep] = []
    if use_uv:
        uv_env = {"UV_PYTHON_INSTALL_DIR": managed_python_dir(env_dir), "UV_NO_CONFIG": "1"}
        if base_python:
            venv = [use_uv, "venv", "--no-config", "--python", base_python, env_dir]
            what = "Create the environment (uv, %s)" % base_python
        else:
            venv = [use_uv, "venv", "--no-config", "--python", python_request, "--python-preference",
                    "only-managed", env_dir]
            what = "Download Python %s and create the environment (uv)" % python_request
        steps.append(SetupStep("venv", what, venv, 2.0, skip_if_exists=env_py, extra_env=uv_env))
        pip = [use_uv, "pip", "install", "--no-config", "--python", env_py]
    else:
        uv_env = {}
        steps.append(SetupStep("venv", "Create the environment", [base_python, "-m", "venv", env_dir], 1.0,
                               skip_if_exists=env_py))
        pip = [env_py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
        steps.append(SetupStep("pip", "Update pip", pip + ["--upgrade", "pip"], 1.0))
    if torch_wheel:
        steps.append(SetupStep("torch", "Install torch %s (%s) from %s" % (TORCH_VERSION, torch_variant, torch_wheel),
                               pip + [torch_wheel], 10.0, extra_env=uv_env))
    else:
        torch_cmd = pip + ["torch==" + TORCH_VERSION]
        if index_url:
            torch_cmd += ["--index-url", index_url]
        steps.append(SetupStep("torch", "Install torch %s (%s)" % (TORCH_VERSION, torch_variant), torch_cmd, 10.0,
                               extra_env=uv_env))
    if source:
        steps.append(SetupStep("pipeline", "Install the pipeline from %s" % source, pip + [source], 8.0,
                               extra_env=uv_env))
    else:
        steps.append(SetupStep("pipeline", "Install the pipeline's dependencies", pip + list(DEPENDENCIES), 8.0,
                               extra_env=uv_env))
    check = ("import torch, nnunetv2, vtk, SimpleITK; "
             "print('torch', torch.__version__, 'cuda', torch.cuda.is_available())")
    steps.append(SetupStep("verify", "Check the environment", [env_py, "-c", check], 1.0))
    return steps


def run_plan(steps: Sequence[SetupStep], progress: Any, env: Optional[Dict[str, str]] = None) -> None:
    """Run each command, relaying its output as ``log`` events and moving the step's progress along.
    ``env``: the commands' environment (default this process's), each step's ``extra_env`` on top."""
    from .errors import InternalError

    progress.set_steps([(s.name, s.weight) for s in steps])
    for s in steps:
        sub = progress.sub(s.name)
        if s.skip_if_exists and os.path.exists(s.skip_if_exists):
            sub(1.0, s.description + ": already there")
            continue
        sub(0.0, s.description)
        step_env = dict(os.environ if env is None else env)
        step_env.update(s.extra_env)
        proc = subprocess.Popen(s.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=step_env, universal_newlines=True, bufsize=1, errors="replace",
                                **no_window_flags())
        tail: List[str] = []
        n = 0
        for line in iter(proc.stdout.readline, ""):
            line = line.rstrip()
            if not line:
                continue
            n += 1
            tail = (tail + [line])[-20:]
            progress.emit("log", message=line, step=s.name)
            if n % 5 == 0:   # pip gives no total: creep towards the end of the step
                sub(min(0.9, 1.0 - 1.0 / (1.0 + n / 40.0)), s.description)
        rc = proc.wait()
        if rc != 0:
            raise InternalError("%s failed (exit code %d): %s" % (s.description, rc, "\n".join(tail[-5:])),
                                hint="Check the internet connection to PyPI / download.pytorch.org (and, for "
                                     "uv's Python, github.com) and the free disk space, then press 'Set up' again. "
                                     "Where github.com is blocked, put an existing Python 3.11+ in the Python field "
                                     "and press 'Set up': the environment is then built from it.")
        sub(1.0, s.description + ": done")


def write_marker(env_dir: str, info: Dict[str, Any]) -> str:
    path = os.path.join(env_dir, MARKER_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
    return path


# -- command line ---------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m KneePipelineLib.envsetup",
                                description="Create the KneePipeline Python environment (progress as JSON lines).")
    p.add_argument("--env-dir", required=True, help="folder of the new virtual environment")
    p.add_argument("--uv", help="the uv executable: it creates the environment (with its own Python unless "
                                "--base-python is given) and installs the packages")
    p.add_argument("--python-version", default=MANAGED_PYTHON, help="uv's managed CPython (default %(default)s)")
    p.add_argument("--base-python", help="an existing Python >= %d.%d to create it from" % MIN_PYTHON)
    p.add_argument("--torch", default="auto", help="auto (from nvidia-smi), cpu, default (PyPI) or a CUDA build like cu128")
    p.add_argument("--find-links", action="append", default=None,
                   help="folder with wheels to use before downloading torch (default: $PIP_FIND_LINKS)")
    p.add_argument("--source", help="install the pipeline from this source tree (default: the tree this file is in, "
                                    "else only its dependencies)")
    p.add_argument("--forbid-python", action="append", default=[], help="never install into this Python (Slicer's)")
    p.add_argument("--child-env", help="JSON file with the environment for every command (Slicer's startup "
                                       "environment; default: this process's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from . import __version__
    from .progress import Progress

    args = _parser().parse_args(argv)
    progress = Progress()
    try:
        progress.hello("envsetup", __version__)
        child_env = None
        if args.child_env:
            with open(args.child_env, encoding="utf-8") as fh:
                child_env = {str(k): str(v) for k, v in json.load(fh).items()}
        base = args.base_python
        if not base and not args.uv and sys.version_info[:2] >= MIN_PYTHON and "slicer" not in sys.modules:
            base = sys.executable   # run from a terminal with a suitable Python: build from that one
        choice = choose_method(args.uv, base, env=child_env, managed=args.python_version)
        progress.emit("log", message="environment: %s" % choice.why)
        if args.torch == "auto":
            report = detect_gpu()
            variant, url, why = choose_torch(report)
        else:
            variant, url = torch_variant_url(args.torch)
            report, why = GpuReport(), "chosen by the user"
        links = args.find_links if args.find_links is not None else find_links_dirs(child_env)
        wheel = local_torch_wheel(links, choice.python_version, variant)
        source = args.source or source_tree()
        steps = plan_setup(args.env_dir, choice.base_python, variant, url, source=source,
                           forbidden_pythons=args.forbid_python, use_uv=args.uv if choice.method != "venv" else None,
                           python_request=args.python_version, torch_wheel=wheel)
        progress.emit("log", message="torch build: %s (%s)%s" % (variant, why, ", local file %s" % wheel if wheel else ""))
        if args.dry_run:
            for s in steps:
                progress.emit("log", message="%s: %s" % (s.name, " ".join(s.argv)))
            return 0
        run_plan(steps, progress, env=child_env)
        info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "method": choice.method, "base_python": choice.base_python,
                "python_version": "%d.%d" % choice.python_version, "torch_variant": variant, "torch_index_url": url,
                "torch_wheel": wheel, "reason": why, "library_version": __version__,
                "gpus": [asdict(g) for g in report.gpus], "python": env_python(args.env_dir)}
        write_marker(args.env_dir, info)
        progress.result(out_dir=args.env_dir, python=env_python(args.env_dir), torch_variant=variant)
        return 0
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, SystemExit):
            raise
        err = exc if isinstance(exc, KneePipelineError) else classify(exc)
        progress.error(err)
        sys.stderr.write("ERROR [%s]: %s\nHint: %s\n" % (err.category, err.message, err.hint))
        return err.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
