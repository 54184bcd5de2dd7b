"""nnU-Net v2 backend: identical labels to nnunetv2's own file predictor, input geometry, cascade, CLI."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2")

from nnunet_fixtures import TRAINER_PLANS, build_results_folder, phantom_volume  # noqa: E402

from KneePipelineLib.errors import ModelInvalidError, ModelMissingError  # noqa: E402
from KneePipelineLib.io.readers import read_image, read_labels, write_volume  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.progress import parse_line  # noqa: E402
from KneePipelineLib.registry import get_model  # noqa: E402
from KneePipelineLib.segmentation import segment  # noqa: E402
from KneePipelineLib.segmentation.nnunet import predict_nnunet  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread_private_cache(tmp_path_factory):
    """One torch thread (shared CI cores), a model cache (sha256 memo) inside tmp, and fp32 arithmetic: these
    tests compare labels voxel for voxel with nnunetv2's own (fp32) predictor, so the bf16 autocast chosen by
    default on CPUs with native bf16 (segmentation/cpu_speed.py) is switched off here."""
    import os

    old = torch.get_num_threads()
    old_cache = os.environ.get("KNEEPIPELINE_CACHE")
    old_bf16 = os.environ.get("KNEEPIPELINE_CPU_BF16")
    torch.set_num_threads(1)
    os.environ["KNEEPIPELINE_CACHE"] = str(tmp_path_factory.mktemp("kp_cache"))
    os.environ["KNEEPIPELINE_CPU_BF16"] = "0"
    yield
    if old_bf16 is None:
        os.environ.pop("KNEEPIPELINE_CPU_BF16", None)
    else:
        os.environ["KNEEPIPELINE_CPU_BF16"] = old_bf16
    torch.set_num_threads(old)
    if old_cache is None:
        os.environ.pop("KNEEPIPELINE_CACHE", None)
    else:
        os.environ["KNEEPIPELINE_CACHE"] = old_cache


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("nnunet_model")
    return build_results_folder(base, ("3d_fullres", "3d_lowres", "3d_cascade_fullres"), folds=(1, 2),
                                checkpoints=("checkpoint_best.pth", "checkpoint_final.pth"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """An oblique 32x40x24 phantom written as NIfTI (both predictors read the same file)."""
    path = tmp_path_factory.mktemp("nnunet_img") / "knee_0000.nii.gz"
    write_volume(phantom_volume(oblique=True), path)
    return path


def _nnunet_reference(model_root, conf, image_file, out_dir, folds, checkpoint, tta, prev_dir=None):
    """nnunetv2's own predictor on files (preprocessing, sliding window, export: all nnunetv2's)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    import SimpleITK as sitk

    pred = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, device=torch.device("cpu"), allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model_root / (TRAINER_PLANS + conf)), use_folds=folds,
                                              checkpoint_name=checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    pred.predict_from_files_sequential([[str(image_file)]], str(out_dir), save_probabilities=False, overwrite=True,
                                       folder_with_segs_from_prev_stage=None if prev_dir is None else str(prev_dir))
    return sitk.ReadImage(str(out_dir / "knee.nii.gz"))


def _assert_same_geometry_as_image(labels_vol, image):
    assert labels_vol.array.shape == image.array.shape
    np.testing.assert_allclose(labels_vol.spacing_mm, image.spacing_mm, atol=1e-9)
    np.testing.assert_allclose(labels_vol.origin_mm, image.origin_mm, atol=1e-9)
    np.testing.assert_allclose(labels_vol.direction, image.direction, atol=1e-12)


@pytest.mark.parametrize("folds,checkpoint,tta", [(None, "best", False), ([1, 2], "final", False), ([2], "final", True)])
def test_fullres_labels_identical_to_nnunetv2_predictor(model_root, image_file, tmp_path, folds, checkpoint, tta):
    import SimpleITK as sitk

    image = read_image(image_file)
    assert not np.allclose(image.direction, np.eye(3))  # oblique input
    opts = RunOptions(out_dir=str(tmp_path), image=str(image_file), model="nnunet_fullres", device="cpu",
                      folds=folds, checkpoint=checkpoint, tta=tta, postprocess=False, model_dir=str(model_root))
    ours = predict_nnunet(image, get_model("nnunet_fullres"), model_root, opts)
    ref = _nnunet_reference(model_root, "3d_fullres", image_file, tmp_path / "ref", tuple(folds or [1]),
                            "checkpoint_%s.pth" % checkpoint, tta)
    ref_arr = sitk.GetArrayFromImage(ref)
    assert len(np.unique(ref_arr)) >= 3, "the random model should give several labels, else the test is weak"
    np.testing.assert_array_equal(ours.labels.array, ref_arr)
    _assert_same_geometry_as_image(ours.labels, image)
    np.testing.assert_allclose(np.array(ref.GetDirection()).reshape(3, 3), image.direction, atol=1e-6)
    assert ours.model["folds"] == [str(f) for f in (folds or [1])]
    assert ours.model["checkpoint"] == "checkpoint_%s.pth" % checkpoint
    assert ours.model["tta"] is tta and ours.model["device"] == "cpu"
    assert all(len(v) == 64 for v in ours.model["sha256"].values())


def test_cascade_identical_to_nnunetv2_lowres_then_cascade(model_root, image_file, tmp_path):
    import SimpleITK as sitk

    image = read_image(image_file)
    opts = RunOptions(out_dir=str(tmp_path), image=str(image_file), model="nnunet_cascade", device="cpu",
                      postprocess=False, model_dir=str(model_root))
    events = []
    ours = predict_nnunet(image, get_model("nnunet_cascade"), model_root, opts,
                          lambda f, m="": events.append((f, m)))
    low = tmp_path / "low"
    _nnunet_reference(model_root, "3d_lowres", image_file, low, (1,), "checkpoint_best.pth", False)
    ref = _nnunet_reference(model_root, "3d_cascade_fullres", image_file, tmp_path / "cas", (1,),
                            "checkpoint_best.pth", False, prev_dir=low)
    ref_arr = sitk.GetArrayFromImage(ref)
    np.testing.assert_array_equal(ours.labels.array, ref_arr)
    _assert_same_geometry_as_image(ours.labels, image)
    assert [c.split("__")[-1] for c in ours.model["configurations"]] == ["3d_lowres", "3d_cascade_fullres"]
    fr = [f for f, _ in events]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert any("3d_lowres: tile" in m for _, m in events) and any("3d_cascade_fullres: tile" in m for _, m in events)


def test_segment_postprocesses_and_keeps_stdout_clean(model_root, image_file, tmp_path, capsys):
    image = read_image(image_file)
    opts = RunOptions(out_dir=str(tmp_path), image=str(image_file), model="nnunet_fullres", device="cpu",
                      model_dir=str(model_root))
    res = segment(image, opts)
    raw = predict_nnunet(image, get_model("nnunet_fullres"), model_root,
                         RunOptions(out_dir=str(tmp_path), image="x", device="cpu", postprocess=False))
    out = capsys.readouterr().out
    assert out == "", "nnU-Net's prints must not reach stdout (it carries the JSON protocol)"
    from scipy import ndimage
    for value in np.unique(res.labels.array):
        if value:
            _, n = ndimage.label(res.labels.array == value, structure=np.ones((3, 3, 3)))
            assert n == 1
    changed = res.labels.array != raw.labels.array
    assert changed.any(), "the random model leaves fragments: post-processing must remove some"
    assert np.all((res.labels.array[changed] == 0) | np.isin(res.labels.array[changed], (7, 8, 9)))
    _assert_same_geometry_as_image(res.labels, image)
    assert res.model["postprocess"] is True and res.model["source"] == "model_dir"


def test_cli_segment_writes_labels_in_input_geometry(model_root, image_file, tmp_path, capsys):
    from KneePipelineLib.cli import main

    out = tmp_path / "out"
    rc = main(["segment", "--image", str(image_file), "--model", "nnunet_fullres", "--model-dir", str(model_root),
               "--out", str(out), "--device", "cpu", "--no-postprocess"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    labels = read_labels(out / "segmentation.nii.gz")
    image = read_image(image_file)
    np.testing.assert_allclose(labels.direction, image.direction, atol=1e-6)
    np.testing.assert_allclose(labels.origin_mm, image.origin_mm, atol=1e-4)
    assert labels.array.shape == image.array.shape
    events = [parse_line(line) for line in captured.out.splitlines()]
    assert all(e is not None for e in events), "every stdout line is a protocol event"
    assert events[-1]["event"] == "result"
    info = json.loads((out / "segmentation.json").read_text())
    assert info["model"]["id"] == "nnunet_fullres"


def test_model_dir_layout_errors(model_root, image_file, tmp_path):
    import shutil

    broken = tmp_path / "copy"
    shutil.copytree(model_root, broken / "Dataset500_KneeMRI")
    ck = broken / "Dataset500_KneeMRI" / (TRAINER_PLANS + "3d_fullres") / "fold_1" / "checkpoint_best.pth"
    ck.unlink()
    image = read_image(image_file)
    opts = RunOptions(out_dir=str(tmp_path), image="x", device="cpu", model_dir=str(broken))
    with pytest.raises(ModelMissingError) as err:
        segment(image, opts)
    assert "fold_1/checkpoint_best.pth" in err.value.message
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelInvalidError):
        segment(image, opts)


def test_plans_with_a_nibabel_reader_match_nnunetv2(tmp_path, image_file):
    """Plans naming another reader (here NibabelIOWithReorient, which reorients to RAS) keep its axis
    conventions: labels identical to nnunetv2's own predictor, on the input's grid."""
    pytest.importorskip("nibabel")
    import SimpleITK as sitk
    from nnunet_fixtures import plans_json

    plans = plans_json()
    plans["image_reader_writer"] = "NibabelIOWithReorient"
    root = build_results_folder(tmp_path / "m", ("3d_fullres",), plans=plans, seed=3)
    image = read_image(image_file)
    opts = RunOptions(out_dir=str(tmp_path), image="x", device="cpu", postprocess=False, model_dir=str(root))
    ours = predict_nnunet(image, get_model("nnunet_fullres"), root, opts)
    ref = _nnunet_reference(root, "3d_fullres", image_file, tmp_path / "ref", (1,), "checkpoint_best.pth", False)
    ref_arr = sitk.GetArrayFromImage(ref)
    assert len(np.unique(ref_arr)) >= 3
    np.testing.assert_array_equal(ours.labels.array, ref_arr)
    _assert_same_geometry_as_image(ours.labels, image)
