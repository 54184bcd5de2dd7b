"""Real sample data for users: the source archive of ``mskt==0.1.22`` (pymskt, MIT) from PyPI.

Only the files the demo and the tests use are extracted into a cache, laid out as the project's
``shared/data/pymskt`` folder. A folder that already holds them (such as ``../shared/data``) can serve as
the cache. ``pip download`` cannot fetch this archive on its own: pip prepares an sdist's metadata, which
builds its build dependencies from source; so we take the same file from the same package index's simple
API and verify its published sha256 ourselves.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Optional

from .errors import InputUnreadableError, KneePipelineError, ModelInvalidError

ARCHIVE_NAME = "mskt-0.1.22.tar.gz"
ARCHIVE_SHA256 = "b49ffa4924337e28dc08af2e7efab399e9248c9e7db477e593d5d6e254757308"
SIMPLE_INDEX = os.environ.get("KNEEPIPELINE_PYPI_SIMPLE", "https://pypi.org/simple")
# archive member (prefix) -> path in the cache
MEMBERS: Dict[str, str] = {
    "mskt-0.1.22/data/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd": "pymskt/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd",
    "mskt-0.1.22/data/MESE_T2_dicom_data_anon/": "pymskt/MESE_T2_dicom_anon/",
    "mskt-0.1.22/data/femur_meshes_registration/": "pymskt/femur_meshes/",
}
SAMPLE_LABELS = "pymskt/SAG_3D_DESS_RIGHT_bones_cart_men_fib-label.nrrd"
SAMPLE_MESE = "pymskt/MESE_T2_dicom_anon"
SAMPLE_FEMUR_MESHES = "pymskt/femur_meshes"


class SampleDataError(KneePipelineError):
    category = "input_unreadable"
    default_hint = ("Check the network connection to PyPI, or download mskt-0.1.22.tar.gz yourself and pass "
                    "--archive PATH.")


class IndexUnreachableError(SampleDataError):
    """The package index (or the archive's URL) could not be reached at all: no network, DNS, refused."""


def default_cache() -> Path:
    base = os.environ.get("KNEEPIPELINE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kneepipeline")
    return Path(base) / "sample-data"


def shared_data_candidates() -> list:
    here = Path(__file__).resolve().parents[1]
    out = []
    if os.environ.get("KNEEPIPELINE_SAMPLE_DATA"):
        out.append(Path(os.environ["KNEEPIPELINE_SAMPLE_DATA"]))
    if os.environ.get("KNEEPIPELINE_SHARED"):
        out.append(Path(os.environ["KNEEPIPELINE_SHARED"]) / "data")
    out.append(here.parent / "shared" / "data")
    return out


def is_complete(folder: Path) -> bool:
    """Every extracted member present (the label map, a non-empty MESE folder and femur-mesh folder)."""
    def nonempty(p: Path) -> bool:
        return p.is_dir() and any(p.iterdir())

    return ((folder / SAMPLE_LABELS).is_file() and nonempty(folder / SAMPLE_MESE)
            and nonempty(folder / SAMPLE_FEMUR_MESHES))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def archive_url(index: str = SIMPLE_INDEX) -> str:
    req = urllib.request.Request(index.rstrip("/") + "/mskt/", headers={"Accept": "text/html"})
    try:
        html = urllib.request.urlopen(req, timeout=60).read().decode("utf-8", "replace")
    except OSError as exc:
        raise IndexUnreachableError("Cannot reach the package index %s: %s." % (index, exc)) from exc
    for href in re.findall(r'href="([^"]+)"', html):
        if href.split("#")[0].endswith("/" + ARCHIVE_NAME):
            return urllib.parse.urljoin(index.rstrip("/") + "/mskt/", href.split("#")[0])
    raise SampleDataError("%s is not listed on %s." % (ARCHIVE_NAME, index))


def download_archive(dest_dir: Path, progress: Optional[Callable[[float, str], None]] = None) -> Path:
    url = archive_url()
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / ARCHIVE_NAME
    tmp = dest_dir / (ARCHIVE_NAME + ".part")
    try:
        with urllib.request.urlopen(url, timeout=120) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress and total:
                    progress(0.9 * done / total, "downloading %s (%d MB)" % (ARCHIVE_NAME, total // 1_000_000))
        os.replace(tmp, final)
    except urllib.error.URLError as exc:
        raise IndexUnreachableError("Download of %s failed: %s." % (ARCHIVE_NAME, exc)) from exc
    except OSError as exc:
        raise SampleDataError("Download of %s failed: %s." % (ARCHIVE_NAME, exc)) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


def extract_members(archive: Path, dest: Path, expected_sha256: str = ARCHIVE_SHA256,
                    members: Dict[str, str] = MEMBERS) -> Path:
    """Verify the archive's sha256, then extract only ``members`` (regular files, no links) into ``dest``."""
    digest = sha256_file(archive)
    if digest != expected_sha256:
        raise ModelInvalidError("%s has sha256 %s, expected %s." % (archive.name, digest, expected_sha256),
                                hint="The download is corrupt or not the published archive; delete it and retry.")
    staging = Path(tempfile.mkdtemp(prefix=".sample-", dir=str(dest.parent if dest.parent.exists() else None)))
    try:
        try:
            tf = tarfile.open(archive, "r:gz")
        except (tarfile.TarError, OSError) as exc:
            raise InputUnreadableError("Cannot open %s: %s." % (archive.name, exc)) from exc
        with tf:
            for m in tf:
                if not m.isfile():
                    continue
                for prefix, target in members.items():
                    if m.name == prefix or (prefix.endswith("/") and m.name.startswith(prefix)):
                        rel = target + m.name[len(prefix):] if prefix.endswith("/") else target
                        if ".." in Path(rel).parts or "/" in rel[len(target):].strip("/"):
                            continue  # only direct children of listed folders
                        out = staging / rel
                        out.parent.mkdir(parents=True, exist_ok=True)
                        src = tf.extractfile(m)
                        with src, open(out, "wb") as fh:
                            shutil.copyfileobj(src, fh)
        dest.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            target = dest / item.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(item, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def ensure_sample_data(cache: Optional[Path] = None, archive: Optional[Path] = None, use_shared: bool = True,
                       progress: Optional[Callable[[float, str], None]] = None) -> Path:
    """A folder laid out like ``shared/data`` holding the sample files; downloads once if needed."""
    if use_shared and archive is None:
        for cand in shared_data_candidates():
            if is_complete(cand):
                return cand
    cache = Path(cache) if cache else default_cache()
    if is_complete(cache) and archive is None:
        return cache
    if archive is None:
        archive = download_archive(cache.parent / "downloads", progress)
    extract_members(Path(archive), cache)
    if progress:
        progress(1.0, "sample data ready in %s" % cache)
    return cache
