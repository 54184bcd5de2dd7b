"""`kneepipeline doctor`: what this machine can run (Python, torch, GPU, nnU-Net, models present)."""
from __future__ import annotations

import platform
import sys

NAME = "doctor"
HELP = "check the installation: python, torch, CUDA/MPS, GPU memory, nnU-Net, models present"
USAGE = "[--cache-dir DIR] [--json]"
EXAMPLES = [
    "kneepipeline doctor",
    "kneepipeline doctor --json | jq .accelerators",
]


def add_arguments(p):
    p.add_argument("--cache-dir", metavar="DIR", help="model cache to inspect")


def _version(mod_name: str):
    try:
        from importlib.metadata import version
        return version(mod_name)
    except Exception:  # noqa: BLE001
        return None


def collect(cache_dir=None) -> dict:
    from .. import __version__
    from ..hub import default_cache_dir, model_state
    from ..registry import list_models

    rep = {"kneepipeline": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
           "packages": {n: _version(n) for n in ("torch", "nnunetv2", "huggingface_hub", "SimpleITK", "vtk",
                                                 "numpy", "scipy")}}
    gpu = {"cuda": False, "mps": False, "devices": []}
    try:
        import torch

        gpu["cuda"] = bool(torch.cuda.is_available())
        gpu["cuda_version"] = torch.version.cuda
        if gpu["cuda"]:
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                free, total = torch.cuda.mem_get_info(i)
                gpu["devices"].append({"index": i, "name": p.name, "memory_gb": round(total / 2 ** 30, 1),
                                       "free_gb": round(free / 2 ** 30, 1)})
        mps = getattr(torch.backends, "mps", None)
        gpu["mps"] = bool(mps is not None and mps.is_available())
        gpu["cpu_threads"] = torch.get_num_threads()
    except ImportError:
        gpu["error"] = "torch is not installed"
    rep["accelerators"] = gpu
    rep["device_auto"] = "cuda" if gpu["cuda"] else ("mps" if gpu["mps"] else "cpu")
    rep["cache_dir"] = str(cache_dir or default_cache_dir())
    rep["models"] = {m.id: model_state(m, cache_dir=cache_dir) for m in list_models()}
    return rep


def human_report(rep: dict) -> str:
    lines = ["KneePipeline %s, Python %s on %s" % (rep["kneepipeline"], rep["python"], rep["platform"])]
    for n, v in rep["packages"].items():
        lines.append("  %-16s %s" % (n, v or "NOT INSTALLED"))
    acc = rep["accelerators"]
    lines.append("CUDA: %s%s; MPS: %s; inference device (auto): %s" % (
        "yes" if acc.get("cuda") else "no", (" (CUDA %s)" % acc.get("cuda_version")) if acc.get("cuda") else "",
        "yes" if acc.get("mps") else "no", rep["device_auto"]))
    for d in acc.get("devices", []):
        lines.append("  GPU %d: %s, %.1f GB (%.1f GB free)" % (d["index"], d["name"], d["memory_gb"], d["free_gb"]))
    lines.append("Model cache: %s" % rep["cache_dir"])
    for mid, st in rep["models"].items():
        lines.append("  %-22s %s" % (mid, st["path"] if st["downloaded"] and st["path"] else "not downloaded"))
    return "\n".join(lines)


def main(args, progress) -> int:
    from .. import __version__

    progress.hello(NAME, __version__)
    rep = collect(args.cache_dir)
    progress.result(**rep)                 # the report is the result (``--json``: alone on stdout)
    progress.outcome = rep
    progress.say(human_report(rep))
    return 0
