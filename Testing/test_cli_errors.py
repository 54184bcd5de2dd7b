"""The CLI's error contract for the command line itself (issue 16, item 8).

An argument argparse refuses exits 2 with a typed ``usage`` error event (when JSON lines are on) and a clear
message on stderr; a value that parses but makes no sense (NaN smoothing, ``--threads -1``, a time limit for
a step that does not exist) is a ``configuration`` error from ``RunOptions.validate`` naming the option --
never ``internal``, never a traceback, nothing written, the input unchanged.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")

from KneePipelineLib.cli import main  # noqa: E402
from KneePipelineLib.errors import EXIT_CODES  # noqa: E402
from KneePipelineLib.progress import parse_line  # noqa: E402

from test_cli_faces import assert_no_protocol, run_in_terminal, screen_lines  # noqa: E402


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    a = np.zeros((12, 14, 16), np.uint8)
    a[2:6, 3:11, 3:13] = 7
    a[6:8, 4:10, 4:12] = 2
    path = tmp_path_factory.mktemp("in") / "labels.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(a), str(path))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    errors = [e for e in map(parse_line, out.splitlines()) if e and e["event"] == "error"]
    return rc, errors, err


@pytest.mark.parametrize("command,extra,names", [
    ("analyze", ["--cartilage-smooth-var-mm2", "nan"], ["--cartilage-smooth-var-mm2", "nan"]),
    ("analyze", ["--bone-smooth-var-mm2", "inf"], ["--bone-smooth-var-mm2", "inf"]),
    ("run", ["--threads", "-1"], ["--threads", "-1"]),
    ("run", ["--threads", "0"], ["--threads"]),
    ("analyze", ["--step-timeout", "bogus=5"], ["bogus", "morphometry"]),
    ("analyze", ["--step-timeout", "morphometry=nan"], ["--step-timeout", "nan"]),
    ("analyze", ["--timeout", "nan"], ["--timeout", "nan"]),
    ("analyze", ["--echoes", "x.nii.gz", "--echo-times-ms", "10", "nan"], ["--echo-times-ms"]),
])
def test_a_senseless_value_is_a_configuration_error_naming_the_option(command, extra, names, labels, tmp_path,
                                                                     capsys):
    before = _digest(labels)
    out = tmp_path / "out"
    rc, errors, err = _run([command, "--labels", labels, "--out", out, "--no-report", *extra], capsys)
    assert rc == EXIT_CODES["configuration"], err
    assert len(errors) == 1 and errors[0]["category"] == "configuration" and errors[0]["exit_code"] == rc
    for name in names:
        assert name in errors[0]["message"] + errors[0]["hint"], errors[0]
    assert "Traceback" not in err and "ERROR [configuration]" in err
    assert not (out / "results.json").exists() and _digest(labels) == before


@pytest.mark.parametrize("argv,words", [
    (["analyze", "--labels", "L"], ["--out"]),                                  # a required option missing
    (["run", "--labels", "L", "--out", "O", "--threads", "abc"], ["--threads", "abc"]),
    (["analyze", "--labels", "L", "--out", "O", "--no-such-option"], ["--no-such-option"]),
    (["analyze", "--labels", "L", "--out", "O", "--step-timeout", "900"], ["--step-timeout", "STEP=SECONDS"]),
    (["analyze", "--labels", "L", "--out", "O", "--mesh-format", "stl"], ["--mesh-format", "stl"]),
    (["no-such-command"], ["no-such-command"]),
])
def test_an_argument_error_exits_2_with_a_usage_error_event(argv, words, tmp_path, capsys):
    rc, errors, err = _run(argv, capsys)
    assert rc == 2 == EXIT_CODES["usage"]
    assert len(errors) == 1 and errors[0]["category"] == "usage" and errors[0]["exit_code"] == 2
    for w in words:
        assert w in errors[0]["message"], errors[0]
    assert "--help" in errors[0]["hint"]
    assert "ERROR [usage]" in err and "Traceback" not in err
    assert not (tmp_path / "O").exists()


def test_an_argument_error_at_a_terminal_is_a_message_not_json():
    rc, text = run_in_terminal(["run", "--labels", "L", "--out", "O", "--threads", "abc"])
    lines = screen_lines(text)
    assert rc == 2
    assert_no_protocol(lines)
    assert any(ln.startswith("ERROR [usage]: kneepipeline run: argument --threads") for ln in lines), lines
    assert any(ln.startswith("Hint: See `kneepipeline run --help`") for ln in lines)
    # asked for, the protocol carries it even at a terminal
    rc, text = run_in_terminal(["run", "--labels", "L", "--out", "O", "--threads", "abc", "--progress", "json"])
    events = [e for e in map(parse_line, screen_lines(text)) if e]
    assert rc == 2 and [e["category"] for e in events if e["event"] == "error"] == ["usage"]


def test_a_bad_progress_environment_variable_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.setenv("KNEEPIPELINE_PROGRESS", "fancy")
    rc = main(["models"])
    out, err = capsys.readouterr()
    assert rc == 2 and "fancy" in err and "KNEEPIPELINE_PROGRESS" in err and "Traceback" not in err


def test_the_step_names_options_accept_are_the_pipeline_s_steps():
    from KneePipelineLib.options import STEP_NAMES
    from KneePipelineLib.pipeline import STEPS

    assert tuple(s.name for s in STEPS) == STEP_NAMES


def test_with_json_a_failure_is_the_final_object(labels, tmp_path, capsys):
    rc = main(["analyze", "--labels", str(labels), "--out", str(tmp_path / "o"), "--timeout", "nan", "--json"])
    out, err = capsys.readouterr()
    obj = json.loads(out)   # the only thing on stdout
    assert rc == EXIT_CODES["configuration"] and obj["status"] == "failed"
    assert obj["error"]["category"] == "configuration" and obj["error"]["exit_code"] == rc
    rc = main(["analyze", "--labels", str(labels), "--json", "--no-such-option"])
    obj = json.loads(capsys.readouterr().out)
    assert rc == 2 and obj["error"]["category"] == "usage"
