"""Machine description and JSON writing for benchmark scripts in bench/."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
from pathlib import Path
from typing import Any, Dict


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> Dict[str, Any] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # noqa: F401
        except ImportError:
            return None
        torch = sys.modules["torch"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return {"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1), "count": torch.cuda.device_count()}
    return None


def machine_info() -> Dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": gpu_info(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_result(name: str, figures: Dict[str, Any], out_dir: str | os.PathLike | None = None) -> Path:
    """Write bench/results/<name>-<date>.json with the date and the machine; returns the path."""
    out = Path(out_dir) if out_dir else Path(__file__).resolve().parents[1] / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now()
    path = out / ("%s-%s.json" % (name, now.strftime("%Y%m%d-%H%M%S")))
    payload = {"benchmark": name, "date": now.isoformat(timespec="seconds"), "machine": machine_info(),
               "figures": figures}
    path.write_text(json.dumps(payload, indent=2, default=float))
    print("wrote %s" % path)
    return path
