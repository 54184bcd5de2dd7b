"""The fast profile and the CPU bf16 path keep the segmentation: per-structure Dice with the tiny trained knee model.

The model is ``Testing/fixtures/nnunet_tiny_knee`` (a real nnU-Net v2 results folder, trained on synthetic
DESS-like knees); the image is a crop of the held-out synthetic knee around the femorotibial joint
(``heldout_crop.py``: 3 tiles at the default step 0.5, 2 at the fast profile's 1.0), so the whole module takes
seconds. Thresholds come from measurement (docs/SPEED.md) with margin:

* ``--profile fast`` (tile step 1.0): per-structure Dice against the truth within 0.03 of the default profile's
  (measured on this crop: fast is within +-0.06 of default, mostly better at the crop's edges; on the full
  held-out knee the largest loss was 0.021, medial meniscus) and Dice fast-vs-default >= 0.85 for every
  structure with >= 500 true voxels (measured minimum 0.89, patellar cartilage cut by the crop).
* bf16 autocast vs fp32 (what a CPU with native bf16 runs by default): per-structure Dice >= 0.99 (the issue's
  bar). The test forces bf16 with ``KNEEPIPELINE_CPU_BF16=1`` so it runs on every CPU (emulated where not
  native: slower, same arithmetic), and forces fp32 with ``=0``.
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
FAST_MAX_DICE_LOSS = 0.03
FAST_MIN_AGREEMENT = 0.85
BF16_MIN_DICE = 0.99


@pytest.fixture(scope="module")
def case(sample_labels_path):
    img, truth = heldout_crop(S.load_sample_labels(sample_labels_path), "right")
    return img, truth.array


def _segment(img, profile, bf16, monkeypatch):
    monkeypatch.setenv(ENV_BF16, "1" if bf16 else "0")
    res = segment(img, RunOptions(out_dir="x", image="x", device="cpu", threads=1, profile=profile,
                                  model_dir=str(MODEL_DIR)), None)
    return res.labels.array, res.model


@pytest.fixture(scope="module")
def runs(case):
    mp = pytest.MonkeyPatch()
    try:
        img, _ = case
        return {key: _segment(img, key[0], key[1], mp) for key in
                (("default", False), ("fast", False), ("fast", True))}
    finally:
        mp.undo()


def _present(truth):
    return [t for t in STRUCTURES if int((truth == t).sum()) >= MIN_VOXELS]


def test_fast_profile_has_fewer_tiles_and_records_itself(runs):
    (_, default), (_, fast) = runs[("default", False)], runs[("fast", False)]
    assert sum(fast["tiles"]) < sum(default["tiles"])
    assert (default["step_size"], default["profile"]) == (0.5, "default")
    assert (fast["step_size"], fast["profile"]) == (1.0, "fast")
    assert fast["precision"] == "fp32" and runs[("fast", True)][1]["precision"] == "bf16-autocast"


def test_fast_profile_dice_cost_is_small(case, runs):
    _, truth = case
    default, fast = runs[("default", False)][0], runs[("fast", False)][0]
    present = _present(truth)
    assert len(present) >= 6, "the crop must hold the joint's structures"
    for t in present:
        d_def, d_fast = S.dice(default, truth, t), S.dice(fast, truth, t)
        assert d_fast >= d_def - FAST_MAX_DICE_LOSS, (L.TISSUES[t], d_def, d_fast)
        assert S.dice(fast, default, t) >= FAST_MIN_AGREEMENT, (L.TISSUES[t], S.dice(fast, default, t))


def test_bf16_autocast_matches_fp32(case, runs):
    _, truth = case
    fp32, bf16 = runs[("fast", False)][0], runs[("fast", True)][0]
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
