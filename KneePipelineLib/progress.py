"""Progress of a run, for machines and for people (Python 3.9-safe: stdlib only at import; ``rich`` lazily).

One :class:`Progress` object per command; it has two faces, chosen by :func:`choose_face`:

* the **protocol** (machines: the Slicer runner, ``batch``, scripts): one JSON object per line on stdout,
  versioned by :data:`PROTOCOL_VERSION` and unchanged by the human face;
* the **bar** (people at a terminal): a ``rich`` progress bar on stderr -- step name, overall fraction, ETA,
  the current sub-step's message -- with warnings (and the few log lines) printed once, above the bar.

``--progress auto|bar|json|none`` (or ``$KNEEPIPELINE_PROGRESS``) picks the face; ``auto`` shows the bar when
stderr is a terminal and writes JSON lines when stdout is not one. Callers that parse events ask for
``json`` explicitly.

Events (every event has ``"event"`` and ``"time"``, seconds since the epoch):

* ``hello``   -- first line: ``protocol``, ``library_version``, ``command``, ``steps``.
* ``step``    -- ``step`` (name), ``index`` (1-based), ``total``, ``fraction`` (whole run, 0..1,
  monotonic), ``step_fraction`` (0..1 inside the step), ``message``, ``eta_s`` (or null).
* ``log`` / ``warning`` -- ``message`` (warnings are also collected into the results).
* ``result``  -- ``status`` ("complete"), ``out_dir``, ``manifest`` and what the command made.
* ``error``   -- ``category``, ``message``, ``hint``, ``exit_code``.
* ``batch`` adds ``knee`` (a knee started / finished / was skipped) and ``cohort`` (counters, ``fraction``,
  ``eta_s``); the knees' own events carry ``knee_id``.

Programs parse stdout with :func:`parse_line`.
"""
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

PROTOCOL_VERSION = 1
PROGRESS_MODES = ("auto", "bar", "json", "none")
PROGRESS_ENV = "KNEEPIPELINE_PROGRESS"        # the default of --progress, for callers (the Slicer runner)
ECHO_ENV = "KNEEPIPELINE_ECHO_EVENTS"         # "0": never repeat logs/warnings as text on stderr


@dataclass(frozen=True)
class Face:
    """Where a command's progress goes."""

    json_lines: bool = True     # protocol events on stdout
    bar: bool = False           # a rich progress bar on stderr (warnings above it)
    text: bool = True           # logs / warnings as plain lines on stderr (when there is no bar)
    result_only: bool = False   # ``--json``: stdout holds the final result object alone, no closing summary

    @property
    def human(self) -> bool:
        """Whether stderr is read by a person (then commands end with a short summary there)."""
        return (self.bar or self.text) and not self.result_only


JSON_FACE = Face(json_lines=True, bar=False, text=False)
SILENT_FACE = Face(json_lines=False, bar=False, text=False)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def choose_face(mode: Optional[str] = None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None,
                environ: Optional[Dict[str, str]] = None, result_only: bool = False) -> Face:
    """The face for ``--progress MODE`` (None: ``$KNEEPIPELINE_PROGRESS``, else ``auto``).

    ``auto``: the bar when stderr is a terminal, JSON lines when stdout is not one, plain warnings on stderr
    when there is no bar. ``json``: events only. ``bar``: the bar only. ``none``: plain warnings only.
    ``result_only`` (``--json``): stdout is reserved for the final result object, so no JSON lines.
    """
    env = os.environ if environ is None else environ
    mode = mode or env.get(PROGRESS_ENV) or "auto"
    if mode not in PROGRESS_MODES:
        from .errors import ConfigurationError

        raise ConfigurationError("Unknown progress mode %r." % mode,
                                 hint="Use --progress (or %s) auto, bar, json or none." % PROGRESS_ENV)
    echo = env.get(ECHO_ENV, "1") != "0"
    if mode == "json":
        face = JSON_FACE
    elif mode == "bar":
        face = Face(json_lines=False, bar=True, text=False)
    elif mode == "none":
        face = Face(json_lines=False, bar=False, text=echo)
    else:
        bar = _isatty(stderr if stderr is not None else sys.stderr)
        face = Face(json_lines=not _isatty(stdout if stdout is not None else sys.stdout), bar=bar,
                    text=echo and not bar)
    if result_only:
        face = Face(json_lines=False, bar=face.bar, text=face.text, result_only=True)
    return face


def _clean(value: Any) -> Any:
    """Strict JSON: NaN/inf become null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def parse_line(line: str) -> Optional[Dict[str, Any]]:
    """Parse one stdout line; returns None for lines that are not protocol events."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "event" not in obj:
        return None
    return obj


def format_duration(seconds: Optional[float]) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    seconds = int(round(seconds))
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60, seconds % 60)


class Progress:
    """Emits protocol events for a run made of weighted steps, through the chosen :class:`Face`.

    ``steps`` is a sequence of ``(name, weight)``. ``fraction`` only ever grows.
    A ``sink`` callable receives every event dict (used by tests and by in-process callers such as
    ``batch``); otherwise events are written as JSON lines to ``stream`` (stdout) when the face says so.
    Without a ``face``: JSON lines when ``enabled``, logs and warnings echoed on stderr unless
    ``$KNEEPIPELINE_ECHO_EVENTS`` is ``0`` (the behaviour of protocol 1's first callers).
    """

    def __init__(self, steps: Sequence[Tuple[str, float]] = (), stream: Optional[TextIO] = None,
                 sink: Optional[Callable[[Dict[str, Any]], None]] = None, enabled: bool = True,
                 tags: Optional[Dict[str, Any]] = None, face: Optional[Face] = None) -> None:
        if face is None:
            face = Face(json_lines=enabled, bar=False, text=os.environ.get(ECHO_ENV, "1") != "0")
        self.face = face
        self.stream = stream
        self.sink = sink
        self.enabled = face.json_lines
        self.tags = dict(tags or {})
        self.warnings: List[str] = []
        self.outcome: Optional[Dict[str, Any]] = None   # the final result object (``--json``)
        self._bar: Optional["_Bar"] = None
        self._lock = threading.RLock()
        self._start = time.time()
        self.set_steps(steps)

    @property
    def echo(self) -> bool:   # kept for callers of protocol 1
        return self.face.text

    def set_steps(self, steps: Sequence[Tuple[str, float]]) -> None:
        self.steps = [(str(n), float(w)) for n, w in steps]
        total = sum(w for _, w in self.steps) or 1.0
        self._offsets: Dict[str, Tuple[int, float, float]] = {}
        acc = 0.0
        for i, (name, w) in enumerate(self.steps):
            self._offsets[name] = (i + 1, acc / total, w / total)
            acc += w
        self._fraction = 0.0
        self._current: Optional[str] = None

    # -- emission -----------------------------------------------------------------------------
    def emit(self, event: str, **fields: Any) -> Dict[str, Any]:
        obj: Dict[str, Any] = {"event": event, "time": round(time.time(), 3)}
        obj.update(self.tags)
        obj.update(fields)
        obj = _clean(obj)
        self.deliver(obj)
        return obj

    def deliver(self, obj: Dict[str, Any]) -> None:
        """Send an already built event to this face (``batch`` forwards its knees' events through here)."""
        if self.sink is not None:
            self.sink(obj)
        elif self.face.json_lines:
            with self._lock:
                stream = self.stream or sys.stdout
                stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
                stream.flush()
        if self.face.bar:
            with self._lock:
                if self._bar is None:   # stray prints to a terminal stdout go above the bar too
                    self._bar = _Bar(sys.stderr, redirect_stdout=not self.face.json_lines and _isatty(sys.stdout))
            self._bar.handle(obj)

    def hello(self, command: str, library_version: str) -> None:
        self.emit("hello", protocol=PROTOCOL_VERSION, library_version=library_version, command=command,
                  steps=[n for n, _ in self.steps])

    def step(self, name: str, step_fraction: float = 0.0, message: str = "") -> None:
        """Report progress inside step ``name`` (0..1)."""
        if name not in self._offsets:  # an undeclared step: append it with a small weight
            self.steps.append((name, 1.0))
            self.set_steps(list(self.steps))
        index, start, width = self._offsets[name]
        step_fraction = min(max(float(step_fraction), 0.0), 1.0)
        frac = max(self._fraction, start + width * step_fraction)
        self._fraction = min(frac, 1.0)
        self._current = name
        elapsed = time.time() - self._start
        eta = elapsed * (1.0 - self._fraction) / self._fraction if self._fraction > 0.02 else None
        self.emit("step", step=name, index=index, total=len(self.steps), fraction=round(self._fraction, 4),
                  step_fraction=round(step_fraction, 4), message=message,
                  eta_s=None if eta is None else round(eta, 1))

    def sub(self, name: str) -> Callable[[float, str], None]:
        """A callback ``(fraction, message)`` for code inside step ``name``."""
        return lambda fraction, message="": self.step(name, fraction, message)

    def log(self, message: str) -> None:
        self.emit("log", message=message)
        if self.face.text:
            sys.stderr.write(message + "\n")

    def warning(self, message: str) -> None:
        self.warnings.append(message)
        self.emit("warning", message=message)
        if self.face.text:
            sys.stderr.write("WARNING: " + message + "\n")

    def result(self, **fields: Any) -> None:
        self._fraction = 1.0
        event = self.emit("result", status="complete", fraction=1.0, **fields)
        self.outcome = {k: v for k, v in event.items() if k not in ("event", "time", "fraction")}

    def error(self, err: Any) -> None:
        self.emit("error", **err.to_dict())

    # -- the human face -----------------------------------------------------------------------
    def say(self, text: str) -> None:
        """Human text on stderr (a command's closing summary) when a person reads stderr; after the bar."""
        if not self.face.human:
            return
        self.close()
        sys.stderr.write(text.rstrip("\n") + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """Stop the bar (if any); idempotent."""
        with self._lock:
            bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()


class NullProgress(Progress):
    """A progress object that records warnings but prints nothing."""

    def __init__(self, steps: Sequence[Tuple[str, float]] = ()) -> None:
        super().__init__(steps, face=SILENT_FACE)


class _Bar:
    """The bar face: a ``rich`` live progress bar on ``stream``; warnings, failures and logs printed above it.

    It reads the same events the protocol carries, so what a person sees is what a program would parse.
    """

    def __init__(self, stream: TextIO, redirect_stdout: bool = False) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress
        from rich.table import Column

        self.console = Console(file=stream, highlight=False)
        self.live = RichProgress(
            SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=24),
            TaskProgressColumn(), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
            TextColumn("{task.fields[message]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=self.console, redirect_stdout=redirect_stdout, redirect_stderr=True, refresh_per_second=8,
            expand=True)
        self.task: Optional[Any] = None
        self.command = ""
        self.finished = False   # after the result or the error: no new bar, warnings still printed

    def _ensure(self) -> Optional[Any]:
        if self.task is None and not self.finished:
            self.live.start()
            self.task = self.live.add_task(self.command or "starting", total=1.0, eta="", message="")
        return self.task

    def _update(self, **fields: Any) -> None:
        task = self._ensure()
        if task is not None:
            self.live.update(task, **fields)

    def _print(self, *parts: Tuple[str, str]) -> None:
        from rich.text import Text

        self._ensure()
        self.console.print(Text.assemble(*parts))

    def handle(self, ev: Dict[str, Any]) -> None:
        kind = ev.get("event")
        knee = ev.get("knee_id")
        prefix = ("[%s] " % knee) if knee else ""
        if kind == "hello":   # the bar appears with the first step (a command without steps shows none)
            self.command = str(ev.get("command") or "")
        elif kind == "step" and not knee:
            name = str(ev.get("step") or "")
            if ev.get("total"):
                name = "%s %s/%s" % (name, ev.get("index"), ev.get("total"))
            eta = ev.get("eta_s")
            self._update(completed=float(ev.get("fraction") or 0.0), description=name,
                             eta="" if eta is None else "ETA " + format_duration(eta),
                             message=str(ev.get("message") or ""))
        elif kind == "step":   # a knee's step inside a batch: its message only, the cohort drives the bar
            self._update(message="%s%s: %s" % (prefix, ev.get("step"), ev.get("message") or ""))
        elif kind == "cohort":
            eta = ev.get("eta_s")
            desc = "cohort %s/%s" % (ev.get("done"), ev.get("total"))
            if ev.get("failed"):
                desc += " (%s failed)" % ev.get("failed")
            self._update(completed=float(ev.get("fraction") or 0.0), description=desc,
                             eta="" if eta is None else "ETA " + format_duration(eta),
                             message="%s running" % ev.get("running", 0))
        elif kind == "knee" and ev.get("status") in ("failed", "cancelled"):
            self._print((prefix, "bold"), (str(ev.get("status")).upper(), "bold red"),
                        (" (%s): %s" % (ev.get("category"), ev.get("message")), ""))
        elif kind == "warning":
            self._print((prefix, "bold"), ("WARNING", "bold yellow"), (": " + str(ev.get("message", "")), ""))
        elif kind == "log" and not knee:
            self._print((str(ev.get("message", "")), "dim"))
        elif kind == "result":   # a command that never showed a bar (doctor) does not start one to end it
            if self.task is not None:
                self._update(completed=1.0, eta="", message="done")
            self.stop()
        elif kind == "error":
            self.stop()

    def stop(self) -> None:
        self.finished = True
        if self.task is not None:
            self.live.stop()
            self.task = None
