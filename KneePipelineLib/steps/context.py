"""What every step receives: the run context (options, run folder, progress, manifest, hand-over data) and
the Step record (name, progress weight, enabled-predicate, fatal). Outputs are written atomically here."""
from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..manifest import Manifest, OutputEntry
from ..options import RunOptions
from ..progress import Progress

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
BUNDLE_NAME = "results_bundle.zip"
WORK_DIR = ".work"
_UMASK = os.umask(0)
os.umask(_UMASK)


@dataclass
class RunContext:
    options: RunOptions
    out_dir: Path
    progress: Progress
    manifest: Manifest
    work_dir: Path
    data: Dict[str, Any] = field(default_factory=dict)   # in-memory hand-over between steps
    previous: Optional[Manifest] = None                  # the folder's earlier manifest (--resume)
    step_extra: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # merged into manifest.steps[name]
    results: Dict[str, Any] = field(default_factory=dict)  # what goes into results.json

    # -- atomic outputs -----------------------------------------------------------------------
    def output(self, relpath: str, kind: str, writer: Callable[[Path], None], step: str = "", **meta: Any) -> Path:
        """Write ``relpath`` through ``writer(tmp_path)`` then rename into place; record it in the manifest."""
        from ..io.writers import atomic_write

        final = atomic_write(self.out_dir / relpath, writer)   # free space, temp name, verify, rename
        self.manifest.add(OutputEntry(path=relpath.replace(os.sep, "/"), kind=kind, step=step, **meta))
        return final

    def warn(self, message: str) -> None:
        self.progress.warning(message)
        if message not in self.manifest.warnings:
            self.manifest.warnings.append(message)


@dataclass
class Step:
    name: str
    weight: float
    fn: Callable[[RunContext], None]
    enabled: Callable[[RunOptions], bool] = lambda o: True
    fatal: bool = True          # a non-fatal step's failure becomes a warning


def release_memory() -> None:
    """Collect garbage and empty the CUDA cache (each model-using step calls it when done)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
