"""Mutation check: plant a curated list of realistic bugs, one at a time, and see the named tests catch them.

    python tools/mutation_check.py [--only ID,ID] [--list] [--timeout S] [--keep]

Made for a small machine (mutmut over whole modules is far too slow on 2 cores): every mutation is an
exact source substitution with a name and the few fast tests that must fail when it is present. The
library and tests are copied once to a temporary folder; each mutation is applied to the COPY (never to
this checkout), the named tests run there (``python -m pytest -x`` with the copy first on the path, one
thread), and the file is restored. A mutation whose text is no longer in the source is reported as
``stale`` (the list must follow the code). A baseline run of every named test without mutation must
pass first. Prints the kill table and writes bench/results/mutation-<date>.json (kill rate, goal >= 90 %).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T_REG = ["Testing/test_regions_rules.py"]
T_REG_SYN = ["Testing/test_regions_rules.py::test_synthetic_condyles_every_rule_decides_the_known_voxels"]
T_STAB = ["Testing/test_region_stability.py::test_femoral_regions_follow_the_anatomy_when_the_knee_is_revoxelised"]
T_PH = ["Testing/test_phantoms.py"]
T_PH_STATS = ["Testing/test_phantoms.py::test_regional_statistics_weight_by_area_not_by_vertex_count"]
T_PH_SPHERE = ["Testing/test_phantoms.py::test_thickness_is_unbiased_on_an_oblique_sphere_at_the_sample_voxels"]
T_MORPH = ["Testing/test_morphometry.py::test_phantom_thickness_accuracy_and_coverage",
           "Testing/test_morphometry.py::test_phantom_exact_mesh_intersection_matches_field",
           "Testing/test_morphometry.py::test_miss_is_nan_and_region_from_labels",
           "Testing/test_morphometry.py::test_mesh_uses_physical_smoothing_and_geometry"]
T_T2N = ["Testing/test_t2_noise.py"]
T_T2 = ["Testing/test_t2.py::test_mese_synthetic_rician_snr50_median_error_below_1ms",
        "Testing/test_t2.py::test_noise_floor_refinement_removes_bias_at_short_t2",
        "Testing/test_t2.py::test_drop_first_echo_ignores_a_contaminated_first_echo_and_quality_masks"]
T_CORE = ["Testing/test_core.py::test_pymskt_remap_matches_the_reference_table",
          "Testing/test_core.py::test_values_outside_the_convention_are_an_error_not_a_guess",
          "Testing/test_core.py::test_custom_json_convention",
          "Testing/test_core.py::test_laterality_of_the_real_right_knee_and_its_mirror"]
T_BS = ["Testing/test_bscore.py"]
T_PP = ["Testing/test_nnunet_postprocess.py"]

MORPH = "KneePipelineLib/morphometry/"


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str             # relative to the repository root
    old: str              # exact text, must occur exactly once
    new: str
    what: str             # the realistic bug it stands for
    tests: Tuple[str, ...]


def M(id, path, old, new, what, tests) -> Mutation:
    return Mutation(id, path, old, new, what, tuple(tests))


MUTATIONS: List[Mutation] = [
    # -- femoral sub-regions (the survivors first)
    M("regions-ml-swap", MORPH + "regions.py", "medial = ml > ml_notch", "medial = ml < ml_notch",
      "femoral medial and lateral sub-regions swapped", T_REG),
    M("regions-superior-ratio", MORPH + "regions.py", "superior_ratio: float = 0.33", "superior_ratio: float = 0.6",
      "0.67/0.33 superior line changed to 0.4/0.6", T_REG_SYN),
    M("regions-wb-fraction", MORPH + "regions.py", "wb_fraction: float = 0.6", "wb_fraction: float = 0.5",
      "weight-bearing fraction 0.6 -> 0.5", T_REG_SYN),
    M("regions-trochlea-offset", MORPH + "regions.py", "ant = ap > ap_notch", "ant = ap > ap_notch + 2.0",
      "trochlea boundary 2 mm in front of the notch", T_REG_SYN),
    M("regions-top-percentile", MORPH + "regions.py", "top = float(np.percentile(si, 99.9))",
      "top = float(np.percentile(si, 90.0))", "superior line's top from the 90th instead of the 99.9th percentile",
      T_REG_SYN),
    M("regions-ap-post", MORPH + "regions.py", "ap_post = float(np.percentile(ap, 0.1))",
      "ap_post = float(np.percentile(ap, 5.0))", "posterior end of the condyles at the 5th percentile", T_REG_SYN),
    M("regions-left-anterior", MORPH + "regions.py",
      'e_ant = -np.cross(e_sup, e_med) if side == "right" else np.cross(e_sup, e_med)',
      "e_ant = -np.cross(e_sup, e_med)", "left knees get a posterior-pointing anterior axis", T_REG),
    M("regions-superior-sign", MORPH + "regions.py", "upper = wb & (si > cut[ab])", "upper = wb & (si < cut[ab])",
      "superior line moves the distal instead of the upper cartilage", T_REG_SYN),
    M("regions-notch-extreme-voxel", MORPH + "regions.py",
      "sm = np.mean(np.stack([pad[:-2], pad[1:-1], pad[2:]]), axis=0)",
      "sm = np.median(np.stack([pad[:-2], pad[1:-1], pad[2:]]), axis=0)",
      "notch edge from one column's extreme voxel (median of 3) instead of 3 columns' mean", T_STAB),
    M("regions-shaft-cut-at-fov-edge-only", MORPH + "regions.py",
      "trunc = np.flatnonzero((n_cut > 0) | (n_cap > 0.03 * np.maximum(cnt, 1)))",
      "trunc = np.flatnonzero(n_cut > 0)", "shaft axis leaves out only slabs on the array's edge", T_STAB),
    # -- thickness
    M("thickness-scale", MORPH + "raycast.py", 'if thickness_rule == "integral" else t_out - t_in',
      'if thickness_rule == "integral" else (t_out - t_in) * 1.015', "all thickness values x 1.015",
      T_PH_SPHERE),
    M("thickness-scale-integral", MORPH + "raycast.py", 'thickness[rv] = integ[rv] if thickness_rule == "integral"',
      'thickness[rv] = 1.015 * integ[rv] if thickness_rule == "integral"', "integral-rule thickness x 1.015",
      T_PH_SPHERE),
    M("thickness-scale-mesh-path", MORPH + "raycast.py", "        thickness[rv] = t_out - t_in\n",
      "        thickness[rv] = (t_out - t_in) * 1.015\n", "thickness x 1.015 on the exact-mesh path", T_MORPH),
    M("thickness-integral-from-entry", MORPH + "raycast.py",
      "start = np.max(np.where(valley & (k_all <= e_b[:, None]), k_all, 0), axis=1)", "start = e_b + 1",
      "the layer's integral starts at its 0.5 entry (the rising flank lost)", T_PH_SPHERE),
    M("thickness-integral-is-crossings", MORPH + "raycast.py",
      'thickness[rv] = integ[rv] if thickness_rule == "integral" else t_out - t_in', "thickness[rv] = t_out - t_in",
      "the integral rule silently measuring the crossings (thin layers under-read 0.9 -> 0.56 mm)", T_PH),
    M("thickness-bump-cut-short", MORPH + "raycast.py", "valley |= vals < 0.02", "valley |= vals < 0.3",
      "the layer's integral stops at 0.3 instead of its valley (tails lost)", T_PH_SPHERE),
    M("thickness-side-sign", MORPH + "raycast.py",
      "side = np.sign(np.einsum(\"ij,ij->i\", dd[sel], fn[tri[sel]])).astype(np.int8)",
      "side = -np.sign(np.einsum(\"ij,ij->i\", dd[sel], fn[tri[sel]])).astype(np.int8)",
      "mesh hits: entry and exit swapped", T_MORPH),
    M("normals-inward", MORPH + "mesh.py", "    n = -grad\n", "    n = grad\n",
      "field normals point into the bone", T_PH_SPHERE),
    M("smoothing-variance-as-sigma", MORPH + "mesh.py",
      "sigma_kji = (np.sqrt(smooth_var_mm2) / spacing_kji)", "sigma_kji = (smooth_var_mm2 / spacing_kji)",
      "Gaussian variance used as sigma", T_PH_SPHERE + T_MORPH),
    M("orientation-unfixed", MORPH + "mesh.py", "    if signed_volume(pts, tris) < 0:\n", "    if False:\n",
      "inward-facing meshes when det(direction) < 0", T_MORPH),
    # -- regional statistics
    M("stats-area-weighting", MORPH + "analysis.py",
      "mean = float((integrals[1] if integrals is not None else tau[sel].sum()) / covered)", "mean = float(t.mean())",
      "area-weighted mean replaced by a plain mean", T_PH_STATS),
    M("stats-coverage-by-count", MORPH + "analysis.py",
      "cov = covered / plate if plate > 0 else None", "cov = float(nv / n) if n else None",
      "coverage by vertex count instead of area", T_PH_STATS),
    M("stats-edge-at-vertices", MORPH + "mesh.py", "s1 = fr[:, 0] / (fr[:, 0] - fr[:, 1])", "s1 = 0.5 + 0 * fr[:, 0]",
      "the covered area's edge halfway between vertices, not where the level crosses 0", T_PH),
    M("stats-vertex-area", MORPH + "mesh.py", "weights=area / 3.0", "weights=area / 2.0",
      "vertex area = half (not a third) of the adjacent triangles", T_PH_STATS),
    M("stats-median", MORPH + "analysis.py", "_weighted_median(t, w), mean)", "float(np.mean(t)), mean)",
      "median replaced by the mean", T_PH_STATS),
    # -- T2
    M("t2-floor-root-mean-square", "KneePipelineLib/t2/mese.py", "    mean = np.where(pos, mean, a)\n",
      "    mean = np.where(pos, np.sqrt(a * a + 2.0 * safe * safe), a)\n",
      "noise floor sqrt(A^2 + 2 sigma^2) (the old model) instead of the Rician mean", T_T2N),
    M("t2-floor-sigma-low", "KneePipelineLib/t2/mese.py", "sig_n = float(sigma) / scale",
      "sig_n = float(sigma) / scale / np.sqrt(2.0)", "noise floor 2 sigma^2 -> sigma^2 (sigma low by sqrt 2)", T_T2N),
    M("t2-noise-truncated-background", "KneePipelineLib/t2/mese.py",
      "return _rayleigh_truncated_sigma(v, sigma0),", "return _rayleigh_truncated_sigma(low, sigma0),",
      "noise refined on the background cut at 10 % of the bright level", T_T2N),
    M("t2-noise-truncation-constant", "KneePipelineLib/t2/mese.py", "bg = v2[v2 < 4.0 * sigma * sigma]",
      "bg = v2[v2 < 9.0 * sigma * sigma]", "truncation at 3 sigma with the 2-sigma constant", T_T2N),
    M("t2-first-echo-kept", "KneePipelineLib/t2/mese.py", "        used = used[1:]\n", "        used = used[:]\n",
      "drop_first_echo ignored", T_T2),
    M("t2-r2-threshold", "KneePipelineLib/t2/mese.py", "valid = np.isfinite(t2) & (r2m >= r2_min)",
      "valid = np.isfinite(t2) & (r2m >= min(r2_min, 0.7))", "R^2 threshold capped", T_T2),
    M("t2-loglinear-unweighted", "KneePipelineLib/t2/mese.py", "w = np.where(s > 0, s * s, 0.0)",
      "w = np.where(s > 0, 1.0, 0.0)", "log-linear fit without the S^2 weights", T_T2N),
    # -- labels
    M("labels-pymskt-tibia-swap", "KneePipelineLib/labels.py",
      "2: MEDIAL_TIBIAL_CARTILAGE, 3: LATERAL_TIBIAL_CARTILAGE", "2: LATERAL_TIBIAL_CARTILAGE, 3: MEDIAL_TIBIAL_CARTILAGE",
      "pymskt medial/lateral tibial cartilage swapped", T_CORE),
    M("labels-laterality-sign", "KneePipelineLib/labels.py", 'side = "right" if dx > 0 else "left"',
      'side = "right" if dx < 0 else "left"', "laterality inverted", T_CORE),
    M("labels-unknown-guessed", "KneePipelineLib/labels.py",
      "unknown = [int(v) for v in present if int(v) not in table]", "unknown = []",
      "values outside the convention silently become background", T_CORE),
    # -- B-score
    M("bscore-no-mean", "KneePipelineLib/shape/bscore.py",
      "return float((z @ model.vector - model.mean_healthy) / model.std_healthy)",
      "return float((z @ model.vector) / model.std_healthy)", "B-score without the healthy mean", T_BS),
    M("bscore-size-check", "KneePipelineLib/shape/bscore.py", "if z.size != model.latent_size:", "if False:",
      "latent of the wrong size scored anyway", T_BS),
    # -- segmentation post-processing
    M("postprocess-6-connectivity", "KneePipelineLib/segmentation/postprocess.py",
      "FULL_3D = np.ones((3, 3, 3), dtype=bool)", "FULL_3D = None",
      "6- instead of 26-connectivity (thin cartilage split)", T_PP),
    M("postprocess-fill-overwrites", "KneePipelineLib/segmentation/postprocess.py",
      "sub[filled & ~mask & (sub == 0)] = bone", "sub[filled & ~mask] = bone",
      "hole filling overwrites other labels inside a bone", T_PP),
]


def _copy_tree(dest: Path) -> None:
    def ignore(folder, names):
        return [n for n in names if n in (".git", ".venv", "__pycache__", ".pytest_cache", "results", "docs")
                or n.endswith((".pyc", ".vtp", ".nii.gz"))]
    for sub in ("KneePipelineLib", "Testing", "pyproject.toml"):
        src = ROOT / sub
        if src.is_dir():
            shutil.copytree(src, dest / sub, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / sub)


def _run_tests(copy: Path, tests: Sequence[str], timeout: float, env) -> Tuple[str, float, str]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=str(copy), env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    dt = time.perf_counter() - t0
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    if proc.returncode == 0:
        return "passed", dt, tail[0]
    if proc.returncode == 1:
        return "failed", dt, tail[0]
    return "error(rc=%d)" % proc.returncode, dt, tail[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated mutation ids")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per test run (a timeout counts as killed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results")
    args = ap.parse_args(argv)
    muts = MUTATIONS
    if args.only:
        want = set(args.only.split(","))
        muts = [m for m in muts if m.id in want]
    if args.list:
        for m in muts:
            print("%-32s %-45s %s" % (m.id, m.path, m.what))
        return 0
    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.sample_data import ensure_sample_data

    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    env["KNEEPIPELINE_SAMPLE_DATA"] = str(ensure_sample_data())       # the copy has no ../shared/data
    shared = ROOT.parent / "shared"
    if shared.is_dir() and "KNEEPIPELINE_SHARED" not in env:
        env["KNEEPIPELINE_SHARED"] = str(shared)
    tmp = Path(tempfile.mkdtemp(prefix="kp-mutation-"))
    copy = tmp / "repo"
    copy.mkdir()
    _copy_tree(copy)
    env["PYTHONPATH"] = str(copy)
    rows = []
    t_all = time.perf_counter()
    try:
        tests = sorted({t for m in muts for t in m.tests})
        status, dt, tail = _run_tests(copy, tests, args.timeout * 3, env)
        print("baseline (%d test ids, no mutation): %s in %.1f s  %s" % (len(tests), status, dt, tail))
        if status != "passed":
            print("the named tests must pass without mutation first", file=sys.stderr)
            return 2
        for m in muts:
            f = copy / m.path
            src = f.read_text()
            n = src.count(m.old)
            if n != 1:
                rows.append(dict(id=m.id, what=m.what, file=m.path, result="stale (text found %d times)" % n,
                                 killed=None, seconds=0.0, tests=list(m.tests)))
                print("%-32s STALE (text found %d times)" % (m.id, n))
                continue
            f.write_text(src.replace(m.old, m.new))
            try:
                status, dt, tail = _run_tests(copy, m.tests, args.timeout, env)
            finally:
                f.write_text(src)
            killed = status != "passed"
            rows.append(dict(id=m.id, what=m.what, file=m.path, result=status, killed=killed,
                             seconds=round(dt, 1), tests=list(m.tests)))
            print("%-32s %-8s %6.1f s  %s" % (m.id, "KILLED" if killed else "SURVIVED", dt, m.what))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("copy kept in", copy)
    judged = [r for r in rows if r["killed"] is not None]
    n_killed = sum(1 for r in judged if r["killed"])
    rate = 100.0 * n_killed / max(len(judged), 1)
    wall = time.perf_counter() - t_all
    print("killed %d of %d mutations (%.0f %%), %d stale; %.0f s wall" %
          (n_killed, len(judged), rate, len(rows) - len(judged), wall))
    for r in rows:
        if r["killed"] is False:
            print("  survived:", r["id"], "-", r["what"])
    if not args.no_write and not args.only:
        path = write_result("mutation", {"mutations": rows, "killed": n_killed, "judged": len(judged),
                                         "kill_rate_pct": round(rate, 1), "goal_pct": 90.0, "wall_s": round(wall, 1)})
        print("wrote", path)
    return 0 if rate >= 90.0 else 1


if __name__ == "__main__":
    sys.exit(main())
