"""The progress protocol: one JSON object per line on stdout (Python 3.9-safe, stdlib only).

Events (every event has ``"event"`` and ``"time"``, seconds since the epoch):

* ``hello``   -- first line: ``protocol``, ``library_version``, ``command``.
* ``step``    -- ``step`` (name), ``index`` (1-based), ``total``, ``fraction`` (whole run, 0..1,
  monotonic), ``step_fraction`` (0..1 inside the step), ``message``, ``eta_s`` (or null).
* ``log`` / ``warning`` -- ``message`` (warnings are also collected into the results).
* ``result``  -- ``status`` ("complete"), ``out_dir``, ``manifest``.
* ``error``   -- ``category``, ``message``, ``hint``, ``exit_code``.

Humans read stderr; programs (the Slicer module, batch drivers) parse stdout with :func:`parse_line`.
"""
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

PROTOCOL_VERSION = 1


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


class Progress:
    """Emits protocol events for a run made of weighted steps.

    ``steps`` is a sequence of ``(name, weight)``. ``fraction`` only ever grows.
    A ``sink`` callable receives every event dict (used by tests and by in-process callers);
    by default events are written as JSON lines to ``stream`` (stdout).
    """

    def __init__(self, steps: Sequence[Tuple[str, float]] = (), stream: Optional[TextIO] = None,
                 sink: Optional[Callable[[Dict[str, Any]], None]] = None, enabled: bool = True,
                 tags: Optional[Dict[str, Any]] = None) -> None:
        self.stream = stream
        self.sink = sink
        self.enabled = enabled
        self.tags = dict(tags or {})
        self.warnings: List[str] = []
        # Humans read stderr; a program that reads the events (the Slicer runner) turns the echo off.
        self.echo = os.environ.get("KNEEPIPELINE_ECHO_EVENTS", "1") != "0"
        self._start = time.time()
        self.set_steps(steps)

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
        if self.sink is not None:
            self.sink(obj)
        if self.enabled and self.sink is None:
            stream = self.stream or sys.stdout
            stream.write(json.dumps(obj, separators=(",", ":")) + "\n")
            stream.flush()
        return obj

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
        if self.echo:
            sys.stderr.write(message + "\n")

    def warning(self, message: str) -> None:
        self.warnings.append(message)
        self.emit("warning", message=message)
        if self.echo:
            sys.stderr.write("WARNING: " + message + "\n")

    def result(self, **fields: Any) -> None:
        self._fraction = 1.0
        self.emit("result", status="complete", fraction=1.0, **fields)

    def error(self, err: Any) -> None:
        self.emit("error", **err.to_dict())


class NullProgress(Progress):
    """A progress object that records warnings but prints nothing."""

    def __init__(self, steps: Sequence[Tuple[str, float]] = ()) -> None:
        super().__init__(steps, enabled=False)
