"""Model files: Hugging Face hub downloads, the local cache, ``--model-dir`` folders, sha256 checks, revisions.

Only this module talks to the hub; files from a Git repository at a pinned commit come through
``gitfiles.py`` into the same cache (:func:`ensure_model` picks by the registry source's ``kind``). A model
*root* is the local folder that holds what a registry entry's ``source.subfolder`` names inside the
repository (for nnU-Net: the ``Dataset500_KneeMRI`` folder holding the ``nnUNetTrainer__...__<configuration>``
folders). Every resolution is recorded in the cache (``modelcache.update_record``: source, requested and
resolved revision, sha256 per file); ``modelfiles.py`` holds which files a model needs, their checks and
the provenance a run's manifest records (re-exported here).

Tokens (argument, ``HF_TOKEN`` or the hub's stored login) are handed to ``huggingface_hub`` only; they are
never logged, reported through progress or written to outputs.
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys
import time
from typing import List, Optional, Sequence, Tuple

from .errors import ModelGatedError, ModelInvalidError, ModelMissingError
from .modelcache import (ProgressFn, cache_path, default_cache_dir, offline_requested,  # noqa: F401 (re-exported)
                         sha256_file, update_record)
from .modelcache import report as _report
from .modelfiles import (NNUNET_BACKENDS, _matches, allow_patterns, cached_revisions,  # noqa: F401 (re-exported)
                         checkpoint_file, file_manifest, missing_files, model_folds, nnunet_config_folder,
                         note_model_used, provenance, recording_models, required_files, resolved_revision,
                         snapshot_revision, verify)
from .registry import ModelEntry

log = logging.getLogger("kneepipeline.hub")


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


def _fetch_root(entry: ModelEntry, cache: pathlib.Path, off: bool, token: Optional[str], folds, checkpoint,
                progress: ProgressFn, patterns: Optional[List[str]] = None) -> pathlib.Path:
    """The model root in the cache, fetching ``patterns`` (default: every file the model needs)."""
    src = entry.source
    try:
        if src.kind == "git_files":
            from .gitfiles import ensure_git_files

            return ensure_git_files(entry, cache, off, progress)
        pats = patterns if patterns is not None else allow_patterns(entry, folds, checkpoint)
        snap = _snapshot(entry, cache, off, token, pats, progress)
    except ModelMissingError as exc:
        other = [r for r in cached_revisions(entry, cache, folds, checkpoint) if r != src.revision]
        if off and src.pinned and other:
            raise ModelMissingError(
                "Model %s is cached at revision %s, but this KneePipeline pins revision %s of %s."
                % (entry.id, ", ".join(r[:12] for r in other), src.revision[:12], src.repo_id),
                hint="Download the pinned revision (kneepipeline models --download %s) where the internet is "
                     "reachable, or pass --model-dir with the cached copy to use it knowingly (the manifest "
                     "records its revision)." % entry.id, cached_revisions=other) from None
        raise exc
    sub = src.subfolder.strip("/")
    return snap / sub if sub else snap


def declared_choice(entry: ModelEntry, cache: pathlib.Path, off: bool, token: Optional[str],
                    folds: Optional[Sequence], checkpoint: str, progress: ProgressFn = None) -> Tuple[Optional[List[str]], str]:
    """(folds, checkpoint) to fetch for an nnU-Net hub entry: its ``model_config.json`` (of the configuration
    that makes the final prediction) is fetched first -- a small file -- and read by the run's own rule
    (``segmentation.settings.nnunet_settings``: ``--folds`` else the config's fold else the registry's; the
    config's checkpoint unless another than ``best`` is asked for), so the download brings exactly the fold and
    checkpoint the run will use. Other entries, and a request that names both folds and a checkpoint, are
    returned unchanged. A config that cannot be read leaves the registry's choice (the run's checks report
    the file)."""
    src = entry.source
    confs = list((entry.config or {}).get("configurations", []))
    if entry.backend not in NNUNET_BACKENDS or src is None or src.kind == "git_files" or not confs \
            or (folds and checkpoint != "best"):
        return folds, checkpoint
    from .segmentation.settings import MODEL_CONFIG, nnunet_settings

    sub = src.subfolder.strip("/")
    pattern = (sub + "/" if sub else "") + nnunet_config_folder(entry, confs[-1]) + "/" + MODEL_CONFIG
    _report(progress, 0.0, "reading %s of %s" % (MODEL_CONFIG, entry.id))
    root = _fetch_root(entry, cache, off, token, folds, checkpoint, None, patterns=[pattern])
    try:
        s = nnunet_settings(entry, root, folds, checkpoint)
    except ModelInvalidError as exc:
        log.warning("Model %s: %s; fetching the registry's fold and checkpoint.", entry.id, exc.message)
        return folds, checkpoint
    return list(s.folds), s.checkpoint


def ensure_model(entry: ModelEntry, model_dir: Optional[str] = None, offline: bool = False,
                 token: Optional[str] = None, progress: ProgressFn = None, cache_dir: Optional[str] = None,
                 folds: Optional[Sequence] = None, checkpoint: str = "best") -> pathlib.Path:
    """The local model root for ``entry``: the user's ``model_dir`` (validated) or the cached copy from the
    entry's source - a hub snapshot or Git files at a pinned commit - downloaded when needed, resumed when
    interrupted, sha256-verified where recorded, and recorded in the cache with its resolved revision."""
    if model_dir:
        root = locate_model_root(entry, model_dir, folds, checkpoint)
        note_model_used(entry, root, folds, checkpoint)
        _report(progress, 1.0, "using model %s from %s" % (entry.id, root))
        return root
    if entry.source is None:
        raise ModelMissingError("Model %s has no download source." % entry.id,
                                hint="Pass --model-dir with a local copy of the model.")
    cache = cache_path(cache_dir)
    off = offline_requested(offline)
    _report(progress, 0.0, "looking up model %s%s" % (entry.id, " (offline)" if off else ""))
    folds, checkpoint = declared_choice(entry, cache, off, _resolve_token(token), folds, checkpoint)
    root = _fetch_root(entry, cache, off, _resolve_token(token), folds, checkpoint, progress)
    needed = required_files(entry, folds, checkpoint)
    miss = missing_files(root, needed)
    if miss:
        if off:
            raise ModelMissingError(
                "Model %s is only partly in the local cache (%s): missing %s." % (entry.id, root, ", ".join(miss)),
                hint="Download it without --offline/HF_HUB_OFFLINE (kneepipeline models --download %s)." % entry.id,
                missing=miss)
        raise ModelInvalidError("The download of model %s lacks %s; the repository layout may have changed."
                                % (entry.id, ", ".join(miss)),
                                hint="Update KneePipeline or pass --model-dir with a local copy.", missing=miss)
    files = [str(p.relative_to(root)) for pat in needed for p in _matches(root, pat)]
    verify(entry, root, files, cache, progress)
    kind, revision = resolved_revision(root)
    note_model_used(entry, root, folds, checkpoint)
    update_record(cache, entry.id, kind, entry.source.repo_id, entry.source.revision, revision, root,
                  {f: sha256_file(root / f, cache) for f in files})
    _report(progress, 1.0, "model %s ready (revision %s)" % (entry.id, (revision or "local")[:12]))
    return root


def model_state(entry: ModelEntry, cache_dir: Optional[str] = None, model_dir: Optional[str] = None,
                folds: Optional[Sequence] = None, checkpoint: str = "best") -> dict:
    """``{"downloaded", "verified", "path", "revision", "pinned_revision", "cached_revisions"}`` from local
    files only (never contacts the hub). ``cached_revisions`` lists other cached commits when the pinned
    one is absent (a cached model whose revision differs from the pin)."""
    src = entry.source
    state = {"downloaded": False, "verified": None, "path": None, "revision": None,
             "pinned_revision": src.revision if src is not None and src.pinned else None, "cached_revisions": []}
    try:
        if model_dir:
            root = locate_model_root(entry, model_dir, folds, checkpoint)
        elif src is None:
            return state
        else:
            root = ensure_model(entry, offline=True, cache_dir=cache_dir, folds=folds, checkpoint=checkpoint)
    except ModelInvalidError:
        state.update(downloaded=True, verified=False)
        return state
    except (ModelMissingError, ModelGatedError) as exc:
        state["cached_revisions"] = list(exc.details.get("cached_revisions", []))
        return state
    state.update(downloaded=True, path=str(root), revision=resolved_revision(root)[1])
    try:
        state["verified"] = verify(entry, root, None, cache_path(cache_dir))
    except ModelInvalidError:
        state["verified"] = False
    return state


