"""The corpus of hostile and odd inputs (``bad_inputs.py`` + ``odd_inputs.py``), run in-process through the
CLI's ``main``. Every bad case: the category's exit code, one JSON ``error`` event with message and hint, a
short message, no traceback, no results, a manifest (if any) saying ``failed`` with the same category, and
its inputs byte-identical. Every valid-but-odd case: success, the right laterality and regional numbers."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from KneePipelineLib.cli import main
from KneePipelineLib.errors import EXIT_CODES

from bad_inputs import corpus, counts_by_kind
from odd_inputs import region_means

_CASES = {c.name: c for c in corpus()}
assert len(_CASES) >= 150, len(_CASES)
MAX_MESSAGE_CHARS = 600


@pytest.fixture(scope="session")
def knee_and_reference(tmp_path_factory, coarse_knee_path):
    """The coarse real knee (conftest) and its regional means, analysed as given (the odd copies must reproduce
    them)."""
    d = tmp_path_factory.mktemp("knee")
    knee = coarse_knee_path
    out = d / "out"
    assert main(["--quiet-progress", "analyze", "--labels", str(knee), "--label-convention", "canonical",
                 "--no-report", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["laterality"]["side"] == "right"
    return knee, region_means(doc)


def _digest(paths):
    out = {}
    for p in paths:
        p = Path(p)
        files = [p] if p.is_file() else (sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [])
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("name", sorted(_CASES))
def test_corpus_case(name, tmp_path, capsys, request):
    case = _CASES[name]
    data = {}
    reference = {}
    if "mese" in case.needs:
        data["mese"] = request.getfixturevalue("mese_dir")
    if "knee" in case.needs:
        data["knee"], reference = request.getfixturevalue("knee_and_reference")
    if case.kind.startswith("valid"):
        case = {c.name: c for c in corpus(reference)}[name]
    built = case.build(tmp_path, data)
    argv = list(built.argv)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    out = Path(argv[argv.index("--out") + 1])
    inputs = [a for a in argv if a.startswith(str(tmp_path)) and Path(a) != out] + [str(v) for v in data.values()]
    before = _digest(inputs)
    with built.context():
        code = main(argv)
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    assert "Traceback" not in captured.err, captured.err[-2000:]
    assert _digest(inputs) == before, "an input was modified"
    if built.category is None:   # valid but odd: success with the right numbers
        assert code == 0, captured.err[-1500:]
        results = json.loads((out / "results.json").read_text())
        built.check(out, results)
        if built.warns:
            assert any(built.warns in w for w in results["warnings"]), results["warnings"]
        assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
        return
    errors = [e for e in events if e["event"] == "error"]
    assert code == EXIT_CODES[built.category] and code != 0, (code, captured.err[-1500:])
    assert len(errors) == 1 and errors[0]["category"] == built.category
    assert errors[0]["message"] and errors[0]["hint"]
    assert len(errors[0]["message"]) < MAX_MESSAGE_CHARS, len(errors[0]["message"])
    if built.says:
        assert built.says in errors[0]["message"], errors[0]["message"]
    assert "Hint:" in captured.err
    assert not (out / "results.json").exists() and not (out / "results.csv").exists()
    assert not (out / "results_bundle.zip").exists()
    if (out / "manifest.json").exists() and built.category != "busy":
        m = json.loads((out / "manifest.json").read_text())
        assert m["status"] == "failed" and m["error"]["category"] == built.category
    if out.is_dir():
        assert not [p for p in out.rglob(".tmp-*")], "a temporary file was left"


def test_corpus_classes_and_counts():
    counts = counts_by_kind(list(_CASES.values()))
    assert len(counts) >= 9 and sum(counts.values()) == len(_CASES)
    print("\n".join("%4d  %s" % (n, k) for k, n in sorted(counts.items(), key=lambda kv: -kv[1])))


def test_cli_process_exit_code_and_stdout_protocol(tmp_path):
    empty = tmp_path / "e.nii.gz"
    empty.write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "KneePipelineLib", "analyze", "--labels", str(empty), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == EXIT_CODES["input_unreadable"]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event"] == "hello" and events[-1]["event"] == "error"
    assert "empty" in events[-1]["message"]
