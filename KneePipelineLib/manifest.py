"""What a run wrote: ``manifest.json`` is the contract the Slicer module loads (Python 3.9-safe).

Each output records its path (relative to the run folder), kind, coordinate system and scalar
names. Status is one of running / complete / failed / cancelled. Written atomically (``io.writers``).

A run records which process wrote it (pid, host, start). A manifest that still says ``running`` after its
process died (SIGKILL, power loss, out-of-memory killer) is told apart from a live run by
:func:`run_liveness` / :func:`effective_status` (``interrupted``), through the run folder's lock.
"""
import json
import os
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

from .io.writers import atomic_write_text, folder_is_locked, read_lock_holder

MANIFEST_NAME = "manifest.json"
SCHEMA = "kneepipeline-manifest/1"
KINDS = ("labelmap", "volume", "mesh", "table", "json", "image", "report", "archive")


@dataclass
class OutputEntry:
    path: str                              # relative to the run folder, '/' separators
    kind: str                              # one of KINDS
    step: str = ""
    description: str = ""
    coordinate_system: Optional[str] = None  # "LPS" for volumes and meshes
    scalars: List[str] = field(default_factory=list)
    units: Dict[str, str] = field(default_factory=dict)
    labels: Optional[Dict[str, str]] = None  # label value -> name for label maps
    structure: Optional[str] = None          # e.g. "femur" for a mesh
    sha256: Optional[str] = None


@dataclass
class Manifest:
    status: str = "running"
    schema: str = SCHEMA
    library_version: str = ""
    command: str = ""
    created: str = ""
    finished: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    environment: Dict[str, Any] = field(default_factory=dict)
    models: Dict[str, Any] = field(default_factory=dict)
    steps: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    outputs: List[OutputEntry] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    error: Optional[Dict[str, Any]] = None
    process: Dict[str, Any] = field(default_factory=dict)   # pid, host, started of the writing process

    def add(self, entry: OutputEntry) -> None:
        self.outputs = [o for o in self.outputs if o.path != entry.path]
        self.outputs.append(entry)

    def find(self, kind: Optional[str] = None, structure: Optional[str] = None) -> List[OutputEntry]:
        return [o for o in self.outputs
                if (kind is None or o.kind == kind) and (structure is None or o.structure == structure)]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Manifest":
        data = dict(data)
        known_entry = {f.name for f in fields(OutputEntry)}
        outputs = [OutputEntry(**{k: v for k, v in o.items() if k in known_entry}) for o in data.pop("outputs", [])]
        known = {f.name for f in fields(cls)}
        m = cls(**{k: v for k, v in data.items() if k in known})   # newer writers may add fields
        m.outputs = outputs
        return m

    def write(self, run_dir: str) -> str:
        path = os.path.join(run_dir, MANIFEST_NAME)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))
        return path


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def load_manifest(run_dir: str) -> Manifest:
    with open(os.path.join(run_dir, MANIFEST_NAME), "r", encoding="utf-8") as fh:
        return Manifest.from_dict(json.load(fh))


def _pid_alive(pid: int) -> Optional[bool]:
    """Whether process ``pid`` exists on this host (None where that cannot be asked safely)."""
    if os.name != "posix":
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, ValueError, TypeError):
        return None
    return True


def run_liveness(run_dir: str, manifest: Optional[Manifest] = None) -> Tuple[str, str]:
    """``("live" | "dead" | "unknown" | "finished", reason)`` for the run recorded in ``run_dir``.

    The run folder's lock decides when it exists (the kernel drops it when the process dies, however it
    dies); otherwise the recorded pid is looked up when the run was on this host.
    """
    m = manifest if manifest is not None else load_manifest(run_dir)
    if m.status != "running":
        return "finished", m.status
    proc = m.process or read_lock_holder(run_dir)
    who = ("process %s on %s, started %s" % (proc.get("pid"), proc.get("host"), proc.get("started") or m.created)
           if proc else "a process started %s" % (m.created or "at an unknown time"))
    locked = folder_is_locked(run_dir)
    if locked is True:
        return "live", "the run (%s) is still working" % who
    if locked is False:
        return "dead", "the run (%s) ended without finishing (killed or crashed)" % who
    if proc.get("host") == socket.gethostname() and proc.get("pid") is not None:
        alive = _pid_alive(proc["pid"])
        if alive is False:
            return "dead", "the run (%s) ended without finishing (killed or crashed)" % who
        if alive is True:
            return "live", "the run (%s) is still working" % who
    return "unknown", "the run (%s) says it is running; it may be on another machine" % who


def effective_status(run_dir: str, manifest: Optional[Manifest] = None) -> str:
    """The manifest's status, except ``interrupted`` for a ``running`` manifest whose process is gone."""
    m = manifest if manifest is not None else load_manifest(run_dir)
    if m.status == "running" and run_liveness(run_dir, m)[0] == "dead":
        return "interrupted"
    return m.status
