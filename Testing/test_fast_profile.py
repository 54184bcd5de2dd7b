"""The fast profile and the CPU bf16 path keep the segmentation: per-structure Dice with the tiny trained knee model.

The model is ``Testing/fixtures/nnunet_tiny_knee`` (a real nnU-Net v2 results folder, trained on synthetic
DESS-like knees); the image is the held-out synthetic right knee (``synthetic_mri.heldout_case``, never seen
in training; 18 tiles at the default step 0.5, 8 at the fast profile's 1.0). A few CPU seconds per run.
Thresholds come from ``bench/bench_fast_profile.py`` (bench/results/fast_profile-*.json, docs/SPEED.md) with
margin:

* ``--profile fast`` (tile step 1.0) costs Dice at the tiles' seams. Measured against the truth, per
  structure, fast minus default: medial meniscus -0.408 (a seam runs through it), femoral cartilage -0.023,
  lateral meniscus -0.019, femur -0.012, every other structure within 0.011. The test holds each structure
  to its measured loss + 0.05 (0.05 where none was measured): the documented cost, not a hope.
* bf16 autocast vs fp32 (what a CPU with native bf16 runs by default): per-structure Dice >= 0.99 (the issue's
  bar; measured >= 0.9987). The test forces bf16 with ``KNEEPIPELINE_CPU_BF16=1`` so it runs on every CPU
  (emulated where not native: same arithmetic, but ~40 CPU-s per tiny-model tile on an AVX2-only CPU, where
  the whole fast run took 470 s), and forces fp32 with ``=0``. Where bf16 is not native the comparison runs
  on a one-tile crop of the same held-out knee (``heldout_crop``, 88x88x64 voxels round the femorotibial
  joint): the same network, arithmetic and threshold over fewer voxels.
"""
from pathlib import Path

import numpy as np
import pytest

from KneePipelineLib import labels as L
from KneePipelineLib.errors import ConfigurationError
from KneePipelineLib.options import RunOptions
from KneePipelineLib.segmentation import segment
from KneePipelineLib.segmentation.cpu_speed import ENV_BF16, native_bf16, use_cpu_bf16

import synthetic_mri as S
from heldout_crop import heldout_crop

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
STRUCTURES = (L.PATELLAR_CARTILAGE, L.FEMORAL_CARTILAGE, L.MEDIAL_MENISCUS, L.LATERAL_MENISCUS, L.FEMUR,
              L.TIBIA, L.PATELLA)
MIN_VOXELS = 500
MEASURED_FAST_LOSS = {L.MEDIAL_MENISCUS: 0.408, L.FEMORAL_CARTILAGE: 0.023, L.LATERAL_MENISCUS: 0.019, L.FEMUR: 0.012}
MARGIN = 0.05
BF16_MIN_DICE = 0.99


@pytest.fixture(scope="module")
def case(sample_labels_path):
    img, lab = S.heldout_case(S.load_sample_labels(sample_labels_path), "right")
    return img, np.where(lab.array == L.FIBULA, 0, lab.array)


def _segment(img, profile, bf16, monkeypatch):
    monkeypatch.setenv(ENV_BF16, "1" if bf16 else "0")
    res = segment(img, RunOptions(out_dir="x", image="x", device="cpu", threads=1, profile=profile,
                                  model_dir=str(MODEL_DIR)), None)
    return res.labels.array, res.model


BF16_CROP_IJK = (88, 88, 64)     # one tile of the tiny model (64^3 at 1.4 x 1.09 x 1.09 mm) at the fast step


@pytest.fixture(scope="module")
def runs(case):
    mp = pytest.MonkeyPatch()
    try:
        img, _ = case
        keys = [("default", False), ("fast", False)] + ([("fast", True)] if native_bf16() else [])
        return {key: _segment(img, key[0], key[1], mp) for key in keys}
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def bf16_pair(case, runs, sample_labels_path):
    """(fp32 labels, bf16 labels, truth) of the fast profile: the whole held-out knee where bf16 is native,
    else a one-tile crop of it (emulated bf16 costs ~40 CPU-s a tile)."""
    if native_bf16():
        return runs[("fast", False)][0], runs[("fast", True)][0], case[1]
    img, lab = heldout_crop(S.load_sample_labels(sample_labels_path), "right", size_ijk=BF16_CROP_IJK)
    mp = pytest.MonkeyPatch()
    try:
        (fp32, m32), (bf16, m16) = _segment(img, "fast", False, mp), _segment(img, "fast", True, mp)
    finally:
        mp.undo()
    assert sum(m16["tiles"]) == 1 and m16["precision"] == "bf16-autocast" and m32["precision"] == "fp32"
    return fp32, bf16, lab.array


def _present(truth):
    return [t for t in STRUCTURES if int((truth == t).sum()) >= MIN_VOXELS]


def test_fast_profile_has_fewer_tiles_and_records_itself(runs):
    (_, default), (_, fast) = runs[("default", False)], runs[("fast", False)]
    assert sum(fast["tiles"]) < sum(default["tiles"])
    assert (default["step_size"], default["profile"]) == (0.5, "default")
    assert (fast["step_size"], fast["profile"]) == (1.0, "fast")
    assert fast["precision"] == "fp32"
    if native_bf16():
        assert runs[("fast", True)][1]["precision"] == "bf16-autocast"


def test_fast_profile_costs_no_more_dice_than_measured(case, runs):
    _, truth = case
    default, fast = runs[("default", False)][0], runs[("fast", False)][0]
    for t in _present(truth):
        d_def, d_fast = S.dice(default, truth, t), S.dice(fast, truth, t)
        assert d_fast >= d_def - MEASURED_FAST_LOSS.get(t, 0.0) - MARGIN, (L.TISSUES[t], d_def, d_fast)


def test_bf16_autocast_matches_fp32(bf16_pair):
    fp32, bf16, truth = bf16_pair
    assert _present(truth)
    for t in _present(truth):
        assert S.dice(bf16, fp32, t) >= BF16_MIN_DICE, (L.TISSUES[t], S.dice(bf16, fp32, t))


def test_bf16_only_where_native_unless_forced():
    assert use_cpu_bf16({}) == native_bf16()
    assert use_cpu_bf16({ENV_BF16: "0"}) is False and use_cpu_bf16({ENV_BF16: "1"}) is True
    assert native_bf16(frozenset({"avx2", "avx512f"})) is False
    assert native_bf16(frozenset({"avx512f", "avx512_bf16"})) and native_bf16(frozenset({"amx_bf16"}))


def test_profile_is_validated_and_reaches_the_command_line():
    with pytest.raises(ConfigurationError, match="Unknown profile"):
        RunOptions(out_dir="o", image="i", profile="turbo").validate()
    with pytest.raises(ConfigurationError, match="contradicts"):
        RunOptions(out_dir="o", image="i", profile="fast", step_size=0.7).validate()
    opts = RunOptions(out_dir="o", image="i", profile="fast").validate()
    assert opts.effective_step_size() == 1.0 and RunOptions().effective_step_size() == 0.5
    assert "--profile" in opts.to_argv() and opts.to_argv()[opts.to_argv().index("--profile") + 1] == "fast"
    import argparse

    from KneePipelineLib.commands._common import add_model_args, add_run_control_args, options_from_args

    p = argparse.ArgumentParser()
    add_model_args(p)
    add_run_control_args(p)
    assert options_from_args(p.parse_args(["--out", "o", "--profile", "fast"])).profile == "fast"


def test_the_slicer_panel_offers_the_profiles():
    import ast

    from KneePipelineLib.options import PROFILES

    src = (ROOT / "KneePipeline" / "KneePipelineModule" / "parameters.py").read_text(encoding="utf-8")
    field = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.AnnAssign)
             and getattr(n.target, "id", "") == "profile"]
    assert field, "the parameter node has no 'profile' field"
    ann = ast.unparse(field[0].annotation)
    assert ast.literal_eval(ann.split("Choice(")[1].split(")")[0]) == list(PROFILES)
    assert ast.literal_eval(field[0].value) == RunOptions().profile
    logic = (ROOT / "KneePipeline" / "KneePipelineModule" / "logic.py").read_text(encoding="utf-8")
    assert "profile=params.profile" in logic
