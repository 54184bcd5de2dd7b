"""What a run wrote: ``manifest.json`` is the contract the Slicer module loads (Python 3.9-safe).

Each output records its path (relative to the run folder), kind, coordinate system and scalar
names. Status is one of running / complete / failed / cancelled. Written atomically.
"""
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

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
        outputs = [OutputEntry(**o) for o in data.pop("outputs", [])]
        m = cls(**data)
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


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file in the same folder, then rename into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
