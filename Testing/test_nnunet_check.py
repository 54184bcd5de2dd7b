"""`kneepipeline models --check DIR` and the checks nnU-Net runs before predicting (segmentation/settings.py):
the fixtures pass; a folder with a wrong transpose, a missing fold or a foreign label set fails with a
message naming the problem; the fold comes from the folder's own model_config.json."""
import json
import shutil
from pathlib import Path

import pytest

from KneePipelineLib.errors import ModelInvalidError
from KneePipelineLib.registry import get_model
from KneePipelineLib.segmentation.settings import check_model, nnunet_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
TRAINER = "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"


def _copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(TINY, dst)
    return dst


def _trainer(root: Path) -> Path:
    return root / "models" / "Dataset500_KneeMRI" / TRAINER


def _edit(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _cli(argv, capsys):
    from KneePipelineLib.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    events = [json.loads(line) for line in cap.out.splitlines() if line.startswith("{")]
    return rc, events, cap.err


def test_check_accepts_the_fixtures(tmp_path, capsys):
    rc, events, err = _cli(["models", "--check", str(TINY)], capsys)
    assert rc == 0, err
    rows = {r["id"]: r for r in events[-1]["check"]}
    assert rows["nnunet_fullres"]["ok"]
    chk = rows["nnunet_fullres"]["details"]["checks"][0]
    assert chk["transpose_forward"] == [0, 1, 2] and chk["coarse_input_axis"] == 0 and chk["labels"] == 10
    # (the tests' random cascade folders pass the same checks inside every test_nnunet.py prediction)


@pytest.mark.parametrize("problem, words", [
    ("transpose", ["transpose_forward", "coarsest spacing", "another voxel frame"]),
    ("fold", ["Fold 1", "missing", "folds present: fold_0"]),
    ("labels", ["another label set", "1=liver", "patellar_cartilage"]),
])
def test_check_rejects_a_wrong_folder_with_a_clear_message(tmp_path, capsys, problem, words):
    root = _copy(tmp_path)
    t = _trainer(root)
    if problem == "transpose":
        _edit(t / "plans.json", lambda p: p.update(transpose_forward=[1, 0, 2], transpose_backward=[1, 0, 2]))
    elif problem == "fold":
        (t / "fold_1").rename(t / "fold_0")
    else:
        _edit(t / "dataset.json", lambda d: d.update(labels={"background": 0, "liver": 1, "spleen": 2}))
    rc, events, err = _cli(["models", "--check", str(root), "--model", "nnunet_fullres"], capsys)
    assert rc != 0
    err_event = events[-1]
    assert err_event["event"] == "error" and err_event["category"] == "model_invalid"
    for w in words:
        assert w in err_event["message"], (w, err_event["message"])
    assert err_event["hint"]


def test_fold_and_stale_configuration_come_from_model_config(tmp_path):
    root = _copy(tmp_path)
    t = _trainer(root)
    (t / "fold_1").rename(t / "fold_3")
    (t / "model_config.json").write_text(json.dumps({"model_info": {"fold": 3, "configuration": "3d_cascade_fullres"}}))
    entry = get_model("nnunet_fullres")
    s = nnunet_settings(entry, root / "models" / "Dataset500_KneeMRI")
    assert s.folds == ["3"] and s.source["folds"].endswith("model_config.json")
    assert any("stale" in n for n in s.notes)
    check_model(entry, root / "models" / "Dataset500_KneeMRI")      # fold 3 is there: passes
    assert nnunet_settings(entry, root / "models" / "Dataset500_KneeMRI", folds=[1]).source["folds"] == "options"
    with pytest.raises(ModelInvalidError, match="Fold 1"):
        check_model(entry, root / "models" / "Dataset500_KneeMRI", folds=[1])
    # a folder that names its checkpoint: used unless --checkpoint says otherwise
    (t / "model_config.json").write_text(json.dumps({"model_info": {"fold": 3, "checkpoint": "checkpoint_final.pth"}}))
    assert nnunet_settings(entry, root / "models" / "Dataset500_KneeMRI").checkpoint == "checkpoint_final.pth"
    assert nnunet_settings(entry, root / "models" / "Dataset500_KneeMRI", checkpoint="final").checkpoint \
        == "checkpoint_final.pth"
    with pytest.raises(ModelInvalidError, match="checkpoint_final.pth does not exist"):
        check_model(entry, root / "models" / "Dataset500_KneeMRI")


def test_segment_refuses_a_foreign_folder_before_predicting(tmp_path):
    import numpy as np
    from KneePipelineLib.io.volume import Volume
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.segmentation import segment

    root = _copy(tmp_path)
    _edit(_trainer(root) / "plans.json", lambda p: p.update(transpose_forward=[2, 1, 0], transpose_backward=[2, 1, 0]))
    img = Volume(np.zeros((8, 8, 8), np.float32), (0.7, 0.7, 1.4), (0, 0, 0), np.eye(3))
    with pytest.raises(ModelInvalidError, match="another voxel frame"):
        segment(img, RunOptions(model="nnunet_fullres", model_dir=str(root), device="cpu"))


def test_check_reads_2d_model_files_against_the_registry(tmp_path, capsys):
    """models --check on DOSMA .h5 files: the input size (rows x columns) and the 10 classes are checked from
    the file's architecture alone."""
    import numpy as np
    from KneePipelineLib.segmentation.keras_h5 import layer_config, model_config, save_keras_h5

    def tiny(path, h, w, classes=10):
        layers = [layer_config("InputLayer", "input_1", [], batch_input_shape=[None, 1, h, w], dtype="float32"),
                  layer_config("Conv2D", "head", ["input_1"], filters=classes, kernel_size=[1, 1], strides=[1, 1],
                               padding="same", data_format="channels_first", dilation_rate=[1, 1], groups=1,
                               activation="softmax", use_bias=True)]
        save_keras_h5(path, model_config(layers, ["input_1"], ["head"]),
                      {"head": {"kernel": np.zeros((1, 1, 1, classes), np.float32),
                                "bias": np.zeros(classes, np.float32)}})

    good = tmp_path / "good"
    good.mkdir()
    tiny(good / "coronal_best_model.h5", 160, 512)
    rc, events, err = _cli(["models", "--check", str(good), "--model", "dosma_coronal"], capsys)
    assert rc == 0, err
    assert events[-1]["check"][0]["details"]["input_size"] == [160, 512]
    bad = tmp_path / "bad"
    bad.mkdir()
    tiny(bad / "coronal_best_model.h5", 512, 160)          # transposed: would get transposed slices
    rc, events, err = _cli(["models", "--check", str(bad), "--model", "dosma_coronal"], capsys)
    assert rc != 0 and "takes 512 x 160 slices" in events[-1]["message"] and "160 x 512" in events[-1]["message"]
    tiny(bad / "coronal_best_model.h5", 160, 512, classes=4)
    rc, events, err = _cli(["models", "--check", str(bad), "--model", "dosma_coronal"], capsys)
    assert rc != 0 and "predicts 4 classes" in events[-1]["message"]
