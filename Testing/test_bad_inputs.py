"""The bad-input corpus: every case gives its category, a message and hint, a non-zero exit code, no
results, and leaves its input files byte-identical."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from KneePipelineLib.cli import main
from KneePipelineLib.errors import EXIT_CODES

from bad_inputs import cases
# case names only (nothing is built here); the cases made from the real MESE series get it from the
# `mese_dir` fixture (shared data, the user cache, or fetched once)
_CASES = list(cases(Path("/nonexistent"), None, Path("/nonexistent-mese")))
_MESE_CASES = {c[0] for c in _CASES} - {c[0] for c in cases(Path("/nonexistent"), None, None)}
assert len(_CASES) >= 30 and _MESE_CASES


def _digest(paths):
    out = {}
    for p in paths:
        p = Path(p)
        if p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("name", [c[0] for c in _CASES])
def test_bad_input(name, tmp_path, capsys, request):
    mese = request.getfixturevalue("mese_dir") if name in _MESE_CASES else None
    build = dict(cases(tmp_path, None, mese))[name]
    argv, category = build()
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    inputs = [a for a in argv if a.startswith(str(tmp_path)) and "out" not in Path(a).name]
    before = _digest(inputs)
    code = main(argv)
    captured = capsys.readouterr()
    errors = [json.loads(l) for l in captured.out.splitlines() if l.startswith("{") and '"error"' in l]
    assert code == EXIT_CODES[category] and code != 0, (code, captured.err)
    assert errors and errors[-1]["category"] == category
    assert errors[-1]["message"] and errors[-1]["hint"]
    assert "Hint:" in captured.err
    out = Path(argv[argv.index("--out") + 1])
    assert not (out / "results.json").exists() and not (out / "results.csv").exists()
    if (out / "manifest.json").exists():
        m = json.loads((out / "manifest.json").read_text())
        assert m["status"] == "failed" and m["error"]["category"] == category
    assert _digest(inputs) == before


def test_cli_process_exit_code_and_stdout_protocol(tmp_path):
    empty = tmp_path / "e.nii.gz"
    empty.write_bytes(b"")
    r = subprocess.run([sys.executable, "-m", "KneePipelineLib", "analyze", "--labels", str(empty), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == EXIT_CODES["input_unreadable"]
    events = [json.loads(l) for l in r.stdout.splitlines()]
    assert events[0]["event"] == "hello" and events[-1]["event"] == "error"
    assert "empty" in events[-1]["message"]
