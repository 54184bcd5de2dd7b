"""Create the dedicated pipeline Python environment (Python 3.9-safe, stdlib only).

The heavy stack (torch, nnU-Net, VTK, SimpleITK) never goes into Slicer's own Python: it lives in a
separate virtual environment (by default next to the user's Slicer settings) that the Slicer module runs
as a subprocess. This module

* reads the GPU and the driver's CUDA version from ``nvidia-smi`` and picks the matching torch build,
* plans the set-up as a list of commands (a pure function, testable without running pip),
* runs the plan, reporting progress with the JSON-lines protocol, so the module follows it with the same
  :class:`~KneePipelineLib.runner.PipelineRunner` it uses for pipeline runs::

      <base python> -m KneePipelineLib.envsetup --env-dir DIR [--torch auto|cpu|cu128|...] [--source DIR]

* checks an existing, user-chosen Python (conda, venv) for what the pipeline needs.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import ConfigurationError, KneePipelineError, classify

TORCH_VERSION = "2.13.0"
TORCH_INDEX = "https://download.pytorch.org/whl/"
# CUDA builds published for the pinned torch, newest first: (variant, minimum CUDA version of the driver).
TORCH_CUDA_VARIANTS: Tuple[Tuple[str, Tuple[int, int]], ...] = (
    ("cu130", (13, 0)),
    ("cu128", (12, 8)),
    ("cu126", (12, 6)),
)
MIN_PYTHON = (3, 10)
ENV_FOLDER_NAME = "KneePipeline-env"
MARKER_NAME = "kneepipeline-env.json"
# The pipeline's direct dependencies (pyproject.toml [project] dependencies, torch installed separately);
# used when the module runs from an installed extension that carries no pyproject.toml.
DEPENDENCIES: Tuple[str, ...] = (
    "numpy==2.4.6", "scipy==1.17.1", "SimpleITK==2.5.7", "vtk==9.6.0", "pydicom==3.0.2", "h5py==3.16.0",
    "huggingface_hub==2.4.0", "nnunetv2==2.8.1", "matplotlib==3.11.2", "dask==2026.8.0",
    "distributed==2026.8.0", "pyarrow==26.0.1", "psutil==7.2.2",
)
REQUIRED_IMPORTS = ("torch", "nnunetv2", "vtk", "SimpleITK", "numpy", "scipy", "h5py", "huggingface_hub")


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
        out = subprocess.run([exe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                             timeout=timeout_s)
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
def default_env_dir(settings_dir: str) -> str:
    """The environment lives next to the user's Slicer settings (``slicer.app.slicerUserSettingsFilePath``'s folder)."""
    return os.path.join(settings_dir, ENV_FOLDER_NAME)


def env_python(env_dir: str) -> str:
    if os.name == "nt":  # pragma: no cover - Windows
        return os.path.join(env_dir, "Scripts", "python.exe")
    return os.path.join(env_dir, "bin", "python")


def resolve_python(path: str) -> str:
    """A Python executable from what the user typed: an executable, a venv / conda folder."""
    if not path:
        raise ConfigurationError("No pipeline Python environment is set.",
                                 hint="Press 'Set up' to create one, or choose an existing Python (conda/venv).")
    if os.path.isdir(path):
        for cand in (env_python(path), os.path.join(path, "python.exe"), os.path.join(path, "bin", "python3")):
            if os.path.isfile(cand):
                return cand
        raise ConfigurationError("No Python found in %s." % path, hint="Choose the environment folder or its python executable.")
    if os.path.isfile(path):
        return path
    raise ConfigurationError("The Python environment %s does not exist." % path,
                             hint="Press 'Set up' to create it, or choose an existing Python.")


def find_base_python(candidates: Sequence[str] = (), env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """A Python >= 3.10 on this machine to build the venv from (never Slicer's own).

    ``env``: the environment to search ``PATH`` in and to probe with (inside Slicer:
    ``slicer.util.startupEnvironment()``, since Slicer's own environment sets PYTHONHOME for its Python)."""
    names = list(candidates) + ["python3.13", "python3.12", "python3.11", "python3.10", "python3", "python"]
    search_path = env.get("PATH") if env is not None else None
    for name in names:
        exe = name if os.path.isabs(name) else shutil.which(name, path=search_path)
        if not exe or not os.path.isfile(exe):
            continue
        info = probe_python(exe, imports=(), env=env)
        if info.get("ok") and tuple(info["version"][:2]) >= MIN_PYTHON and not info.get("in_slicer"):
            return exe
    return None


# -- probing an environment -----------------------------------------------------------------------
_PROBE = r"""
import importlib, json, sys
out = {"version": list(sys.version_info[:3]), "executable": sys.executable, "prefix": sys.prefix,
       "in_slicer": "slicer" in sys.modules or "Slicer" in sys.executable.split("/")[-1], "modules": {}}
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
print(json.dumps(out))
"""


def probe_python(python: str, imports: Sequence[str] = REQUIRED_IMPORTS, timeout_s: float = 120.0,
                 env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Ask ``python`` for its version and which of ``imports`` it has (never imports them here).
    ``env``: the probe's environment (default: this process's)."""
    try:
        out = subprocess.run([python, "-c", _PROBE % (tuple(imports),)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout_s, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"ok": False, "error": str(exc)}
    if out.returncode != 0:
        return {"ok": False, "error": out.stderr.strip()[-2000:]}
    try:
        info = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": "unexpected output: %s" % out.stdout[-500:]}
    info["ok"] = True
    info["missing"] = [k for k, v in info.get("modules", {}).items() if not v]
    return info


def check_environment(python: str, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """What the panel shows for a chosen Python: usable or not, and why (``env`` as in :func:`probe_python`)."""
    info = probe_python(python, env=env)
    if not info.get("ok"):
        info["usable"] = False
        info["problem"] = "The Python at %s does not run: %s" % (python, info.get("error"))
        return info
    if tuple(info["version"][:2]) < MIN_PYTHON:
        info["usable"] = False
        info["problem"] = "Python %d.%d is too old; the pipeline needs %d.%d or newer." % (
            tuple(info["version"][:2]) + MIN_PYTHON)
    elif info["missing"]:
        info["usable"] = False
        info["problem"] = "Missing packages: %s (press 'Set up')." % ", ".join(info["missing"])
    else:
        info["usable"] = True
        info["problem"] = ""
    return info


# -- the plan -------------------------------------------------------------------------------------
@dataclass
class SetupStep:
    name: str
    description: str
    argv: List[str]
    weight: float = 1.0
    skip_if_exists: Optional[str] = None


def source_tree(library_dir: Optional[str] = None) -> Optional[str]:
    """The repository root when the library runs from a source checkout (it has pyproject.toml)."""
    lib = library_dir or os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(lib)
    return root if os.path.isfile(os.path.join(root, "pyproject.toml")) else None


def plan_setup(env_dir: str, base_python: str, torch_variant: str, index_url: Optional[str],
               source: Optional[str] = None, forbidden_pythons: Sequence[str] = (),
               use_uv: Optional[str] = None) -> List[SetupStep]:
    """The commands that build the environment, in order. Refuses to touch a forbidden (Slicer's) Python."""
    real = os.path.realpath
    env_py = env_python(env_dir)
    for bad in forbidden_pythons:
        if bad and (real(base_python) == real(bad) or real(env_py) == real(bad)
                    or real(env_dir) == real(os.path.dirname(os.path.dirname(bad)))):
            raise ConfigurationError("Refusing to install the pipeline into Slicer's own Python (%s)." % bad,
                                     hint="Choose a separate Python 3.10+ (python.org, conda) as the base, or let "
                                          "'Set up' find one.")
    steps: List[SetupStep] = []
    if use_uv:
        steps.append(SetupStep("venv", "Create the environment (uv)", [use_uv, "venv", "--seed", "--python", base_python, env_dir],
                               1.0, skip_if_exists=env_py))
    else:
        steps.append(SetupStep("venv", "Create the environment", [base_python, "-m", "venv", env_dir], 1.0,
                               skip_if_exists=env_py))
    pip = [env_py, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off"]
    steps.append(SetupStep("pip", "Update pip", pip + ["--upgrade", "pip"], 1.0))
    torch_cmd = pip + ["torch==" + TORCH_VERSION]
    if index_url:
        torch_cmd += ["--index-url", index_url]
    steps.append(SetupStep("torch", "Install torch %s (%s)" % (TORCH_VERSION, torch_variant), torch_cmd, 10.0))
    if source:
        steps.append(SetupStep("pipeline", "Install the pipeline from %s" % source, pip + [source], 8.0))
    else:
        steps.append(SetupStep("pipeline", "Install the pipeline's dependencies", pip + list(DEPENDENCIES), 8.0))
    check = ("import torch, nnunetv2, vtk, SimpleITK; "
             "print('torch', torch.__version__, 'cuda', torch.cuda.is_available())")
    steps.append(SetupStep("verify", "Check the environment", [env_py, "-c", check], 1.0))
    return steps


def run_plan(steps: Sequence[SetupStep], progress: Any, env: Optional[Dict[str, str]] = None) -> None:
    """Run each command, relaying its output as ``log`` events and moving the step's progress along."""
    from .errors import InternalError

    progress.set_steps([(s.name, s.weight) for s in steps])
    for s in steps:
        sub = progress.sub(s.name)
        if s.skip_if_exists and os.path.exists(s.skip_if_exists):
            sub(1.0, s.description + ": already there")
            continue
        sub(0.0, s.description)
        proc = subprocess.Popen(s.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                universal_newlines=True, bufsize=1, errors="replace")
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
                                hint="Check the internet connection to PyPI / download.pytorch.org and the free "
                                     "disk space, then press 'Set up' again.")
        sub(1.0, s.description + ": done")


def write_marker(env_dir: str, info: Dict[str, Any]) -> str:
    path = os.path.join(env_dir, MARKER_NAME)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=2)
    return path


# -- command line ---------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    from . import __version__
    from .progress import Progress

    p = argparse.ArgumentParser(prog="python -m KneePipelineLib.envsetup",
                                description="Create the KneePipeline Python environment (progress as JSON lines).")
    p.add_argument("--env-dir", required=True, help="folder of the new virtual environment")
    p.add_argument("--base-python", help="Python >= 3.10 to create it from (default: this Python, or one on PATH)")
    p.add_argument("--torch", default="auto", help="auto (from nvidia-smi), cpu, default (PyPI) or a CUDA build like cu128")
    p.add_argument("--source", help="install the pipeline from this source tree (default: the tree this file is in, "
                                    "else only its dependencies)")
    p.add_argument("--forbid-python", action="append", default=[], help="never install into this Python (Slicer's)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = p.parse_args(argv)
    progress = Progress()
    try:
        progress.hello("envsetup", __version__)
        base = args.base_python
        if not base:
            here_ok = sys.version_info[:2] >= MIN_PYTHON and "slicer" not in sys.modules
            base = sys.executable if here_ok else find_base_python()
        if not base:
            raise ConfigurationError("No Python %d.%d or newer was found to create the environment." % MIN_PYTHON,
                                     hint="Install Python 3.11 (python.org or conda) or choose an existing environment.")
        if args.torch == "auto":
            report = detect_gpu()
            variant, url, why = choose_torch(report)
        else:
            variant, url = torch_variant_url(args.torch)
            report, why = GpuReport(), "chosen by the user"
        source = args.source or source_tree()
        steps = plan_setup(args.env_dir, base, variant, url, source=source, forbidden_pythons=args.forbid_python)
        progress.emit("log", message="torch build: %s (%s)" % (variant, why))
        if args.dry_run:
            for s in steps:
                progress.emit("log", message="%s: %s" % (s.name, " ".join(s.argv)))
            return 0
        run_plan(steps, progress)
        info = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "base_python": base, "torch_variant": variant,
                "torch_index_url": url, "reason": why, "library_version": __version__,
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
