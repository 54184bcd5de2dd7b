"""The Slicer module's glue (KneePipeline.py and KneePipeline/KneePipelineModule/), imported outside Slicer.

What is real here: the module's files themselves, our library (options, CLI parser, runner, loader, envsetup, labels,
registry) and Slicer's MRML/segmentation classes from PyPI's ``slicer-core`` (``slicer``, ``vtk``).

What is stood in for, because only the Slicer application has it (see ../shared/docs/SLICER.md):
- ``qt``, ``ctk``: empty modules (the module file uses Qt only inside widget methods, never run here);
- ``slicer.ScriptedLoadableModule``: the four base classes as plain empty classes (``...Test`` is
  ``unittest.TestCase``, as in Slicer);
- ``slicer.parameterNodeWrapper``: ``Choice`` / ``WithinRange`` as records of their arguments and
  ``parameterNodeWrapper`` as a decorator that leaves the class alone, so the field annotations Python
  evaluated can be checked against what Slicer's wrapper accepts, and the class defaults used as parameters.
These stand in for Slicer; nothing of our pipeline is mocked.
"""
import argparse
import importlib.util
import inspect
import pathlib
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="PyPI slicer-core is needed (pip install slicer-core==5.12.4.0)")
if not hasattr(slicer, "vtkMRMLScene"):  # pragma: no cover
    pytest.skip("the installed `slicer` is not slicer-core", allow_module_level=True)
import vtk  # noqa: E402

from KneePipelineLib import envsetup, labels as L, runner  # noqa: E402
from KneePipelineLib.cli import build_parser  # noqa: E402
from KneePipelineLib.commands._common import options_from_args  # noqa: E402
from KneePipelineLib.errors import ConfigurationError, LabelConventionError  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.registry import list_models  # noqa: E402
from KneePipelineLib.slicer_io import load_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "KneePipeline" / "KneePipeline.py"
PACKAGE = ROOT / "KneePipeline" / "KneePipelineModule"
UI = ROOT / "KneePipeline" / "Resources" / "UI" / "KneePipeline.ui"


class _Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class _WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _stand_ins():
    qt = types.ModuleType("qt")
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic"):
        setattr(slm, name, type(name, (), {"__init__": lambda self, *a, **k: None}))
    slm.ScriptedLoadableModuleTest = unittest.TestCase
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.Choice, pnw.WithinRange = _Choice, _WithinRange
    pnw.parameterNodeWrapper = lambda cls: cls
    return {"qt": qt, "ctk": types.ModuleType("ctk"), "slicer.ScriptedLoadableModule": slm,
            "slicer.parameterNodeWrapper": pnw}


@pytest.fixture(scope="module")
def mod():
    saved = {k: sys.modules.get(k) for k in _stand_ins()}
    saved_path = list(sys.path)
    sys.modules.update(_stand_ins())
    try:
        spec = importlib.util.spec_from_file_location("KneePipeline_under_test", str(MODULE))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k in [k for k in sys.modules if k.split(".")[0] == "KneePipelineModule"]:
            del sys.modules[k]
        sys.path[:] = saved_path


def _split(annotation):
    """(type, annotations) like slicer.parameterNodeWrapper.util.splitAnnotations."""
    if typing.get_origin(annotation) is typing.Annotated:
        return annotation.__origin__, list(annotation.__metadata__)
    return annotation, []


def _is_node(t):
    return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)


def _bound_widgets():
    out = {}
    for w in ET.parse(str(UI)).getroot().iter("widget"):
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                out[p.find("string").text] = w
    return out


def _params(mod, **changes):
    """A parameter set with the wrapper class's defaults (Path() where the wrapper's default is Path())."""
    hints = typing.get_type_hints(mod.KneePipelineParameterNode, include_extras=True)
    values = {}
    for name, annotation in hints.items():
        t, _ = _split(annotation)
        if hasattr(mod.KneePipelineParameterNode, name):
            values[name] = getattr(mod.KneePipelineParameterNode, name)
        elif t is pathlib.Path:
            values[name] = pathlib.Path()
        else:
            values[name] = None
    values.update(changes)
    return types.SimpleNamespace(**values)


# -- the parameter node's annotations, as Python evaluates them ---------------------------------------
def test_parameter_types_are_ones_slicers_wrapper_can_store_and_bind(mod):
    """Serializers exist for int/float/str/bool/pathlib.Path/node types and Unions; a Union of node types
    needs None in it (the wrapper writes the default, None, on creation); QComboBox binding needs Choice."""
    hints = typing.get_type_hints(mod.KneePipelineParameterNode, include_extras=True)
    bound = _bound_widgets()
    assert set(hints) == set(bound)
    for name, annotation in hints.items():
        t, extras = _split(annotation)
        widget = bound[name].get("class")
        if typing.get_origin(t) is typing.Union:
            args = typing.get_args(t)
            assert type(None) in args, "%s: Union of node types without None" % name
            assert all(a is type(None) or _is_node(a) for a in args), name
            assert widget == "qMRMLNodeComboBox"
        elif _is_node(t):
            assert widget == "qMRMLNodeComboBox"
        else:
            assert t in (int, float, str, bool, pathlib.Path), "%s: no Slicer serializer for %r" % (name, t)
        if widget == "QComboBox":
            choices = [a for a in extras if isinstance(a, _Choice)]
            assert choices, "%s: a QComboBox binds only to a Choice-annotated field" % name
            default = getattr(mod.KneePipelineParameterNode, name)
            assert default in choices[0].choices, name
        if t is float:
            rng = [a for a in extras if isinstance(a, _WithinRange)]
            assert widget == "QDoubleSpinBox" and rng
            assert rng[0].minimum <= getattr(mod.KneePipelineParameterNode, name) <= rng[0].maximum


def test_model_choices_are_the_registry_segmentation_models(mod):
    hints = typing.get_type_hints(mod.KneePipelineParameterNode, include_extras=True)
    _, extras = _split(hints["model"])
    choices = next(a for a in extras if isinstance(a, _Choice)).choices
    assert choices == [m.id for m in list_models(kind="segmentation")]
    assert mod.KneePipelineParameterNode.model == RunOptions().model


# -- parameters -> RunOptions -> argv -> the real CLI ----------------------------------------------------
def _round_trip(opts):
    args = build_parser().parse_args(opts.to_argv())
    assert args.command == "run"
    return options_from_args(args)


def test_default_panel_gives_the_cli_defaults(mod, tmp_path):
    logic = mod.KneePipelineLogic()
    opts = logic.buildOptions(_params(mod), str(tmp_path / "knee.nrrd"), None, "dosma", str(tmp_path / "out"))
    assert opts == RunOptions(out_dir=str(tmp_path / "out"), image=str(tmp_path / "knee.nrrd"))
    assert _round_trip(opts) == opts


def test_every_panel_choice_reaches_the_cli(mod, tmp_path):
    logic = mod.KneePipelineLogic()
    echoes = tmp_path / "echoes"
    params = _params(mod, model=mod.SEGMENTATION_MODELS[-1], nsm="both", t2Enabled=True, echoesPath=echoes,
                     device="cpu", boneSmoothVarMm2=1.25, cartilageSmoothVarMm2=0.2, tta=True, stepSize=0.7,
                     timeoutMinutes=5)
    opts = logic.buildOptions(params, str(tmp_path / "knee.nrrd"), str(tmp_path / "labels.nrrd"), "pymskt",
                              str(tmp_path / "out"))
    assert (opts.model, opts.nsm, opts.device, opts.tta, opts.step_size) == (
        mod.SEGMENTATION_MODELS[-1], "both", "cpu", True, 0.7)
    assert opts.echoes == [str(echoes)] and opts.timeout_s == 300.0
    assert (opts.bone_smooth_var_mm2, opts.cartilage_smooth_var_mm2) == (1.25, 0.2)
    assert (opts.labels, opts.label_convention) == (str(tmp_path / "labels.nrrd"), "pymskt")
    assert _round_trip(opts) == opts


def test_every_run_option_survives_to_argv_and_the_cli(tmp_path):
    """The module starts `python -m KneePipelineLib <opts.to_argv()>`: each field, set away from its default,
    must come back unchanged through the real `run` parser (a flag the parser rejects fails the whole run)."""
    import contextlib
    import dataclasses
    import io

    samples = dict(image="b.nrrd", labels="l.nrrd", label_convention="pymskt", model="dosma_sagittal",
                   model_dir="/m", device="cpu", threads=2, folds=[0, 1], checkpoint="final", tta=True,
                   step_size=0.7, batch_size=3, postprocess=False, cpu_fallback=False, offline=True,
                   bone_smooth_var_mm2=1.0, cartilage_smooth_var_mm2=0.2, mesh_format="vtk", echoes=["e1", "e2"],
                   echo_times_ms=[10.0, 20.0], t2_drop_first_echo=False, qdess_params={"tr_ms": 5.0}, nsm="both",
                   nsm_dir="/n", bscore_dir="/b", nsm_iterations=10, nsm_samples=100, nsm_patience=5, nsm_mesh_resolution=128,
                   nsm_precision="bf16", seed=3, t2_stats_range_ms=[5.0, 90.0], profile="fast",
                   report=False, resume=True, timeout_s=300.0, step_timeouts_s={"segmentation": 900.0})
    rejected = []
    for f in dataclasses.fields(RunOptions):
        if f.name == "out_dir":
            continue
        assert f.name in samples, "add a sample value for the new option %s" % f.name
        kw = dict(out_dir=str(tmp_path), image="a.nrrd")
        kw[f.name] = samples[f.name]
        opts = RunOptions(**kw)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                back = _round_trip(opts)
        except SystemExit:
            rejected.append((f.name, opts.to_argv()[3:]))
            continue
        assert back == opts, f.name
    assert not rejected, "the CLI rejects these to_argv() flags: %s" % rejected


def test_t2_without_echoes_is_a_configuration_error(mod, tmp_path):
    with pytest.raises(ConfigurationError) as info:
        mod.KneePipelineLogic().buildOptions(_params(mod, t2Enabled=True), str(tmp_path / "k.nrrd"), None,
                                             "dosma", str(tmp_path / "out"))
    assert info.value.hint
    # T2 off: an echo path left in the field is ignored
    opts = mod.KneePipelineLogic().buildOptions(_params(mod, echoesPath=tmp_path), str(tmp_path / "k.nrrd"),
                                                None, "dosma", str(tmp_path / "out"))
    assert opts.echoes is None


def test_unset_paths_count_as_empty(mod):
    assert mod.path_or_none(pathlib.Path()) is None and mod.path_or_none("") is None
    assert mod.path_or_none(pathlib.Path("/data/run")) == "/data/run"


# -- calls into our library match its signatures ---------------------------------------------------
def test_module_calls_the_library_with_its_real_signatures(mod):
    import ast

    from KneePipelineLib import envpython

    targets = {"runner.start_pipeline": runner.start_pipeline, "runner.child_environment": runner.child_environment,
               "runner.PipelineRunner": runner.PipelineRunner, "load_run": load_run,
               "envpython.probe_command": envpython.probe_command,
               "envpython.parse_probe_output": envpython.parse_probe_output,
               "envpython.judge_environment": envpython.judge_environment,
               "envpython.resolve_python": envpython.resolve_python, "envpython.env_python": envpython.env_python,
               "envsetup.default_env_dir": envsetup.default_env_dir, "write_sample_run": __import__(
                   "KneePipelineLib.slicer_io.sample_run", fromlist=["x"]).write_sample_run}
    seen = set()
    for path in [MODULE] + sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in targets:
                name = ast.unparse(node.func)
                sig = inspect.signature(targets[name])
                args = [object()] * len(node.args)
                kwargs = {k.arg: object() for k in node.keywords}
                sig.bind(*args, **kwargs)   # TypeError if an argument does not exist or one is missing
                seen.add(name)
    assert {"runner.start_pipeline", "load_run", "envpython.probe_command", "envpython.judge_environment",
            "envsetup.default_env_dir", "write_sample_run"} <= seen


def test_setup_command_is_one_the_envsetup_cli_accepts(mod, tmp_path, monkeypatch):
    """The module starts `PythonSlicer -m KneePipelineLib.envsetup <flags>`: its flags must parse."""
    import ast

    from KneePipelineLib.envsetup import _parser

    src = (PACKAGE / "install.py").read_text(encoding="utf-8")
    flags = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("--"):
            flags.add(node.value)
    assert {"--env-dir", "--uv", "--base-python", "--child-env", "--forbid-python"} <= flags
    argv = []
    for f in sorted(flags):
        argv += [f, str(tmp_path / f.strip("-"))]
    args = _parser().parse_args(argv)
    assert args.uv and args.child_env and args.env_dir


# -- a segmentation node -> canonical label map, on a real MRML scene ---------------------------------
def _segmentation_scene(names):
    import numpy as np
    from vtk.util import numpy_support

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()   # must exist before segmentation nodes
    logic.SetMRMLScene(scene)
    arr = np.zeros((8, 10, 12), np.uint8)
    arr[1:3, 2:5, 2:6] = 1
    arr[4:7, 3:8, 4:9] = 2
    arr[5:7, 0:2, 0:3] = 3
    img = vtk.vtkImageData()
    img.SetDimensions(12, 10, 8)
    img.GetPointData().SetScalars(numpy_support.numpy_to_vtk(arr.ravel(), deep=True,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    lm = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "source")
    lm.SetAndObserveImageData(img)
    lm.SetSpacing(0.4, 0.5, 0.8)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "user segmentation")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(lm, seg)
    s = seg.GetSegmentation()
    for i, name in enumerate(names):
        s.GetNthSegment(i).SetName(name)
    return scene, seg, logic, arr


def _values(node):
    import numpy as np
    from vtk.util import numpy_support

    a = numpy_support.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars())
    return dict(zip(*[x.tolist() for x in np.unique(a, return_counts=True)]))


def test_segments_named_like_tissues_get_canonical_values(mod):
    scene, seg, _logic, arr = _segmentation_scene(["femur", "tibia", "my notes"])
    before = scene.GetNumberOfNodes()
    out = mod.segmentation_to_canonical_labelmap(seg)
    counts = _values(out)
    # femur (1) -> 7, tibia (2) -> 8, the unnamed third segment is left out
    assert counts.get(L.TISSUE_CODES["femur"]) == int((arr == 1).sum())
    assert counts.get(L.TISSUE_CODES["tibia"]) == int((arr == 2).sum())
    assert set(counts) == {0, L.TISSUE_CODES["femur"], L.TISSUE_CODES["tibia"]}
    assert out.GetSpacing() == pytest.approx((0.4, 0.5, 0.8))
    # the temporary colour table is gone; what is new is the label map and nodes that belong to it
    assert not scene.GetFirstNodeByName("KneePipeline export colors")
    new_nodes = [scene.GetNthNode(i) for i in range(before, scene.GetNumberOfNodes())]
    assert out in new_nodes
    assert not [n for n in new_nodes if n.IsA("vtkMRMLColorTableNode") and n.GetName().startswith("KneePipeline")]


def test_segmentation_without_tissue_names_is_a_label_convention_error(mod):
    scene, seg, _logic, _ = _segmentation_scene(["Segment_1", "Segment_2", "Segment_3"])
    before = scene.GetNumberOfNodes()
    with pytest.raises(LabelConventionError) as info:
        mod.segmentation_to_canonical_labelmap(seg)
    assert "femur" in info.value.hint
    assert scene.GetNumberOfNodes() == before


# -- "Try with sample data": the module's two jobs, the real CLI, the results in a real scene -------------
@pytest.mark.slow
def test_try_with_sample_data_runs_the_existing_segmentation_path(mod, tmp_path, monkeypatch):
    """KneePipelineLogic.startSampleData (the `sample-data` command, found in ../shared/data here) then
    startSampleRun (analyze on the sample label map) with this interpreter as the pipeline environment;
    the results load into a real MRML scene. Stood in: slicer.app (temporary folder) and the startup
    environment (Slicer's launcher), both Slicer application parts."""
    import os

    scene = slicer.vtkMRMLScene()
    app = types.SimpleNamespace(temporaryPath=str(tmp_path / "slicer-tmp"))
    monkeypatch.setattr(slicer, "app", app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    python = sys.executable    # the pipeline environment; "Slicer's Python" (refused as one) is elsewhere
    monkeypatch.setattr(sys, "executable", str(tmp_path / "Slicer" / "bin" / "PythonSlicer"))
    logic = mod.KneePipelineLogic()
    params = _params(mod, outputDirectory=tmp_path / "runs")
    job = logic.startSampleData(params, python=python)
    status = job.wait(timeout=300)
    assert status.state == "complete", status.error
    folder = status.result["sample_data"]
    job = logic.startSampleRun(params, folder, python=python)
    assert job.command[job.command.index("--label-convention") + 1] == "pymskt"
    status = job.wait(timeout=600)
    assert status.state == "complete", status.error
    assert os.path.dirname(logic.outDir) == str(tmp_path / "runs") and "sample-knee" in logic.outDir
    loaded = mod.KneePipelineLogic.loadResults(logic, logic.outDir)
    assert loaded.laterality == "right" and loaded.chart is not None and loaded.report_path
    seg = loaded.segmentation.GetSegmentation()
    assert seg.GetSegmentIdBySegmentName("femoral_cartilage") and "femur" in loaded.models


# -- "Compare with an earlier run": the longitudinal command as a job, the change in a real scene -----------
@pytest.mark.slow
def test_compare_with_an_earlier_run_loads_change_coloured_bones(mod, tmp_path, monkeypatch, sample_labels_path):
    """Two runs of the sample knee (the second in another scanner pose) -> KneePipelineLogic.startCompare runs
    `kneepipeline longitudinal` in the pipeline environment -> loadComparison fills a real MRML scene."""
    import os

    import SimpleITK as sitk

    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.pipeline import run

    # cropped, every 3rd voxel in-plane and every 2nd slice: ~2 CPU-s a run (the job and the scene are tested)
    img = sitk.ReadImage(str(sample_labels_path))[40:316:3, 30:300:3, 25:160:2]
    moved = sitk.Image(img)
    moved.SetOrigin([o + d for o, d in zip(img.GetOrigin(), (5.0, -3.0, 2.0))])
    runs = []
    for name, im in (("v00", img), ("v12", moved)):
        sitk.WriteImage(im, str(tmp_path / (name + ".nrrd")), True)
        runs.append(str(tmp_path / "runs" / name))
        run(RunOptions(out_dir=runs[-1], labels=str(tmp_path / (name + ".nrrd")), label_convention="pymskt",
                       report=False))
    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(temporaryPath=str(tmp_path / "slicer-tmp")), raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ))
    python = sys.executable
    monkeypatch.setattr(sys, "executable", str(tmp_path / "Slicer" / "bin" / "PythonSlicer"))
    logic = mod.KneePipelineLogic()
    params = _params(mod, outputDirectory=tmp_path / "out")
    job = logic.startCompare(params, runs[0], runs[1], python=python)
    assert job.command[job.command.index("longitudinal") + 1:job.command.index("longitudinal") + 3] == ["--baseline", runs[0]]
    status = job.wait(timeout=300)
    assert status.state == "complete", status.error
    loaded = logic.loadComparison(logic.outDir)
    names = sorted(m.GetName() for m in loaded["models"])
    assert names == ["femur change", "patella change", "tibia change"]
    assert loaded["table"].GetTable().GetNumberOfRows() > 8
    changes = [r["change_percent"] for r in loaded["document"]["followups"][0]["regions"]]
    assert max(abs(c) for c in changes) < 0.01        # a pure shift: no change
