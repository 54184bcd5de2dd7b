"""Which files a model needs, their sha256 checks against the registry, and where a model root came from
(hub snapshot / Git files at a commit / local folder, with its revision): the provenance a run's manifest
records. No network. :func:`recording_models` collects every model resolved inside a ``with`` block (the
segmentation step uses it to record ensemble members and 2D models alike).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import pathlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .errors import ConfigurationError, ModelInvalidError
from .modelcache import ProgressFn, cache_path, report as _report, sha256_file
from .registry import ModelEntry, is_commit

NNUNET_BACKENDS = ("nnunet", "nnunet_cascade")
_USED: "contextvars.ContextVar[Optional[list]]" = contextvars.ContextVar("kneepipeline_models_used", default=None)


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


def snapshot_revision(root: pathlib.Path) -> Optional[str]:
    """The commit hash of a hub-cache snapshot holding ``root`` (None for other folders)."""
    parts = pathlib.Path(root).parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def cached_revisions(entry: ModelEntry, cache_dir=None, folds: Optional[Sequence] = None,
                     checkpoint: str = "best") -> List[str]:
    """Commits of ``entry``'s repository in the cache that hold every file the model needs (no network)."""
    from .gitfiles import repo_folder

    src = entry.source
    if src is None:
        return []
    cache = cache_path(cache_dir)
    base = repo_folder(cache, src) if src.kind == "git_files" else \
        cache / ("models--" + src.repo_id.replace("/", "--")) / "snapshots"
    if not base.is_dir():
        return []
    sub, needed, out = src.subfolder.strip("/"), required_files(entry, folds, checkpoint), []
    for d in sorted(base.iterdir()):
        if is_commit(d.name) and d.is_dir() and not missing_files(d / sub if sub else d, needed):
            out.append(d.name)
    return out


def resolved_revision(root: pathlib.Path) -> Tuple[str, Optional[str]]:
    """(source kind, commit) of a model root: ``("hub", sha)``, ``("git_files", sha)`` or ``("local", None)``."""
    from .gitfiles import git_revision

    rev = git_revision(root)
    if rev:
        return "git_files", rev
    rev = snapshot_revision(root)
    if rev and any(part.startswith("models--") for part in pathlib.Path(root).parts):
        return "hub", rev
    return "local", None


def file_manifest(root: pathlib.Path, entry: ModelEntry, folds: Optional[Sequence] = None,
                  checkpoint: str = "best", cache_dir: Optional[str] = None) -> Dict[str, str]:
    """sha256 of every file a run used (for provenance)."""
    cache = cache_path(cache_dir)
    out = {}
    for pat in required_files(entry, folds, checkpoint):
        for p in _matches(root, pat):
            out[str(p.relative_to(root))] = sha256_file(p, cache)
    return out


def provenance(entry: ModelEntry, root, files: Optional[Iterable] = None, cache_dir: Optional[str] = None,
               folds: Optional[Sequence] = None, checkpoint: str = "best") -> dict:
    """Exactly which files of ``entry`` a run used, for its manifest: source (``hub`` | ``git_files`` |
    ``local``), repository, resolved revision (None for a local folder), the registry's requested and pinned
    revisions, path, sha256 per file (``files``: paths used, absolute or relative to ``root``; default the
    registry's required files) and ``verified`` (True when every file with a recorded sha256 matches it,
    None when none is recorded: a local copy of the published files verifies too)."""
    root = pathlib.Path(root)
    cache = cache_path(cache_dir)
    paths = [pathlib.Path(f) if pathlib.Path(f).is_absolute() else root / f for f in files] if files is not None \
        else [p for pat in required_files(entry, folds, checkpoint) for p in _matches(root, pat)]
    digests = {}
    for p in paths:
        try:
            rel = str(p.relative_to(root))
        except ValueError:
            rel = str(p)
        digests[rel] = sha256_file(p, cache)
    kind, revision = resolved_revision(root)
    src = entry.source
    recorded = _recorded_sha(entry)
    checked = [k for k in digests if k in recorded]
    return {"id": entry.id, "source": kind, "repo_id": src.repo_id if src else None,
            "source_kind": src.kind if src else None, "revision": revision,
            "requested_revision": src.revision if src else None,
            "pinned_revision": src.revision if src is not None and src.pinned else None,
            "path": str(root), "sha256": digests,
            "verified": all(digests[k] == recorded[k] for k in checked) if checked else None}


# -- what a run used ------------------------------------------------------------------------------
@contextlib.contextmanager
def recording_models() -> Iterator[list]:
    """Collect ``(entry, root, folds, checkpoint)`` of every :func:`hub.ensure_model` inside the block."""
    token = _USED.set([])
    try:
        yield _USED.get()
    finally:
        _USED.reset(token)


def note_model_used(entry: ModelEntry, root: pathlib.Path, folds=None, checkpoint: str = "best") -> None:
    used = _USED.get()
    if used is not None:
        used.append((entry, pathlib.Path(root), folds, checkpoint))


def used_provenance(used: list, cache_dir=None) -> List[dict]:
    """:func:`provenance` of each model a :func:`recording_models` block resolved (first use of each)."""
    out, seen = [], set()
    for entry, root, folds, checkpoint in used:
        if (entry.id, str(root)) not in seen:
            seen.add((entry.id, str(root)))
            out.append(provenance(entry, root, cache_dir=cache_dir, folds=folds, checkpoint=checkpoint))
    return out
