"""The background runner: a real `python -m KneePipelineLib` subprocess, polled, cancelled, timed out."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from KneePipelineLib import runner as R
from KneePipelineLib.manifest import load_manifest

ROOT = Path(__file__).resolve().parents[1]


def _python39():
    """A Python 3.9 (Slicer 5.8's version) on this machine: $KNEEPIPELINE_PY39, python3.9 on PATH, or pyenv's."""
    import glob

    pyenv = os.path.join(os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv"), "versions", "3.9.*", "bin", "python3.9")
    for cand in [os.environ.get("KNEEPIPELINE_PY39"), shutil.which("python3.9")] + sorted(glob.glob(pyenv)):
        if not cand:
            continue
        try:
            out = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                                 capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if out.stdout.strip() == "True":
            return cand
    return None


PY39 = _python39()


def _group_gone(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _script_runner(tmp_path, body, **kw):
    script = tmp_path / "fake_pipeline.py"
    script.write_text(textwrap.dedent(body))
    env = R.child_environment(None, [str(ROOT)])
    return R.PipelineRunner([sys.executable, "-u", str(script)], env=env, **kw)


# -- the real pipeline -----------------------------------------------------------------------------
def test_real_pipeline_failure_surfaces_message_and_hint(tmp_path):
    out = tmp_path / "run"
    run = R.start_pipeline(sys.executable, ["analyze", "--labels", str(tmp_path / "missing.nrrd"), "--out", str(out)],
                           out_dir=str(out))
    status = run.wait(timeout=120)
    assert status.state == R.FAILED
    assert status.error["category"] == "input_unreadable"
    assert "missing.nrrd" in status.error["message"]
    assert status.error["hint"]
    assert status.returncode == status.error["exit_code"] == 10
    assert status.result is None
    # the first protocol line is the hello, and the step events precede the error
    kinds = [e["event"] for e in run.events if e.get("stream") is None]
    assert kinds[0] == "hello" and kinds[-1] == "error"
    if (out / "manifest.json").exists():
        assert load_manifest(str(out)).status != "complete"


@pytest.mark.slow
def test_real_pipeline_streams_steps_in_order(tmp_path, coarse_knee_path):
    # the real knee on a 3 x 3 x 2 coarser grid (conftest): every step, in a few seconds
    knee = coarse_knee_path
    out = tmp_path / "run"
    seen = []
    run = R.start_pipeline(sys.executable, ["analyze", "--labels", str(knee),
                                            "--label-convention", "canonical", "--no-report", "--out", str(out)],
                           on_event=seen.append, out_dir=str(out))
    status = run.wait(timeout=170)
    steps = [e for e in seen if e["event"] == "step"]
    assert seen[0]["event"] == "hello"
    assert len(steps) >= 3
    fractions = [e["fraction"] for e in steps]
    assert fractions == sorted(fractions), "progress must never go backwards"
    indices = [e["index"] for e in steps]
    assert indices == sorted(indices), "steps arrive in pipeline order"
    assert status.state == R.COMPLETE, status.error
    assert load_manifest(str(out)).status == "complete"
    assert status.fraction == 1.0 and status.returncode == 0


def test_real_pipeline_cancel_kills_group_and_marks_manifest(tmp_path, sample_labels_path):
    out = tmp_path / "run"
    run = R.start_pipeline(sys.executable, ["analyze", "--labels", str(sample_labels_path),
                                            "--label-convention", "pymskt", "--out", str(out)], out_dir=str(out))
    deadline = time.time() + 60
    while time.time() < deadline and not run.status.done:
        run.poll()
        if run.status.step and run.status.step != "input":
            break
        time.sleep(0.02)
    if run.status.done:
        pytest.skip("the pipeline ended (%s) before it could be cancelled" % run.status.state)
    pgid = run.pgid
    run.cancel()
    assert run.status.state == R.CANCELLED
    assert run.status.error["category"] == "cancelled"
    assert run.status.result is None
    assert _group_gone(pgid)
    if (out / "manifest.json").exists():
        assert load_manifest(str(out)).status in ("cancelled", "failed")
    assert not (out / "results.json").exists() or load_manifest(str(out)).status != "complete"


# -- mechanics with a scripted child (grandchildren, stubborn processes, timeouts) -----------------
GRANDCHILD_SCRIPT = """
    import json, signal, subprocess, sys, time
    from KneePipelineLib.progress import Progress
    # a grandchild that ignores SIGTERM and holds our stdout pipe open
    gc = subprocess.Popen([sys.executable, "-c",
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(json.dumps({"event": "log", "message": "grandchild %d" % gc.pid}), flush=True)
    p = Progress([("a", 1), ("b", 1)])
    p.hello("fake", "0")
    for i in range(1000):
        p.step("a", min(i / 50.0, 1.0), "working %d" % i)
        time.sleep(0.02)
"""


def test_cancel_kills_stubborn_grandchildren(tmp_path):
    run = _script_runner(tmp_path, GRANDCHILD_SCRIPT, kill_grace_s=0.5).start()
    deadline = time.time() + 30
    while time.time() < deadline and run.status.fraction < 0.05:
        run.poll()
        time.sleep(0.02)
    assert run.status.step == "a" and run.status.fraction > 0
    gc_pid = int(next(e["message"].split()[1] for e in run.events if "grandchild" in e.get("message", "")))
    t0 = time.time()
    run.cancel(wait=False)          # the GUI path: returns at once
    assert time.time() - t0 < 0.5
    assert not run.status.done
    run.wait(timeout=20)
    assert run.status.state == R.CANCELLED
    assert _group_gone(run.pgid)
    with pytest.raises(ProcessLookupError):
        os.kill(gc_pid, 0)


def test_timeout_stops_the_run(tmp_path):
    run = _script_runner(tmp_path, GRANDCHILD_SCRIPT, timeout_s=1.0, kill_grace_s=0.3).start()
    status = run.wait(timeout=30)
    assert status.state == R.TIMEOUT
    assert status.error["category"] == "timeout" and status.error["hint"]
    assert 1.0 <= status.elapsed_s < 15
    assert _group_gone(run.pgid)


def test_crash_without_error_event_is_reported_with_stderr(tmp_path):
    run = _script_runner(tmp_path, """
        import sys
        print('{"event": "hello", "protocol": 1}', flush=True)
        print("not json at all", flush=True)
        sys.stderr.write("Segmentation fault in libfoo\\n")
        sys.exit(139)
    """).start()
    status = run.wait(timeout=30)
    assert status.state == R.FAILED
    assert status.error["category"] == "internal"
    assert "139" in status.error["message"] and "libfoo" in status.error["message"]
    logs = [e for e in run.events if e["event"] == "log"]
    assert {"stdout", "stderr"} <= {e["stream"] for e in logs}


def test_result_event_and_warnings_complete_the_status(tmp_path):
    run = _script_runner(tmp_path, """
        from KneePipelineLib.progress import Progress
        p = Progress([("a", 1)])
        p.hello("fake", "0"); p.step("a", 0.5, "half"); p.warning("careful"); p.result(out_dir="x", manifest="m")
    """).start()
    status = run.wait(timeout=30)
    assert status.state == R.COMPLETE and status.fraction == 1.0
    assert status.result["out_dir"] == "x" and status.warnings == ["careful"]
    assert status.step == "a" and status.message == "half"


def test_child_environment_prepends_pythonpath_and_is_unbuffered():
    env = R.child_environment({"PYTHONPATH": "/old", "PATH": "/bin"}, ["/lib/parent"])
    assert env["PYTHONPATH"].split(os.pathsep) == ["/lib/parent", "/old"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    assert env["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"     # device auto / mps: CPU for what MPS lacks
    assert R.child_environment({"PYTORCH_ENABLE_MPS_FALLBACK": "0"})["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"
    assert R.pipeline_command("/py", ["run", "--out", "o"]) == ["/py", "-u", "-m", "KneePipelineLib", "run", "--out", "o"]


@pytest.mark.skipif(PY39 is None, reason="no Python 3.9 interpreter on this machine (set KNEEPIPELINE_PY39)")
def test_slicer_side_modules_import_on_python39():
    """What Slicer 5.8's Python 3.9 imports: the runner and the contracts it uses."""
    code = ("import KneePipelineLib.runner, KneePipelineLib.options, KneePipelineLib.manifest, "
            "KneePipelineLib.registry, KneePipelineLib.envsetup, KneePipelineLib.envpython, "
            "KneePipelineLib.slicer_io; print('ok')")
    out = subprocess.run([str(PY39), "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_run_ends_on_exit_code_when_a_grandchild_keeps_the_pipes_open(tmp_path):
    """The pipeline reports its result and exits 0, but a process it started inherited stdout/stderr and lives
    on (nnU-Net's workers on macOS): the run completes within the grace time, and that process is ended."""
    run = _script_runner(tmp_path, """
        import json, subprocess, sys
        from KneePipelineLib.progress import Progress
        gc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])   # inherits our pipes
        print(json.dumps({"event": "log", "message": "grandchild %d" % gc.pid}), flush=True)
        p = Progress([("a", 1)])
        p.hello("fake", "0"); p.step("a", 1.0, "done"); p.result(out_dir="x")
    """, pipe_grace_s=0.5).start()
    t0 = time.time()
    status = run.wait(timeout=30)
    assert time.time() - t0 < 10, "the runner waited for the pipes instead of the exit code"
    assert status.state == R.COMPLETE and status.returncode == 0 and status.result["out_dir"] == "x"
    gc_pid = int(next(e["message"].split()[1] for e in run.events if "grandchild" in e.get("message", "")))
    deadline = time.time() + 5
    while time.time() < deadline and not _group_gone(run.pgid):
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(gc_pid, 0)
    assert any(e.get("stream") == "runner" for e in run.events)


PY39_MODULE_IMPORT = """
import sys, types, unittest
# Stand-ins for the Slicer application's modules (empty classes; the import only defines classes).
class _Any(type):
    def __getattr__(cls, name):
        return type(name, (object,), {})
def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    m.__getattr__ = lambda attr: _Any(attr, (object,), {})
    sys.modules[name] = m
    return m
slicer = _module("slicer")
slicer.util = _module("slicer.util", VTKObservationMixin=type("VTKObservationMixin", (object,), {}))
base = type("Base", (object,), {"__init__": lambda self, *a, **k: None})
slicer.ScriptedLoadableModule = _module("slicer.ScriptedLoadableModule", ScriptedLoadableModule=base,
    ScriptedLoadableModuleWidget=base, ScriptedLoadableModuleLogic=base, ScriptedLoadableModuleTest=unittest.TestCase)
slicer.parameterNodeWrapper = _module("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda c: c,
    Choice=lambda *a: None, WithinRange=lambda *a: None)
for name in ("qt", "ctk", "vtk"):
    _module(name)
import importlib.util
spec = importlib.util.spec_from_file_location("KneePipeline", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
import typing
hints = typing.get_type_hints(mod.KneePipelineParameterNode, include_extras=True)
print(sorted(n for n in dir(mod) if n.startswith("KneePipeline")), len(hints))
"""


@pytest.mark.skipif(PY39 is None, reason="no Python 3.9 interpreter on this machine (set KNEEPIPELINE_PY39)")
def test_slicer_module_imports_on_python39(tmp_path):
    """Slicer 5.8's Python 3.9 imports KneePipeline.py and its package (module, widget, logic, parameters with
    their annotations evaluated, self-test) -- with empty stand-ins for Slicer's own modules."""
    script = tmp_path / "import_module.py"
    script.write_text(PY39_MODULE_IMPORT)
    out = subprocess.run([str(PY39), str(script), str(ROOT / "KneePipeline" / "KneePipeline.py")], cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "KneePipelineWidget" in out.stdout and "KneePipelineTest" in out.stdout
    import ast

    tree = ast.parse((ROOT / "KneePipeline" / "KneePipelineModule" / "parameters.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KneePipelineParameterNode")
    n_params = sum(isinstance(n, ast.AnnAssign) for n in cls.body)
    assert out.stdout.strip().endswith(" %d" % n_params), (out.stdout, n_params)   # every annotation evaluated
