"""The local model cache shared by every download source: where it is, offline mode, sha256 of files, and
the per-model records of what was resolved (source, requested and resolved revision, sha256 of each file).

Standard library only. Records live in ``<cache>/kneepipeline-records/<model id>.json``; the hub's own
snapshot folders and the Git-file folders (``git--owner--name/<commit>/``) sit next to them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import time
from typing import Callable, Dict, Optional

log = logging.getLogger("kneepipeline.hub")

ProgressFn = Optional[Callable[..., None]]
_TRUE = ("1", "true", "yes", "on")
_VERIFY_CACHE = "kneepipeline-sha256.json"
RECORDS_DIR = "kneepipeline-records"


def default_cache_dir() -> pathlib.Path:
    """``$KNEEPIPELINE_CACHE``, else the hub's own cache when ``HF_HUB_CACHE``/``HF_HOME`` is set, else
    ``~/.cache/kneepipeline/hub``."""
    env = os.environ.get("KNEEPIPELINE_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return pathlib.Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return pathlib.Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return pathlib.Path("~/.cache/kneepipeline/hub").expanduser()


def cache_path(cache_dir=None) -> pathlib.Path:
    return pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def offline_requested(offline: bool = False) -> bool:
    return bool(offline) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def report(progress: ProgressFn, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def download_hint(model_id: str) -> str:
    return ("Run `kneepipeline models --download %s` where the internet is reachable, or pass "
            "--model-dir with a copy of the model." % model_id)


def _atomic_json(path: pathlib.Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".%d.tmp" % os.getpid())
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def sha256_file(path: pathlib.Path, cache_dir: Optional[pathlib.Path] = None) -> str:
    """sha256 of a file; remembered per (real path, size, mtime) in ``cache_dir`` so big checkpoints are
    hashed once."""
    real = os.path.realpath(str(path))
    st = os.stat(real)
    key = "%s|%d|%d" % (real, st.st_size, st.st_mtime_ns)
    memo: Dict[str, str] = {}
    memo_path = pathlib.Path(cache_dir) / _VERIFY_CACHE if cache_dir else None
    if memo_path is not None and memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}
        if key in memo:
            return memo[key]
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()
    if memo_path is not None:
        memo[key] = digest
        try:
            _atomic_json(memo_path, memo)
        except OSError:  # a read-only cache only costs re-hashing
            pass
    return digest


def remember_sha256(path: pathlib.Path, digest: str, cache_dir: Optional[pathlib.Path]) -> None:
    """Store a digest just computed while downloading, so the file is not hashed a second time."""
    if not cache_dir:
        return
    real = os.path.realpath(str(path))
    st = os.stat(real)
    memo_path = pathlib.Path(cache_dir) / _VERIFY_CACHE
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8")) if memo_path.is_file() else {}
    except (OSError, ValueError):
        memo = {}
    memo["%s|%d|%d" % (real, st.st_size, st.st_mtime_ns)] = digest
    try:
        _atomic_json(memo_path, memo)
    except OSError:
        pass


# -- records: what each model resolved to -----------------------------------------------------------
def record_path(cache_dir, model_id: str) -> pathlib.Path:
    return cache_path(cache_dir) / RECORDS_DIR / (model_id + ".json")


def read_record(cache_dir, model_id: str) -> Optional[dict]:
    p = record_path(cache_dir, model_id)
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def update_record(cache_dir, model_id: str, source: str, repo_id: str, requested: str, revision: Optional[str],
                  root: pathlib.Path, files: Dict[str, str]) -> dict:
    """Remember what ``model_id`` resolved to; when the same request now resolves to another commit than
    last time (a branch moved on), say so in the log. The file is rewritten only when something changed."""
    old = read_record(cache_dir, model_id)
    new = {"id": model_id, "source": source, "repo_id": repo_id, "requested_revision": requested,
           "revision": revision, "path": str(root), "files": dict(sorted(files.items()))}
    if old and all(old.get(k) == new[k] for k in ("source", "repo_id", "requested_revision", "revision", "path")) \
            and old.get("files") == new["files"]:
        return old
    if old and old.get("revision") and revision and old.get("revision") != revision \
            and old.get("requested_revision") == requested:
        log.warning("Model %s: %s@%s now resolves to commit %s (was %s); results may differ from earlier runs.",
                    model_id, repo_id, requested, revision[:12], str(old.get("revision"))[:12])
        new["previous_revision"] = old.get("revision")
    new["recorded"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        _atomic_json(record_path(cache_dir, model_id), new)
    except OSError:  # a read-only shared cache: the run's manifest still records everything
        pass
    return new
