"""The one way anything is written into a run folder, and the run folder's lock (Python 3.9-safe, standard
library only; SimpleITK and VTK are imported inside the two writers that need them).

* :func:`atomic_write` — check the free space first, write to a temporary name in the same folder, check the
  file is there and not empty, then rename into place. Any failure of the machine (disk full, read-only,
  permission, quota) becomes :class:`~KneePipelineLib.errors.OutputUnwritableError`; the temporary file is
  always removed. A full disk is refused *before* a writer starts, because VTK's writers crash the process
  (SIGSEGV) when the disk fills under them.
* :func:`write_volume` (NIfTI/NRRD through SimpleITK) and :func:`write_mesh` (VTP/VTK) estimate their size,
  then go through :func:`atomic_write`.
* :class:`RunFolderLock` — one writer per run folder: an advisory lock (``flock``) on ``.kneepipeline.lock``
  held for the whole run and released by the kernel when the process dies, so a second run gets a clear
  ``busy`` error and a reader can tell a live run from a dead one (:func:`folder_is_locked`).
"""
import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Union

from ..errors import BusyError, InvalidInputError, KneePipelineError, OutputUnwritableError

PathLike = Union[str, "os.PathLike[str]"]
LOCK_NAME = ".kneepipeline.lock"
# Room kept free after any large write: enough for the failure manifest that records why a run stopped.
RESERVE_BYTES = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)

# Tests of a hostile machine set this (through :func:`simulated_free_space`) to make the disk report only so
# many free bytes; everything else about the write is real.
_SIMULATED_FREE_BYTES: Optional[int] = None


@contextlib.contextmanager
def simulated_free_space(free_bytes: Optional[int]) -> Iterator[None]:
    """Within the block every folder reports ``free_bytes`` free (a full disk, without filling one)."""
    global _SIMULATED_FREE_BYTES
    old = _SIMULATED_FREE_BYTES
    _SIMULATED_FREE_BYTES = free_bytes
    try:
        yield
    finally:
        _SIMULATED_FREE_BYTES = old


_SIMULATED_FAILURES: list = []


@contextlib.contextmanager
def simulated_write_failure(name_pattern: str, error: int = errno.ENOSPC) -> Iterator[None]:
    """Within the block, writing a file whose name matches ``name_pattern`` (fnmatch) fails as the OS
    would with ``error`` (default: disk full) — a hostile machine at one precise moment of a run."""
    entry = (name_pattern, error)
    _SIMULATED_FAILURES.append(entry)
    try:
        yield
    finally:
        _SIMULATED_FAILURES.remove(entry)


def _simulated_failure(final: Path) -> None:
    import fnmatch

    for pattern, code in list(_SIMULATED_FAILURES):
        if fnmatch.fnmatch(final.name, pattern):
            raise OSError(code, os.strerror(code), str(final))


def free_bytes(folder: PathLike) -> int:
    """Bytes a non-root user may still write in ``folder``'s file system."""
    if _SIMULATED_FREE_BYTES is not None:
        return int(_SIMULATED_FREE_BYTES)
    try:
        st = os.statvfs(str(folder))
        return int(st.f_bavail) * int(st.f_frsize)
    except (AttributeError, OSError):  # Windows, or a folder that vanished: ask shutil
        return int(shutil.disk_usage(str(folder)).free)


def _human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return ("%d %s" % (n, unit)) if unit == "bytes" else ("%.1f %s" % (n, unit))
        n /= 1000.0
    return "%d" % n  # pragma: no cover


def ensure_free_space(folder: PathLike, needed_bytes: int, what: str = "the output",
                      reserve_bytes: int = RESERVE_BYTES) -> None:
    """Raise ``output_unwritable`` unless ``needed_bytes`` (+ a small reserve) fit in ``folder``."""
    free = free_bytes(folder)
    if free < int(needed_bytes) + int(reserve_bytes):
        raise OutputUnwritableError(
            "Not enough free disk space to write %s in %s: about %s needed, %s free."
            % (what, folder, _human(int(needed_bytes) + int(reserve_bytes)), _human(free)),
            hint="Free disk space or choose an output folder on another disk (--out).")


def unwritable(exc: BaseException, path: PathLike) -> OutputUnwritableError:
    """The typed error for a failed write of ``path`` (classified by errno, never by message text)."""
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        return OutputUnwritableError("The disk is full: cannot write %s." % path,
                                     hint="Free disk space or choose an output folder on another disk (--out).")
    if code == errno.EROFS:
        return OutputUnwritableError("Cannot write %s: the file system is read-only." % path)
    if code in (errno.EACCES, errno.EPERM):
        return OutputUnwritableError("Permission denied: cannot write %s." % path)
    reason = os.strerror(code) if isinstance(code, int) else "%s" % (type(exc).__name__,)
    return OutputUnwritableError("Cannot write %s (%s)." % (path, reason))


def _shown_name(path: Path) -> str:
    """The name a user knows: a writer called on another writer's temporary file names the final file."""
    name = path.name
    if name.startswith(".tmp-") and "-" in name[5:]:
        return name[5:].split("-", 1)[1]
    return name


def atomic_write(path: PathLike, write: Callable[[Path], Any], expected_bytes: int = 0,
                 what: Optional[str] = None, allow_empty: bool = False,
                 reserve_bytes: int = RESERVE_BYTES) -> Path:
    """Write ``path`` through ``write(tmp_path)`` and rename it into place; returns the final path.

    The temporary file sits in the same folder (so the rename is atomic) and ends with the final name
    (so writers that choose the format by extension pick the same one). ``expected_bytes`` is an upper
    estimate of the size, checked against the free space before anything is written.
    """
    final = Path(path)
    folder = final.parent
    label = what or _shown_name(final)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(exc, folder) from exc
    ensure_free_space(folder, int(expected_bytes), label, reserve_bytes)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix="-" + final.name, dir=str(folder))
        os.close(fd)
    except OSError as exc:
        raise unwritable(exc, final) from exc
    tmp = Path(tmp_name)
    try:
        try:
            _simulated_failure(final)
            write(tmp)
        except KneePipelineError:
            raise
        except (OSError, RuntimeError) as exc:  # SimpleITK/ITK report I/O failures as RuntimeError
            raise unwritable(exc, final) from exc
        try:
            size = tmp.stat().st_size
        except OSError as exc:
            raise unwritable(exc, final) from exc
        if size == 0 and not allow_empty:
            raise OutputUnwritableError("Writing %s produced an empty file." % final,
                                        hint="Check the free disk space and that the output folder is writable.")
        try:
            os.chmod(str(tmp), 0o666 & ~_UMASK)   # mkstemp makes 0600; outputs are ordinary files
            os.replace(str(tmp), str(final))
        except OSError as exc:
            raise unwritable(exc, final) from exc
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
    return final


def atomic_write_text(path: PathLike, text: str, what: Optional[str] = None,
                      reserve_bytes: int = 0) -> Path:
    """Text (UTF-8) written atomically. Small files (manifests) keep no reserve: they must get through
    when a large write has just been refused for want of space."""
    data = text.encode("utf-8")

    def write(tmp: Path) -> None:
        with open(str(tmp), "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_write(path, write, expected_bytes=len(data), what=what, allow_empty=True,
                        reserve_bytes=reserve_bytes)


def atomic_write_bytes(path: PathLike, data: bytes, what: Optional[str] = None) -> Path:
    def write(tmp: Path) -> None:
        with open(str(tmp), "wb") as fh:
            fh.write(data)

    return atomic_write(path, write, expected_bytes=len(data), what=what, allow_empty=True)


# -- volumes and meshes ----------------------------------------------------------------------------
def volume_bytes_estimate(volume: Any) -> int:
    """Upper estimate of a volume file: the raw array plus the header (compression only shrinks it)."""
    arr = getattr(volume, "array", volume)
    return int(getattr(arr, "nbytes", 0)) + 4096


def write_volume(volume: Any, path: PathLike, compress: bool = True) -> Path:
    """A :class:`~KneePipelineLib.io.volume.Volume` as NIfTI/NRRD (format from the extension), atomically."""
    import SimpleITK as sitk

    image = volume.to_sitk()
    return atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), bool(compress)),
                        expected_bytes=volume_bytes_estimate(volume))


def mesh_bytes_estimate(poly: Any) -> int:
    """Upper estimate of a VTP/VTK file: float32/float64 points, every point array, 4 ids per cell."""
    n_pts = int(poly.GetNumberOfPoints())
    n_cells = int(poly.GetNumberOfCells())
    per_point = 3 * 8
    pd = poly.GetPointData()
    for i in range(pd.GetNumberOfArrays()):
        arr = pd.GetArray(i)
        if arr is not None:
            per_point += arr.GetNumberOfComponents() * max(arr.GetDataTypeSize(), 1)
    return n_pts * per_point + n_cells * 4 * 8 + 64 * 1024


def _verify_mesh_file(tmp: Path, fmt: str, n_points: int, shown: str) -> None:
    """A written mesh is complete: a VTP ends with its closing tag; a legacy VTK holds at least its points."""
    size = tmp.stat().st_size
    if fmt == "vtp":
        with open(str(tmp), "rb") as fh:
            fh.seek(max(size - 64, 0))
            complete = b"</VTKFile>" in fh.read()
    else:
        complete = size >= n_points * 3 * 4
    if not complete:
        raise OutputUnwritableError("The mesh %s was written incompletely (%d bytes)." % (shown, size),
                                    hint="Check the free disk space and that the output folder is writable.")


def write_mesh(poly: Any, path: PathLike, fmt: str = "vtp") -> Path:
    """Binary VTP (default) or legacy binary VTK, atomically; the free space is checked before VTK starts
    (its writers crash when the disk fills under them) and the written file is checked after."""
    import vtk

    fmt = str(fmt).lower().lstrip(".")
    if fmt == "vtp":
        writer = vtk.vtkXMLPolyDataWriter()
        writer.SetDataModeToBinary()
        writer.SetCompressorTypeToZLib()
    elif fmt == "vtk":
        writer = vtk.vtkPolyDataWriter()
        writer.SetFileTypeToBinary()
        if hasattr(writer, "SetFileVersion"):
            writer.SetFileVersion(42)  # readable by older VTK / Slicer builds
    else:
        raise InvalidInputError("Unknown mesh format %r." % fmt, hint="Use vtp or vtk.")

    def write(tmp: Path) -> None:
        writer.SetFileName(str(tmp))
        writer.SetInputData(poly)
        ok = writer.Write()
        code = writer.GetErrorCode() if hasattr(writer, "GetErrorCode") else 0
        if ok != 1 or code:
            raise OutputUnwritableError("Writing the mesh %s failed%s." % (
                Path(path).name, (" (%s)" % os.strerror(code)) if code else ""),
                hint="Check the free disk space and that the output folder is writable.")
        _verify_mesh_file(tmp, fmt, int(poly.GetNumberOfPoints()), Path(path).name)

    return atomic_write(path, write, expected_bytes=mesh_bytes_estimate(poly))


# -- one writer per run folder -----------------------------------------------------------------------
def process_identity() -> Dict[str, Any]:
    """Who is running: pid, host and start time (recorded in the lock file and the manifest)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _try_lock(fd: int) -> bool:
    """Non-blocking exclusive lock on ``fd``; False when someone else holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def read_lock_holder(run_dir: PathLike) -> Dict[str, Any]:
    """What the lock file says about its last holder (pid, host, started); {} when unknown."""
    try:
        with open(os.path.join(str(run_dir), LOCK_NAME), "r", encoding="utf-8") as fh:
            data = json.loads(fh.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def folder_is_locked(run_dir: PathLike) -> Optional[bool]:
    """True while a run holds ``run_dir``'s lock, False when nobody does, None when there is no lock file
    (a folder written before locks existed) or it cannot be opened."""
    path = os.path.join(str(run_dir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if _try_lock(fd):
            _unlock(fd)
            return False
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


class RunFolderLock:
    """Exclusive lock of a run folder for one run (``with RunFolderLock(out_dir): ...``).

    The lock is the kernel's (``flock``), so it disappears with the process however it ends (SIGKILL
    included); the file stays, holding the last holder's pid, host and start time for messages.
    Two runs in one process (e.g. two Dask tasks in one worker) also exclude each other.
    """

    def __init__(self, run_dir: PathLike) -> None:
        self.run_dir = str(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_NAME)
        self._fd: Optional[int] = None
        self._unlocked = False
        self.identity = process_identity()

    def acquire(self) -> "RunFolderLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as exc:
            raise unwritable(exc, self.path) from exc
        try:
            locked = _try_lock(fd)
        except OSError:   # a file system without locks (some network mounts): run unguarded, as before locks
            import logging
            logging.getLogger("kneepipeline").warning("%s does not support file locks; a second run into this "
                                                      "folder would not be refused" % self.run_dir)
            self._fd = fd
            self._unlocked = True
            return self
        if not locked:
            os.close(fd)
            holder = read_lock_holder(self.run_dir)
            who = ("process %s on %s, started %s" % (holder.get("pid"), holder.get("host"), holder.get("started"))
                   if holder else "another process")
            raise BusyError("Another run (%s) is writing into %s." % (who, self.run_dir),
                            hint="Wait for it to finish (or cancel it), or choose another output folder (--out).")
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(self.identity).encode("utf-8"))
        except OSError:
            pass  # the lock holds without the note (a full disk must not stop a run from recording its failure)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if not self._unlocked:
                _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> bool:
        self.release()
        return False
