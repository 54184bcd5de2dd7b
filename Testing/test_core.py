"""Errors, progress protocol, options, labels: the contracts every consumer relies on."""
import io
import json

import numpy as np
import pytest

from KneePipelineLib import errors, labels as L
from KneePipelineLib.options import RunOptions
from KneePipelineLib.progress import Progress, parse_line


def test_every_error_category_has_a_distinct_exit_code_and_hint():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.KneePipelineError)]
    seen = {}
    for c in classes:
        e = c("something failed")
        assert e.exit_code != 0 and e.hint, c
        seen.setdefault(e.category, set()).add(e.exit_code)
    assert all(len(v) == 1 for v in seen.values())
    assert len({next(iter(v)) for v in seen.values()}) == len(seen)


def test_classification_is_by_type_not_text():
    # The reference counted "zoom" as out-of-memory; our classifier never looks at text.
    e = errors.classify(RuntimeError("CUDA out of memory while zooming"))
    assert e.category == "internal"
    assert errors.classify(PermissionError(13, "denied", "/x")).category == "output_unwritable"
    assert errors.classify(KeyboardInterrupt()).category == "cancelled"
    own = errors.DicomError("bad")
    assert errors.classify(own) is own


def test_progress_fractions_are_monotonic_and_weighted():
    buf = io.StringIO()
    p = Progress([("a", 1), ("b", 3)], stream=buf)
    p.hello("run", "0")
    p.step("a", 0.5)
    p.step("a", 0.2)  # going back inside a step never lowers the run fraction
    p.step("b", 0.0)
    p.step("b", 1.0)
    p.warning("careful")
    p.result(out_dir="x")
    events = [parse_line(l) for l in buf.getvalue().splitlines()]
    assert events[0]["event"] == "hello" and events[0]["protocol"] == 1
    fr = [e["fraction"] for e in events if e["event"] == "step"]
    assert fr == sorted(fr) and fr[0] == pytest.approx(0.125) and fr[2] == pytest.approx(0.25)
    assert events[-1]["event"] == "result" and events[-1]["fraction"] == 1.0
    assert p.warnings == ["careful"]


def test_progress_lines_are_strict_json():
    buf = io.StringIO()
    Progress(stream=buf).emit("log", value=float("nan"))
    assert json.loads(buf.getvalue())["value"] is None
    assert parse_line("not json") is None and parse_line('{"no_event": 1}') is None


def test_options_round_trip_and_validation():
    o = RunOptions(out_dir="/tmp/o", image="/x.nii.gz", nsm="both", folds=[0, 1], tta=True)
    assert RunOptions.from_dict(json.loads(o.to_json())) == o
    argv = o.to_argv()
    assert argv[:3] == ["run", "--out", "/tmp/o"] and "--tta" in argv and "--folds" in argv
    with pytest.raises(errors.ConfigurationError):
        RunOptions(out_dir="/x", image="/y", nsm="everything").validate()
    with pytest.raises(errors.ConfigurationError):
        RunOptions(out_dir="/x").validate()
    with pytest.raises(errors.ConfigurationError):
        RunOptions.from_dict({"out_dir": "/x", "bogus": 1})


def test_cli_argv_from_options_parses_back_to_the_same_options():
    from KneePipelineLib.cli import build_parser
    from KneePipelineLib.commands._common import options_from_args

    o = RunOptions(out_dir="/tmp/o", image="/x.nii.gz", nsm="bone_only", folds=[0, 1], tta=True, step_size=0.7,
                   postprocess=False, report=False, seed=3, echoes=["/e1", "/e2"], echo_times_ms=[10.0, 20.0])
    args = build_parser().parse_args(o.to_argv())
    assert options_from_args(args) == o


def test_pymskt_remap_matches_the_reference_table():
    src = np.arange(11, dtype=np.uint8)
    out = L.remap(src, L.CONVENTIONS["pymskt"], "pymskt")
    assert list(out) == [0, 2, 3, 4, 1, 7, 8, 9, 10, 6, 5]


def test_values_outside_the_convention_are_an_error_not_a_guess():
    with pytest.raises(errors.LabelConventionError, match=r"\[12\]"):
        L.remap(np.array([0, 1, 12]), L.CONVENTIONS["dosma"], "dosma")


def test_custom_json_convention(tmp_path):
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"3": "femur", "4": "femoral_cartilage", "9": "background"}))
    table = L.load_convention(str(f))
    assert L.remap(np.array([0, 3, 4, 9]), table).tolist() == [0, L.FEMUR, L.FEMORAL_CARTILAGE, 0]
    f.write_text(json.dumps({"3": "kneecap"}))
    with pytest.raises(errors.LabelConventionError, match="kneecap"):
        L.load_convention(str(f))
    with pytest.raises(errors.LabelConventionError):
        L.load_convention(str(tmp_path / "missing.json"))


def _sample(path):
    from KneePipelineLib.io import read_labels

    vol = read_labels(path)
    return vol.with_array(L.remap(vol.array, L.CONVENTIONS["pymskt"]))


def test_laterality_of_the_real_right_knee_and_its_mirror(sample_labels_path):
    vol = _sample(sample_labels_path)
    lat = L.detect_laterality(vol)
    assert lat.side == "right" and lat.confidence > 0.5
    # a physical mirror (x -> -x in LPS) is a left knee, whatever the array order
    mirrored = vol.with_array(vol.array)
    mirrored.direction = np.diag([-1.0, 1, 1]) @ vol.direction
    mirrored.origin_mm = vol.origin_mm * np.array([-1, 1, 1])
    assert L.detect_laterality(mirrored).side == "left"
    # the array flipped along the axis closest to LPS x, geometry unchanged: also a left knee
    ax = int(np.argmax(np.abs(vol.direction[0, :])))  # index axis (i,j,k) most aligned with x
    flipped = vol.with_array(np.flip(vol.array, axis=2 - ax).copy())
    assert L.detect_laterality(flipped).side == "left"


def test_our_own_outputs_reanalyse_with_the_canonical_convention():
    out = L.remap(np.arange(11, dtype=np.uint8), L.CONVENTIONS["canonical"], "canonical")
    assert list(out) == list(range(11))
    with pytest.raises(errors.LabelConventionError):  # DOSMA models never emit fibula
        L.remap(np.array([10]), L.CONVENTIONS["dosma"], "dosma")
