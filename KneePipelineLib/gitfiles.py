"""Model files from a public Git repository at a pinned commit (registry ``GitFilesSource``): one raw-file
URL per file, each checked against its recorded sha256 before it is used.

Files land in ``<cache>/git--<owner>--<name>/<commit>/<path>``. A download is written to
``<path>.incomplete`` and renamed into place only once its sha256 matches the registry, so no half or
altered file is ever used. An interrupted download resumes (HTTP ``Range``) on the next try - up to
:data:`ATTEMPTS` tries in one call, and again on the next call - and restarts from zero when the server
does not resume or the resumed bytes do not verify. Standard library only (urllib: ``HTTPS_PROXY`` /
``NO_PROXY`` apply). ``KNEEPIPELINE_GIT_ENDPOINT`` replaces ``https://raw.githubusercontent.com`` (a mirror).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import re
import socket
import time
import urllib.error
import urllib.request
from typing import Callable, Optional

from .errors import ModelInvalidError, ModelMissingError
from .modelcache import ProgressFn, download_hint, remember_sha256, report, sha256_file

ENDPOINT_ENV = "KNEEPIPELINE_GIT_ENDPOINT"
FOLDER_PREFIX = "git--"
ATTEMPTS = 3
TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.3
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_TRANSIENT = (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)


class _Interrupted(Exception):
    """The body ended before Content-Length bytes arrived."""


def repo_folder(cache: pathlib.Path, source) -> pathlib.Path:
    return pathlib.Path(cache) / (FOLDER_PREFIX + source.repo_id.replace("/", "--"))


def snapshot_folder(cache: pathlib.Path, source) -> pathlib.Path:
    return repo_folder(cache, source) / source.revision


def git_revision(root: pathlib.Path) -> Optional[str]:
    """The commit of a Git-files cache folder holding ``root`` (None for other folders)."""
    parts = pathlib.Path(root).parts
    for i in range(len(parts) - 1):
        if parts[i].startswith(FOLDER_PREFIX) and _HEX40.match(parts[i + 1]):
            return parts[i + 1]
    return None


def endpoint(source) -> str:
    return os.environ.get(ENDPOINT_ENV, "").strip() or source.base_url


@contextlib.contextmanager
def _lock(path: pathlib.Path):
    """One downloader per file across processes (batch jobs); no lock where filelock is not installed."""
    try:
        from filelock import FileLock
    except ImportError:  # pragma: no cover - filelock comes with huggingface_hub
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def _fetch_once(url: str, part: pathlib.Path, on_bytes: Callable[[int], None]) -> bool:
    """Append the rest of ``url`` to ``part`` (or write it afresh when the server does not resume).
    Returns whether earlier bytes were kept (a resumed download). Raises :class:`_Interrupted` when the
    body is shorter than announced."""
    from . import __version__

    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "KneePipeline/%s" % __version__, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = "bytes=%d-" % have
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
        resumed = bool(have) and resp.status == 206 and \
            (resp.headers.get("Content-Range") or "").startswith("bytes %d-" % have)
        if not resumed:
            have = 0
        length = resp.headers.get("Content-Length") or ""
        expected = have + int(length) if length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as fh:
            while True:
                block = resp.read(1 << 16)
                if not block:
                    break
                fh.write(block)
                have += len(block)
                on_bytes(have)
    if expected is not None and have < expected:
        raise _Interrupted(have)
    return resumed


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _http_error(exc: urllib.error.HTTPError, entry, path: str, url: str) -> ModelMissingError:
    src = entry.source
    if exc.code == 404:
        return ModelMissingError(
            "Model %s: %s is not at commit %s of %s (HTTP 404 from %s)." % (entry.id, path, src.revision[:12],
                                                                           src.repo_id, url),
            hint="The repository may have been removed or rewritten; update KneePipeline, or pass --model-dir "
                 "with a copy of the files.")
    return ModelMissingError("Model %s: the file server answered HTTP %d for %s." % (entry.id, exc.code, url),
                             hint="Try again later (HTTP 403/429 are rate limits). " + download_hint(entry.id))


def _download(entry, path: str, dest: pathlib.Path, digest: str, cache: pathlib.Path,
              on_bytes: Callable[[int], None]) -> None:
    """Fetch one file into ``dest``, verified; see the module docstring for resume and restart."""
    url = entry.source.url(path, endpoint(entry.source))
    part = dest.with_name(dest.name + ".incomplete")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last: Optional[BaseException] = None
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(RETRY_PAUSE_S * attempt)
        try:
            resumed = _fetch_once(url, part, on_bytes)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # the kept bytes are not a prefix the server knows
                part.unlink()
                last = exc
                continue
            raise _http_error(exc, entry, path, url) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, _TRANSIENT) and not isinstance(exc.reason, ConnectionRefusedError):
                last = exc
                continue
            raise ModelMissingError(
                "Model %s could not be downloaded: %s is unreachable (%s) and the model is not cached."
                % (entry.id, url.split("/")[2], type(exc.reason).__name__),
                hint="Check the internet connection / proxy (HTTPS_PROXY). " + download_hint(entry.id)) from None
        except (_Interrupted,) + _TRANSIENT as exc:
            last = exc
            continue
        except OSError as exc:
            raise ModelMissingError("Model %s could not be stored in the cache: %s."
                                    % (entry.id, exc.strerror or type(exc).__name__),
                                    hint="Check free disk space and that the cache folder (KNEEPIPELINE_CACHE) "
                                         "is writable.") from None
        got = _sha256(part)
        if got == digest:
            os.replace(part, dest)
            remember_sha256(dest, digest, cache)
            return
        part.unlink()
        if resumed:  # kept bytes from an earlier try that do not belong to this file: start again
            last = None
            continue
        raise ModelInvalidError(
            "Model %s: the downloaded %s is not the published file (sha256 %s..., expected %s...); it was not "
            "kept." % (entry.id, path, got[:12], digest[:12]),
            hint="The repository or a proxy delivered other bytes than the ones KneePipeline records. Try again "
                 "later; if it persists, pass --model-dir with a verified copy and report it.",
            url=url)
    raise ModelMissingError(
        "Model %s: the download of %s was interrupted %d times (%s)." % (entry.id, path, ATTEMPTS,
                                                                     type(last).__name__ if last else "restart"),
        hint="Run the same command again: it resumes where it stopped. " + download_hint(entry.id))


def ensure_git_files(entry, cache: pathlib.Path, offline: bool, progress: ProgressFn = None) -> pathlib.Path:
    """The model root of a ``GitFilesSource`` entry in ``cache``: every file present and matching its
    recorded sha256 (downloaded unless ``offline``)."""
    src = entry.source
    snap = snapshot_folder(cache, src)
    total = src.size_bytes or 0
    done = [0]
    last_report = [0.0]
    todo = []
    for path in src.allow_patterns:
        dest = snap / path
        if dest.is_file():
            if sha256_file(dest, cache) == src.sha256[path]:
                continue
            if offline:
                raise ModelInvalidError(
                    "Model %s: the cached %s does not match its recorded sha256." % (entry.id, dest),
                    hint="Delete %s and download the model again (kneepipeline models --download %s)."
                         % (dest, entry.id))
            dest.unlink()  # our own cache holds a bad copy: fetch it again
        todo.append(path)
    if todo and offline:
        raise ModelMissingError("Model %s is not in the local cache and offline mode is on." % entry.id,
                                hint="Download it first without --offline/HF_HUB_OFFLINE. " + download_hint(entry.id),
                                missing=todo)
    for path in todo:
        base = done[0]

        def on_bytes(n: int, base=base, path=path) -> None:
            now = time.time()
            if progress is not None and now - last_report[0] > 0.5:
                last_report[0] = now
                frac = min(0.9, 0.9 * (base + n) / total) if total else 0.0
                progress(frac, "downloading %s: %s (%.0f kB%s)" % (
                    entry.id, path.rsplit("/", 1)[-1], (base + n) / 1e3, (" of %.0f kB" % (total / 1e3)) if total else ""))

        report(progress, min(0.9, 0.9 * base / total) if total else 0.0,
               "downloading %s from %s@%s" % (path, src.repo_id, src.revision[:12]))
        dest = snap / path
        with _lock(repo_folder(cache, src) / ".locks" / (src.sha256[path] + ".lock")):
            if not (dest.is_file() and sha256_file(dest, cache) == src.sha256[path]):  # another job may have won
                _download(entry, path, dest, src.sha256[path], cache, on_bytes)
        done[0] = base + dest.stat().st_size
    sub = src.subfolder.strip("/")
    return snap / sub if sub else snap
