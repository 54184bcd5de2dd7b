"""The CLI's two faces: a person at a terminal sees a progress bar and a summary; a program sees JSON lines.

Each command runs as a real process, once under a pseudo-terminal (python's ``pty``: stdout and stderr are the
terminal, as in a shell) and once with pipes. At the terminal no protocol JSON appears and every warning is
printed exactly once; piped, stdout holds valid protocol events and nothing else; ``--json`` prints one object
that parses. The Slicer runner and ``batch`` still receive their events.
"""
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from KneePipelineLib.progress import (JSON_FACE, PROTOCOL_VERSION, Face, Progress, choose_face,  # noqa: E402
                                      parse_line)

ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][A-Za-z0-9]")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TERM="xterm-256color", COLUMNS="400",
               LINES="50", **extra)
    for key in ("KNEEPIPELINE_PROGRESS", "KNEEPIPELINE_ECHO_EVENTS", "NO_COLOR"):
        if key not in extra:
            env.pop(key, None)
    return env


def _cmd(*args):
    return [sys.executable, "-m", "KneePipelineLib", *map(str, args)]


def run_in_terminal(args, timeout=180, **env):
    """Run under a pseudo-terminal (stdin, stdout and stderr all the terminal); returns (rc, screen text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
    proc = subprocess.Popen(_cmd(*args), stdin=slave, stdout=slave, stderr=slave, env=_env(**env), cwd=str(ROOT),
                            close_fds=True)
    os.close(slave)
    chunks, end = [], time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:   # EIO: every process holding the terminal has gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def screen_lines(text):
    """What a person reads: escape sequences removed, carriage-return redraws split into lines."""
    return [ln.strip() for ln in re.split(r"[\r\n]+", ANSI.sub("", text)) if ln.strip()]


def run_piped(args, timeout=180, **env):
    return subprocess.run(_cmd(*args), capture_output=True, text=True, env=_env(**env), cwd=str(ROOT),
                          timeout=timeout)


def events_of(stdout):
    """Every non-empty stdout line must be a protocol event."""
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    events = [parse_line(ln) for ln in lines]
    assert all(e is not None for e in events), [ln for ln, e in zip(lines, events) if e is None][:3]
    return events


def assert_no_protocol(lines):
    assert not any(parse_line(ln) for ln in lines), [ln for ln in lines if parse_line(ln)][:3]
    assert not any('"event"' in ln for ln in lines)


def count_warning(lines, message):
    """How many lines of the screen show this warning (the bar's redraws never do)."""
    return sum(1 for ln in lines if message in ln and "WARNING" in ln)


@pytest.fixture(scope="module")
def box_labels(tmp_path_factory):
    """A small label map (femur, femoral and tibial cartilage; no tibia, no patella): analysed in ~2 s, with
    warnings (cartilage without its bone, no patella, too little shaft)."""
    folder = tmp_path_factory.mktemp("labels")
    a = np.zeros((20, 24, 28), np.uint8)
    a[2:10, 4:20, 4:24] = 7
    a[10:12, 6:18, 6:22] = 2
    a[14:16, 4:10, 4:12] = 3
    a[14:16, 14:20, 4:12] = 4
    sitk.WriteImage(sitk.GetImageFromArray(a), str(folder / "box.nii.gz"))
    return folder / "box.nii.gz"


@pytest.fixture(scope="module")
def qdess_pair(tmp_path_factory):
    """Two echoes of a qDESS pair without gradient parameters: the fit warns (low-spoiling estimator)."""
    folder = tmp_path_factory.mktemp("t2")
    rng = np.random.default_rng(0)
    base = (1000 + 50 * rng.standard_normal((4, 16, 16))).astype(np.float32)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(base), sitk.GetImageFromArray(0.4 * base)]),
                    str(folder / "qdess.nii.gz"))
    return folder / "qdess.nii.gz"


def t2_args(pair, out):
    return ["t2", "--echoes", pair, "--echo-times-ms", 5, 30, "--qdess", "--tr-ms", 18, "--te-ms", 5, "--flip-deg",
            20, "--out", out]


# -- analyze -----------------------------------------------------------------------------------------
def test_analyze_at_a_terminal_shows_a_bar_warnings_once_and_a_summary(box_labels, tmp_path):
    out = tmp_path / "run"
    rc, text = run_in_terminal(["analyze", "--labels", box_labels, "--out", out, "--no-report"])
    lines = screen_lines(text)
    assert rc == 0, "\n".join(lines[-20:])
    assert_no_protocol(lines)
    # the bar: step name with its index, overall percentage, the sub-step message
    assert any(re.search(r"morphometry 2/4 .*\d+%", ln) for ln in lines), lines[:20]
    assert any("100%" in ln for ln in lines)
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert warnings
    for w in warnings:
        assert count_warning(lines, w) == 1, (w, [ln for ln in lines if "WARNING" in ln])
    # the closing summary: what, headline numbers, warnings counted, where the files are
    assert any(ln.startswith("kneepipeline analyze: complete") for ln in lines)
    assert any(re.match(r"femur\s+\d+\.\d\d\s+\(\d+%\)", ln) for ln in lines)
    assert any(ln.startswith("Warnings: %d " % len(warnings)) for ln in lines)
    assert any(str(out / "results.json") in ln for ln in lines)


def test_analyze_piped_writes_protocol_lines_only_and_plain_warnings(box_labels, tmp_path):
    out = tmp_path / "run"
    proc = run_piped(["analyze", "--labels", box_labels, "--out", out, "--no-report"])
    assert proc.returncode == 0, proc.stderr
    events = events_of(proc.stdout)
    assert events[0]["event"] == "hello" and events[0]["protocol"] == PROTOCOL_VERSION
    assert events[-1]["event"] == "result" and events[-1]["out_dir"] == str(out.resolve())
    fractions = [e["fraction"] for e in events if e["event"] == "step"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    warnings = json.loads((out / "results.json").read_text())["warnings"]
    assert [e["message"] for e in events if e["event"] == "warning"] == warnings
    # stderr (not a terminal): each warning once as plain text, no bar, no escape codes, no JSON
    assert "\x1b[" not in proc.stderr and "━" not in proc.stderr
    for w in warnings:
        assert proc.stderr.count(w) == 1
    assert_no_protocol(proc.stderr.splitlines())


def test_analyze_json_prints_the_result_object_alone(box_labels, tmp_path):
    out = tmp_path / "run"
    proc = run_piped(["analyze", "--labels", box_labels, "--out", out, "--no-report", "--json"])
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)   # one object, nothing else
    assert obj["status"] == "complete" and obj["out_dir"] == str(out.resolve())
    assert obj["results"]["laterality"]["side"] in ("left", "right")
    assert obj["results"]["regions"] and obj["results_json"] == str(out.resolve() / "results.json")
    assert "kneepipeline analyze:" not in proc.stderr   # --json: no closing summary either


# -- t2 ------------------------------------------------------------------------------------------------
def test_t2_at_a_terminal_and_piped(qdess_pair, tmp_path):
    rc, text = run_in_terminal(t2_args(qdess_pair, tmp_path / "tty"))
    lines = screen_lines(text)
    assert rc == 0, "\n".join(lines[-20:])
    assert_no_protocol(lines)
    assert sum("WARNING" in ln for ln in lines) == 1 and count_warning(lines, "low-spoiling estimator") == 1
    assert any(ln.startswith("kneepipeline t2: qdess") for ln in lines) and "Warnings: 1" in lines

    proc = run_piped(t2_args(qdess_pair, tmp_path / "pipe"))
    assert proc.returncode == 0, proc.stderr
    events = events_of(proc.stdout)
    assert [e["event"] for e in events][0] == "hello" and events[-1]["event"] == "result"
    assert sum(e["event"] == "warning" for e in events) == 1
    assert proc.stderr.count("low-spoiling estimator") == 1


def test_progress_json_at_a_terminal_is_the_protocol_and_nothing_else(qdess_pair, tmp_path):
    rc, text = run_in_terminal(t2_args(qdess_pair, tmp_path / "tty") + ["--progress", "json"])
    lines = screen_lines(text)
    assert rc == 0
    assert all(parse_line(ln) for ln in lines), lines   # asked for: events only, warnings among them
    assert sum(parse_line(ln)["event"] == "warning" for ln in lines) == 1


# -- models, doctor ------------------------------------------------------------------------------------
def test_models_and_doctor_at_a_terminal_and_with_json():
    rc, text = run_in_terminal(["models"])
    lines = screen_lines(text)
    assert rc == 0 and any(ln.startswith("ID ") for ln in lines)
    assert_no_protocol(lines)
    proc = run_piped(["models", "--json"])
    assert proc.returncode == 0 and {r["id"] for r in json.loads(proc.stdout)} >= {"nnunet_fullres"}
    proc = run_piped(["models"])   # piped without --json: the table on stderr, stdout holds no text
    assert proc.returncode == 0 and any(ln.startswith("ID ") for ln in proc.stderr.splitlines())
    events_of(proc.stdout)

    rc, text = run_in_terminal(["doctor"])   # (doctor --json: Testing/test_hub.py)
    lines = screen_lines(text)
    assert rc == 0 and any(ln.startswith("CUDA:") for ln in lines)
    assert_no_protocol(lines)


# -- the callers that parse events ---------------------------------------------------------------------
def test_the_slicer_runner_gets_events_and_no_bar(qdess_pair, tmp_path):
    from KneePipelineLib.runner import child_environment, start_pipeline

    assert child_environment({})["KNEEPIPELINE_PROGRESS"] == "json"
    out = tmp_path / "run"
    runner = start_pipeline(sys.executable, [str(a) for a in t2_args(qdess_pair, out)], env=_env())
    status = runner.wait(timeout=180)
    assert status.state == "complete", status.error
    kinds = [e["event"] for e in runner.events]
    assert kinds[0] == "hello" and "step" in kinds and status.result["out_dir"] == str(out)
    assert len(status.warnings) == 1 and "low-spoiling estimator" in status.warnings[0]   # once, as an event
    logs = [e["message"] for e in runner.events if e["event"] == "log" and e.get("stream") == "stderr"]
    assert not any("\x1b[" in m or "━" in m or "WARNING" in m for m in logs), logs


def test_batch_forwards_its_knees_events_as_protocol(box_labels, tmp_path):
    distributed = pytest.importorskip("distributed")
    from KneePipelineLib.batch import read_cohort, run_batch
    from KneePipelineLib.options import RunOptions

    csv_path = tmp_path / "cohort.csv"
    csv_path.write_text("id,labels\nk1,%s\n" % box_labels)
    jobs = read_cohort(str(csv_path), RunOptions(report=False), str(tmp_path / "out"))
    buf = io.StringIO()
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address="127.0.0.1:0",
                            scheduler_kwargs={"dashboard": False}) as client:
        result = run_batch(jobs, tmp_path / "out", client=client, progress=Progress(face=JSON_FACE, stream=buf),
                           report=False)
    assert result.ok
    events = events_of(buf.getvalue())
    assert events[0]["event"] == "hello" and events[-1]["event"] == "result"
    knee = [e for e in events if e.get("knee_id") == "k1"]
    assert {"knee", "step", "warning"} <= {e["event"] for e in knee}
    assert any(e["event"] == "cohort" and e["done"] == 1 for e in events)


def test_the_bar_face_draws_a_cohort_and_prints_failures_once(capsys):
    p = Progress(face=Face(json_lines=False, bar=True, text=False))
    p.hello("batch", "0")
    p.deliver({"event": "knee", "knee_id": "k2", "status": "failed", "category": "input_unreadable",
               "message": "k2.nii.gz is truncated"})
    p.deliver({"event": "warning", "knee_id": "k1", "message": "Region patella is absent"})
    p.deliver({"event": "cohort", "total": 2, "done": 2, "failed": 1, "running": 0, "fraction": 1.0, "eta_s": 0})
    p.result(out_dir="x")
    p.say("kneepipeline batch: 1 complete, 1 failed")
    out, err = capsys.readouterr()
    assert out == ""   # the bar face never writes stdout
    assert err.count("k2.nii.gz is truncated") == 1 and err.count("Region patella is absent") == 1
    assert "cohort 2/2 (1 failed)" in err and err.rstrip().endswith("1 failed")


# -- choosing the face ---------------------------------------------------------------------------------
class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


@pytest.mark.parametrize("mode,out_tty,err_tty,expected", [
    ("auto", True, True, Face(json_lines=False, bar=True, text=False)),     # a shell
    ("auto", False, True, Face(json_lines=True, bar=True, text=False)),     # ... | jq, the bar still on stderr
    ("auto", False, False, Face(json_lines=True, bar=False, text=True)),    # a script or cron
    ("auto", True, False, Face(json_lines=False, bar=False, text=True)),    # 2> log.txt
    ("json", True, True, JSON_FACE),                                        # asked for: events only
    ("none", True, True, Face(json_lines=False, bar=False, text=True)),
    ("bar", False, False, Face(json_lines=False, bar=True, text=False)),
])
def test_choose_face(mode, out_tty, err_tty, expected):
    assert choose_face(mode, _Stream(out_tty), _Stream(err_tty), environ={}) == expected


def test_the_environment_variable_is_the_default_and_the_switch_wins():
    env = {"KNEEPIPELINE_PROGRESS": "json"}
    assert choose_face(None, _Stream(True), _Stream(True), environ=env) == JSON_FACE
    assert choose_face("none", _Stream(True), _Stream(True), environ=env).json_lines is False
    face = choose_face(None, _Stream(False), _Stream(True), environ={}, result_only=True)
    assert face.json_lines is False and face.result_only and not face.human
