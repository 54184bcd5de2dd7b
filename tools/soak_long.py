"""The long soak: Testing/test_soak.py with many random faulted runs per test (the default suite runs each
fault class once; see docs/ROBUSTNESS.md).

    python tools/soak_long.py [--runs N] [pytest args...]

``--runs`` (default 25: 25 in this process + 25 in a Dask worker, the former 50-run soak) is passed to the
tests as ``KNEEPIPELINE_SOAK_RUNS``; every fault class still runs at least once, the rest are drawn at random
(seeded). Takes ~1 min on 2 idle cores. Exits with pytest's exit code.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=25, help="faulted runs per test (default 25)")
    args, rest = ap.parse_known_args(argv)
    env = dict(os.environ, KNEEPIPELINE_SOAK_RUNS=str(args.runs))
    cmd = [sys.executable, "-m", "pytest", "-q", str(ROOT / "Testing" / "test_soak.py")] + rest
    print("KNEEPIPELINE_SOAK_RUNS=%d %s" % (args.runs, " ".join(cmd)), flush=True)
    return subprocess.call(cmd, cwd=str(ROOT), env=env)


if __name__ == "__main__":
    sys.exit(main())
