"""Model files: Hugging Face hub downloads, the local cache, ``--model-dir`` folders and sha256 checks.

Only this module talks to the hub. A model *root* is the local folder that holds what a registry entry's
``source.subfolder`` names inside the repository (for nnU-Net: the ``Dataset500_KneeMRI`` folder holding
the ``nnUNetTrainer__...__<configuration>`` folders).

Tokens (argument, ``HF_TOKEN`` or the hub's stored login) are handed to ``huggingface_hub`` only; they are
never logged, reported through progress or written to outputs.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import pathlib
import sys
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import ConfigurationError, ModelGatedError, ModelInvalidError, ModelMissingError
from .registry import ModelEntry

log = logging.getLogger("kneepipeline.hub")

ProgressFn = Optional[Callable[..., None]]
NNUNET_BACKENDS = ("nnunet", "nnunet_cascade")
_TRUE = ("1", "true", "yes", "on")
_VERIFY_CACHE = "kneepipeline-sha256.json"


# -- where things live ----------------------------------------------------------------------------
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


def offline_requested(offline: bool = False) -> bool:
    return bool(offline) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _report(progress: ProgressFn, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


# -- which files a model needs ----------------------------------------------------------------------
def checkpoint_file(checkpoint: str = "best") -> str:
    if checkpoint in ("best", "final"):
        return "checkpoint_%s.pth" % checkpoint
    if checkpoint.endswith(".pth"):
        return checkpoint
    raise ConfigurationError("Unknown checkpoint %r." % checkpoint, hint="Use best or final.")


def model_folds(entry: ModelEntry, folds: Optional[Sequence] = None) -> List[str]:
    chosen = list(folds) if folds else list(entry.config.get("folds", [0]))
    return [str(f) for f in chosen]


def nnunet_config_folder(entry: ModelEntry, configuration: str) -> str:
    """``nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres`` for an nnU-Net registry entry."""
    trainer = entry.config.get("trainer", "nnUNetTrainer")
    plans = entry.config.get("plans", "nnUNetPlans")
    return "%s__%s__%s" % (trainer, plans, configuration)


def required_files(entry: ModelEntry, folds: Optional[Sequence] = None, checkpoint: str = "best") -> List[str]:
    """Patterns (fnmatch, relative to the model root) that must each match at least one file."""
    if entry.backend in NNUNET_BACKENDS:
        out = []
        for conf in entry.config.get("configurations", []):
            base = nnunet_config_folder(entry, conf) + "/"
            out += [base + "dataset.json", base + "plans.json"]
            out += [base + "fold_%s/%s" % (f, checkpoint_file(checkpoint)) for f in model_folds(entry, folds)]
        return out
    if entry.source is None:
        return []
    sub = entry.source.subfolder.strip("/")
    return [p[len(sub) + 1:] if sub and p.startswith(sub + "/") else p for p in entry.source.allow_patterns]


def allow_patterns(entry: ModelEntry, folds: Optional[Sequence] = None, checkpoint: str = "best") -> List[str]:
    """Repository paths to download: only the chosen configurations, folds and checkpoint."""
    if entry.source is None:
        return []
    sub = entry.source.subfolder.strip("/")
    pats = [(sub + "/" + p) if sub else p for p in required_files(entry, folds, checkpoint)]
    if entry.backend in NNUNET_BACKENDS:  # small optional metadata next to the plans
        for conf in entry.config.get("configurations", []):
            pats.append((sub + "/" if sub else "") + nnunet_config_folder(entry, conf) + "/model_config.json")
    return pats


def _matches(root: pathlib.Path, pattern: str) -> List[pathlib.Path]:
    if not any(c in pattern for c in "*?["):
        p = root / pattern
        return [p] if p.is_file() else []
    return [p for p in root.glob(pattern) if p.is_file()]


def missing_files(root: pathlib.Path, patterns: Iterable[str]) -> List[str]:
    return [p for p in patterns if not _matches(root, p)]


# -- sha256 -------------------------------------------------------------------------------------------
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
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_name(memo_path.name + ".%d.tmp" % os.getpid())
            tmp.write_text(json.dumps(memo, indent=0, sort_keys=True), encoding="utf-8")
            os.replace(tmp, memo_path)
        except OSError:  # a read-only cache only costs re-hashing
            pass
    return digest


def _recorded_sha(entry: ModelEntry) -> Dict[str, str]:
    """Recorded sha256s keyed by path relative to the model root."""
    if entry.source is None:
        return {}
    sub = entry.source.subfolder.strip("/")
    out = {}
    for repo_path, digest in entry.source.sha256.items():
        rel = repo_path[len(sub) + 1:] if sub and repo_path.startswith(sub + "/") else repo_path
        out[rel] = digest.lower()
    return out


def verify(entry: ModelEntry, root: pathlib.Path, files: Optional[Iterable[str]] = None,
           cache_dir: Optional[pathlib.Path] = None, progress: ProgressFn = None) -> Optional[bool]:
    """Check recorded sha256s of the files present (or of ``files``). None when nothing is recorded.

    Raises :class:`ModelInvalidError` on a mismatch.
    """
    recorded = _recorded_sha(entry)
    if files is not None:
        wanted = set(files)
        recorded = {k: v for k, v in recorded.items() if k in wanted}
    recorded = {k: v for k, v in recorded.items() if (root / k).is_file()}
    if not recorded:
        return None
    for i, (rel, digest) in enumerate(sorted(recorded.items())):
        _report(progress, 0.9 + 0.1 * i / len(recorded), "verifying %s" % rel)
        got = sha256_file(root / rel, cache_dir)
        if got != digest:
            raise ModelInvalidError(
                "Model %s: file %s is corrupt or not the published version (sha256 %s..., expected %s...)."
                % (entry.id, rel, got[:12], digest[:12]),
                hint="Delete %s and download the model again (kneepipeline models --download %s)."
                     % (os.path.realpath(str(root / rel)), entry.id))
    return True


# -- local folders --------------------------------------------------------------------------------
def _candidate_roots(entry: ModelEntry, folder: pathlib.Path) -> List[pathlib.Path]:
    sub = entry.source.subfolder.strip("/") if entry.source else ""
    cands = []
    if sub:
        cands += [folder / sub, folder / pathlib.PurePosixPath(sub).name]
    cands.append(folder)
    if entry.backend in NNUNET_BACKENDS:  # the user pointed at a trainer folder itself
        cands.append(folder.parent)
    seen, out = set(), []
    for c in cands:
        if str(c) not in seen:
            seen.add(str(c))
            out.append(c)
    return out


def locate_model_root(entry: ModelEntry, folder: str | os.PathLike, folds: Optional[Sequence] = None,
                      checkpoint: str = "best") -> pathlib.Path:
    """The model root inside a user's folder, or :class:`ModelMissingError` listing what is missing."""
    folder = pathlib.Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelMissingError("Model folder %s does not exist." % folder,
                                hint="Check --model-dir; it must be a folder holding the model files.")
    needed = required_files(entry, folds, checkpoint)
    best: Tuple[int, pathlib.Path, List[str]] = (10 ** 9, folder, needed)
    for root in _candidate_roots(entry, folder):
        miss = missing_files(root, needed) if root.is_dir() else needed
        if not miss:
            return root.resolve()
        if len(miss) < best[0]:
            best = (len(miss), root, miss)
    _, root, miss = best
    raise ModelMissingError(
        "Model folder %s does not hold model %s: missing %s." % (folder, entry.id, ", ".join(miss)),
        hint="Point --model-dir at the folder that holds %s (expected layout: %s)."
             % ((entry.source.subfolder if entry.source and entry.source.subfolder else "the model files"),
                ", ".join(needed)),
        missing=miss)


# -- the hub --------------------------------------------------------------------------------------
def _tqdm_class(progress: ProgressFn, entry: ModelEntry):
    """A tqdm class that reports byte counts through ``progress`` and draws nothing."""
    from tqdm.std import tqdm as _base

    class _ReportingTqdm(_base):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._kp_done = 0
            self._kp_last = 0.0
            self._kp_bytes = kwargs.get("unit") == "B"

        def update(self, n=1):
            self._kp_done += n or 0
            now = time.time()
            if self._kp_bytes and progress is not None and now - self._kp_last > 0.5:
                self._kp_last = now
                total = self.total or entry.source.size_bytes if entry.source else None
                frac = min(0.9, 0.9 * self._kp_done / total) if total else 0.0
                progress(frac, "downloading %s: %.0f MB%s" % (
                    entry.id, self._kp_done / 1e6, (" of %.0f MB" % (total / 1e6)) if total else ""))
            return None

        def close(self):
            return None

    return _ReportingTqdm


def _hub_error(exc: BaseException, entry: ModelEntry, offline: bool) -> Exception:
    """Map huggingface_hub / network exception types to ours (never by message text)."""
    from huggingface_hub import errors as hf

    repo = entry.source.repo_id if entry.source else entry.id
    rev = entry.source.revision if entry.source else ""
    download_hint = ("Run `kneepipeline models --download %s` where the internet is reachable, or pass "
                     "--model-dir with a copy of the model." % entry.id)
    if isinstance(exc, hf.GatedRepoError):  # subclass of RepositoryNotFoundError: test first
        return ModelGatedError("Model %s comes from the gated repository %s; access was refused." % (entry.id, repo))
    if isinstance(exc, hf.RevisionNotFoundError):
        return ModelMissingError("Revision %s of %s does not exist on the hub." % (rev, repo),
                                 hint="Update KneePipeline (the pinned revision may have been removed) or use --model-dir.")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return ModelMissingError("Repository %s was not found on the hub (or it is private)." % repo,
                                 hint="If it is private, set HF_TOKEN or run `hf auth login`; else use --model-dir.")
    incomplete = getattr(hf, "IncompleteSnapshotError", None)
    if incomplete is not None and isinstance(exc, incomplete):
        return ModelMissingError("The cached copy of %s is incomplete (an interrupted download?)." % entry.id,
                                 hint="Run the download again with network access; it resumes. " + download_hint)
    if isinstance(exc, hf.LocalEntryNotFoundError):
        if offline:
            return ModelMissingError("Model %s is not in the local cache and offline mode is on." % entry.id,
                                     hint="Download it first without --offline/HF_HUB_OFFLINE. " + download_hint)
        return ModelMissingError("Model %s could not be downloaded: the Hugging Face hub is unreachable and "
                                 "the model is not cached." % entry.id,
                                 hint="Check the internet connection / proxy (HTTPS_PROXY). " + download_hint)
    if isinstance(exc, hf.EntryNotFoundError):
        return ModelMissingError("A file of model %s is missing from %s." % (entry.id, repo), hint=download_hint)
    if isinstance(exc, hf.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return ModelGatedError("The hub refused access to %s (HTTP %s)." % (repo, status))
        return ModelMissingError("The Hugging Face hub answered with an error for %s (HTTP %s)." % (repo, status),
                                 hint="Try again later. " + download_hint)
    transport = tuple(t for t in (getattr(sys.modules.get(m), "TransportError", None) for m in ("httpx2", "httpx"))
                      if isinstance(t, type))
    if isinstance(exc, (ConnectionError, TimeoutError) + transport):
        return ModelMissingError("Model %s could not be downloaded: network error (%s)." % (entry.id, type(exc).__name__),
                                 hint="Check the internet connection / proxy. " + download_hint)
    if isinstance(exc, OSError):
        return ModelMissingError("Model %s could not be stored in the cache: %s." % (entry.id, exc.strerror or type(exc).__name__),
                                 hint="Check free disk space and that the cache folder (KNEEPIPELINE_CACHE) is writable.")
    return exc


def _snapshot(entry: ModelEntry, cache_dir: pathlib.Path, offline: bool, token: Optional[str],
              patterns: List[str], progress: ProgressFn) -> pathlib.Path:
    from huggingface_hub import snapshot_download

    src = entry.source
    kwargs = dict(repo_id=src.repo_id, revision=src.revision or "main", cache_dir=str(cache_dir),
                  allow_patterns=patterns, local_files_only=offline)
    if token:
        kwargs["token"] = token
    if progress is not None:
        kwargs["tqdm_class"] = _tqdm_class(progress, entry)
    try:
        folder = snapshot_download(**kwargs)
    except Exception as exc:  # noqa: BLE001 - mapped by type below
        mapped = _hub_error(exc, entry, offline)
        if mapped is exc:
            raise
        raise mapped from None  # the chained hub message could quote request headers: drop it
    return pathlib.Path(folder)


def _resolve_token(token: Optional[str]) -> Optional[str]:
    """Explicit token, else HF_TOKEN; None lets the hub use its stored login."""
    return token or os.environ.get("HF_TOKEN") or None


def ensure_model(entry: ModelEntry, model_dir: Optional[str] = None, offline: bool = False,
                 token: Optional[str] = None, progress: ProgressFn = None, cache_dir: Optional[str] = None,
                 folds: Optional[Sequence] = None, checkpoint: str = "best") -> pathlib.Path:
    """The local model root for ``entry``: the user's ``model_dir`` (validated) or the hub snapshot
    (downloaded when needed, resumed when interrupted, sha256-verified where recorded)."""
    if model_dir:
        root = locate_model_root(entry, model_dir, folds, checkpoint)
        _report(progress, 1.0, "using model %s from %s" % (entry.id, root))
        return root
    if entry.source is None:
        raise ModelMissingError("Model %s has no download source." % entry.id,
                                hint="Pass --model-dir with a local copy of the model.")
    cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    off = offline_requested(offline)
    patterns = allow_patterns(entry, folds, checkpoint)
    _report(progress, 0.0, "looking up model %s%s" % (entry.id, " (offline)" if off else ""))
    snap = _snapshot(entry, cache, off, _resolve_token(token), patterns, progress)
    sub = entry.source.subfolder.strip("/")
    root = snap / sub if sub else snap
    needed = required_files(entry, folds, checkpoint)
    miss = missing_files(root, needed)
    if miss:
        if off:
            raise ModelMissingError(
                "Model %s is only partly in the local cache (%s): missing %s." % (entry.id, snap, ", ".join(miss)),
                hint="Download it without --offline/HF_HUB_OFFLINE (kneepipeline models --download %s)." % entry.id,
                missing=miss)
        raise ModelInvalidError("The download of model %s lacks %s; the repository layout may have changed."
                                % (entry.id, ", ".join(miss)),
                                hint="Update KneePipeline or pass --model-dir with a local copy.", missing=miss)
    files = [str(p.relative_to(root)) for pat in needed for p in _matches(root, pat)]
    verify(entry, root, files, cache, progress)
    _report(progress, 1.0, "model %s ready" % entry.id)
    return root


def model_state(entry: ModelEntry, cache_dir: Optional[str] = None, model_dir: Optional[str] = None,
                folds: Optional[Sequence] = None, checkpoint: str = "best") -> dict:
    """``{"downloaded", "verified", "path"}`` from local files only (never contacts the hub)."""
    state = {"downloaded": False, "verified": None, "path": None}
    try:
        if model_dir:
            root = locate_model_root(entry, model_dir, folds, checkpoint)
        elif entry.source is None:
            return state
        else:
            root = ensure_model(entry, offline=True, cache_dir=cache_dir, folds=folds, checkpoint=checkpoint)
    except ModelInvalidError:
        state.update(downloaded=True, verified=False)
        return state
    except (ModelMissingError, ModelGatedError):
        return state
    state.update(downloaded=True, path=str(root))
    try:
        state["verified"] = verify(entry, root, None, pathlib.Path(cache_dir) if cache_dir else default_cache_dir())
    except ModelInvalidError:
        state["verified"] = False
    return state


def snapshot_revision(root: pathlib.Path) -> Optional[str]:
    """The commit hash of a hub-cache snapshot holding ``root`` (None for other folders)."""
    parts = pathlib.Path(root).parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def file_manifest(root: pathlib.Path, entry: ModelEntry, folds: Optional[Sequence] = None,
                  checkpoint: str = "best", cache_dir: Optional[str] = None) -> Dict[str, str]:
    """sha256 of every file a run used (for provenance)."""
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    out = {}
    for pat in required_files(entry, folds, checkpoint):
        for p in _matches(root, pat):
            out[str(p.relative_to(root))] = sha256_file(p, cache)
    return out
