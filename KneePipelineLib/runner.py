"""Run the pipeline in a separate process and follow it without blocking (Python 3.9-safe, stdlib only).

The Slicer module (and any other GUI or driver) starts ``python -m KneePipelineLib <argv>`` through
:class:`PipelineRunner`, then calls :meth:`PipelineRunner.poll` from a timer. The child runs in its own
process group (POSIX session) so that :meth:`PipelineRunner.cancel` and the timeout stop the child *and*
every grandchild it started (worker pools, nnU-Net's data loaders) -- killing only the direct child would
leave grandchildren holding the output pipe open.

A run ends on the child's exit code: output still arriving is awaited for ``pipe_grace_s``, then a
process that keeps the pipes open (a grandchild) is ended with the group instead of being waited for.

stdout carries the JSON-lines protocol of :mod:`.progress`; lines that are not protocol events and all of
stderr are surfaced as ``log`` events (``stream`` = "stdout" / "stderr") for the log panel.
"""
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .errors import CancelledError, InternalError, PipelineTimeoutError
from .progress import parse_line

# Final and live states of a run.
PENDING, RUNNING, COMPLETE, FAILED, CANCELLED, TIMEOUT = (
    "pending", "running", "complete", "failed", "cancelled", "timeout")
FINAL_STATES = (COMPLETE, FAILED, CANCELLED, TIMEOUT)
LIBRARY_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class RunStatus:
    """What a driver shows: state, overall fraction, current step and, at the end, result or error."""

    state: str = PENDING
    fraction: float = 0.0
    step: str = ""
    step_index: int = 0
    step_total: int = 0
    message: str = ""
    eta_s: Optional[float] = None
    returncode: Optional[int] = None
    result: Optional[Dict[str, Any]] = None     # the ``result`` event (out_dir, manifest, ...)
    error: Optional[Dict[str, Any]] = None      # the ``error`` event: category, message, hint, exit_code
    warnings: List[str] = field(default_factory=list)
    started: Optional[float] = None
    finished: Optional[float] = None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started


def pipeline_command(python: str, argv: Sequence[str]) -> List[str]:
    """``python -u -m KneePipelineLib <argv>`` (unbuffered so progress arrives as it happens)."""
    return [python, "-u", "-m", "KneePipelineLib"] + [str(a) for a in argv]


def child_environment(base: Optional[Mapping[str, str]] = None, pythonpath: Sequence[str] = ()) -> Dict[str, str]:
    """The child's environment: ``base`` (Slicer's *startup* environment, not its own), unbuffered output,
    and ``pythonpath`` folders first (so the library version matches the module that starts it)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["KNEEPIPELINE_ECHO_EVENTS"] = "0"   # warnings/logs arrive as events; don't repeat them on stderr
    # Apple Silicon: operations torch's MPS backend lacks run on the CPU instead of failing the run
    env.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
    env["KNEEPIPELINE_PROGRESS"] = "json"   # the protocol, never the terminal's progress bar (progress.py)
    for key in ("PYTHONHOME", "PYTHONSTARTUP"):   # never inherit another interpreter's home
        if base is None:
            env.pop(key, None)
    paths = [str(p) for p in pythonpath if p]
    if paths:
        old = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    return env


class PipelineRunner:
    """One background pipeline process.

    ``start()`` launches it; ``poll()`` (non-blocking) returns the events that arrived since the last call
    and updates :attr:`status`; ``cancel()`` stops the whole process group; ``wait()`` blocks (tests, CLI).
    ``on_event`` is called for every event from inside ``poll()`` (i.e. on the caller's thread).
    """

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None, timeout_s: Optional[float] = None,
                 on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
                 out_dir: Optional[str] = None, kill_grace_s: float = 3.0, pipe_grace_s: float = 2.0) -> None:
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.on_event = on_event
        self.out_dir = out_dir
        self.kill_grace_s = kill_grace_s
        self.pipe_grace_s = pipe_grace_s   # how long output may trail the child's exit
        self.reader_slice_s = 0.002        # GIL time given to the reader threads on each poll
        self.status = RunStatus()
        self.process: Optional[subprocess.Popen] = None
        self.pgid: Optional[int] = None
        self.events: List[Dict[str, Any]] = []
        self.stderr_tail: List[str] = []
        self._queue: "queue.Queue" = queue.Queue()
        self._threads: List[threading.Thread] = []
        self._cancel_reason: Optional[str] = None
        self._kill_deadline: Optional[float] = None
        self._killed = False
        self._exited_at: Optional[float] = None

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> "PipelineRunner":
        if self.process is not None:
            raise RuntimeError("This runner was already started.")
        kwargs: Dict[str, Any] = {}
        if os.name == "nt":  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True   # own session => own process group
        self.status.started = time.time()
        self.process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=self.env, cwd=self.cwd, bufsize=1, universal_newlines=True, encoding="utf-8",
            errors="replace", **kwargs)
        if os.name != "nt":
            self.pgid = self.process.pid   # session leader: pgid == pid
        self.status.state = RUNNING
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            t = threading.Thread(target=self._reader, args=(stream, name), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _reader(self, stream: Any, name: str) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):  # pragma: no cover - pipe closed under us
            pass
        finally:
            self._queue.put((name, None))

    def poll(self) -> List[Dict[str, Any]]:
        """Drain what arrived, update the status, enforce the timeout and the kill deadline. Never blocks."""
        if self.process is None or self.status.done:
            return []
        # Inside Slicer the main thread holds the GIL while Qt's event loop runs, so the reader threads only
        # advance while Python code here lets go of it: a 2 ms sleep per poll is enough to empty the pipes.
        time.sleep(self.reader_slice_s)
        new = self._drain()
        now = time.time()
        if (self.timeout_s is not None and self._cancel_reason is None
                and now - (self.status.started or now) > self.timeout_s):
            self.request_stop(TIMEOUT)
        if self._kill_deadline is not None and not self._killed and now >= self._kill_deadline:
            self._signal_group(getattr(signal, "SIGKILL", signal.SIGTERM))
            self._killed = True
        rc = self.process.poll()
        if rc is None:
            return new
        if self._exited_at is None:
            self._exited_at = now
        readers_done = self._readers_done()
        if not readers_done and now - self._exited_at < self.pipe_grace_s:
            return new   # the last lines may still be on their way
        if self._cancel_reason is not None and self.group_alive():
            # the child is gone but a grandchild survived SIGTERM: no mercy
            self._signal_group(getattr(signal, "SIGKILL", signal.SIGTERM))
            self._killed = True
            return new
        new.extend(self._drain())
        if not readers_done:
            # The pipeline exited but a process it started keeps stdout/stderr open (nnU-Net's workers on
            # macOS do): finish on the exit code rather than wait for the pipes to close.
            event = {"event": "log", "stream": "runner",
                     "message": "The pipeline exited (code %s) while a process it started still held its output "
                                "open; that process group was ended." % rc}
            self._apply(event)
            new.append(event)
        self._finish(rc)
        if self.group_alive():   # leftovers of a finished run: end them
            self._signal_group(getattr(signal, "SIGKILL", signal.SIGTERM))
        return new

    def _drain(self) -> List[Dict[str, Any]]:
        out: List[Dict[str, Any]] = []
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                return out
            if line is None:
                continue
            event = parse_line(line) if name == "stdout" else None
            if event is None:
                if not line.strip():
                    continue
                if name == "stderr":
                    self.stderr_tail = (self.stderr_tail + [line])[-50:]
                event = {"event": "log", "message": line, "stream": name}
            self._apply(event)
            out.append(event)

    def _readers_done(self) -> bool:
        for t in self._threads:
            t.join(timeout=0.05)
        return not any(t.is_alive() for t in self._threads)

    def _apply(self, event: Dict[str, Any]) -> None:
        self.events.append(event)
        kind = event.get("event")
        s = self.status
        if kind == "step":
            frac = event.get("fraction")
            if isinstance(frac, (int, float)):
                s.fraction = max(s.fraction, min(float(frac), 1.0))
            s.step = str(event.get("step", ""))
            s.step_index = int(event.get("index") or 0)
            s.step_total = int(event.get("total") or 0)
            s.message = str(event.get("message") or "")
            s.eta_s = event.get("eta_s")
        elif kind == "warning":
            s.warnings.append(str(event.get("message", "")))
        elif kind == "result":
            s.result = event
        elif kind == "error":
            s.error = {k: event.get(k) for k in ("category", "message", "hint", "exit_code")}
        if self.on_event is not None:
            self.on_event(event)

    def _finish(self, rc: int) -> None:
        s = self.status
        s.returncode = rc
        s.finished = time.time()
        if self._cancel_reason == TIMEOUT:
            s.state = TIMEOUT
            s.error = PipelineTimeoutError("The run took longer than %.0f s and was stopped." % (self.timeout_s or 0)).to_dict()
        elif self._cancel_reason == CANCELLED:
            s.state = CANCELLED
            s.error = CancelledError("The run was cancelled.").to_dict()
        elif s.error is not None:
            s.state = FAILED
        elif rc == 0:
            s.state = COMPLETE
            s.fraction = 1.0
        else:
            tail = "\n".join(self.stderr_tail[-5:])
            s.state = FAILED
            s.error = InternalError("The pipeline process exited with code %s without reporting an error.%s"
                                    % (rc, ("\n" + tail) if tail else ""),
                                    hint="See the log for details; check the pipeline environment "
                                         "(kneepipeline doctor).").to_dict()
        if s.state in (CANCELLED, TIMEOUT):
            s.result = None
            self._mark_manifest(s.state)

    def _mark_manifest(self, state: str) -> None:
        """A stopped run never leaves a manifest that says running or complete."""
        if not self.out_dir:
            return
        try:
            from .manifest import load_manifest, now_iso

            m = load_manifest(self.out_dir)
        except (OSError, ValueError, TypeError):
            return
        if m.status in ("running", "complete"):
            m.status = "cancelled" if state == CANCELLED else "failed"
            m.finished = now_iso()
            m.error = self.status.error
            try:
                m.write(self.out_dir)
            except OSError:  # pragma: no cover
                pass

    # -- stopping -----------------------------------------------------------------------------
    def _signal_group(self, sig: int) -> None:
        if self.process is None:
            return
        if os.name == "nt":  # pragma: no cover - Windows: kill the tree
            subprocess.call(["taskkill", "/T", "/F", "/PID", str(self.process.pid)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0x08000000))
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        """Whether any process of the run's group still exists (POSIX)."""
        if self.pgid is None:
            return self.process is not None and self.process.poll() is None
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover
            return True
        # Zombies of our own child still count as "existing" until reaped.
        if self.process is not None:
            self.process.poll()
        try:
            os.killpg(self.pgid, 0)
            return True
        except ProcessLookupError:
            return False

    def request_stop(self, reason: str = CANCELLED) -> None:
        """SIGTERM to the whole group now, SIGKILL after ``kill_grace_s`` (enforced by :meth:`poll`)."""
        if self.process is None or self.status.done or self._cancel_reason is not None:
            return
        self._cancel_reason = reason
        self._kill_deadline = time.time() + self.kill_grace_s
        self._signal_group(signal.SIGTERM)

    def cancel(self, wait: bool = True) -> None:
        """Stop the run. ``wait=False`` (GUI): returns at once, later :meth:`poll` calls finish the job.
        ``wait=True``: blocks until every process of the group is gone (at most ``kill_grace_s`` + a few s)."""
        self.request_stop(CANCELLED)
        if wait:
            self.wait(timeout=self.kill_grace_s + 10.0)

    def wait(self, timeout: Optional[float] = None, interval_s: float = 0.05) -> RunStatus:
        """Poll until the run ends (for tests and scripts; a GUI polls from a timer instead)."""
        end = None if timeout is None else time.time() + timeout
        while not self.status.done:
            self.poll()
            if self.status.done:
                break
            if end is not None and time.time() > end:
                if self._cancel_reason is None:
                    self.request_stop(TIMEOUT)
                    end = time.time() + self.kill_grace_s + 10.0
                else:  # pragma: no cover - the kernel did not reap the group in time
                    break
            time.sleep(interval_s)
        return self.status

    @property
    def running(self) -> bool:
        return self.process is not None and not self.status.done


def start_pipeline(python: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                   pythonpath: Sequence[str] = (LIBRARY_PARENT,), timeout_s: Optional[float] = None,
                   on_event: Optional[Callable[[Dict[str, Any]], None]] = None,
                   out_dir: Optional[str] = None) -> PipelineRunner:
    """Start ``python -m KneePipelineLib <argv>`` with ``env`` (Slicer: ``slicer.util.startupEnvironment()``)."""
    runner = PipelineRunner(pipeline_command(python, argv), env=child_environment(env, pythonpath),
                            timeout_s=timeout_s, on_event=on_event, out_dir=out_dir)
    return runner.start()


def default_python() -> str:
    return sys.executable
