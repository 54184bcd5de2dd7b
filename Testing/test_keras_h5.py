"""Keras .h5 -> PyTorch loader: equivalence with Keras's own outputs (fixtures from tools/make_keras_fixtures.py)."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.errors import ModelInvalidError  # noqa: E402
from KneePipelineLib.segmentation.keras_h5 import load_keras_model, read_keras_h5  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures" / "keras"
NAMES = ["unet_channels_first", "unet_channels_last", "zoo_channels_first", "zoo_channels_last",
         "unet_nonsquare_channels_first"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("name", NAMES)
def test_matches_keras_outputs(name):
    ref = np.load(FIX / (name + ".npz"))
    net = load_keras_model(FIX / (name + ".h5"))
    assert not net.training
    with torch.no_grad():
        y = net(torch.from_numpy(ref["x"]))
    assert y.dtype == torch.float32
    assert tuple(y.shape) == ref["y"].shape
    assert np.abs(y.numpy() - ref["y"]).max() < 1e-4
    # the comparison is meaningful: probabilities sum to one over the channel axis, several classes win
    ch = 1 if name.endswith("first") else -1
    assert np.allclose(ref["y"].sum(axis=ch), 1.0, atol=1e-5)
    assert len(np.unique(ref["y"].argmax(axis=ch))) >= 2


def test_fixtures_are_keras2_files_with_groups_on_conv_transpose():
    config, weights, info = read_keras_h5(FIX / "unet_channels_first.h5")
    assert info["keras_version"].startswith("2.")
    tconv = [l for l in config["config"]["layers"] if l["class_name"] == "Conv2DTranspose"]
    assert tconv and all("groups" in l["config"] for l in tconv)
    assert {"kernel", "bias"} <= set(weights["up2"])
    assert [l for l in config["config"]["layers"] if l["class_name"] == "PReLU"][0]["config"]["shared_axes"] == [2, 3]


def test_data_format_and_input_shape():
    cf = load_keras_model(FIX / "unet_channels_first.h5")
    cl = load_keras_model(FIX / "unet_channels_last.h5")
    assert cf.data_format == "channels_first" and tuple(cf.input_shapes[0][1:]) == (1, 16, 16)
    assert cl.data_format == "channels_last" and tuple(cl.input_shapes[0][1:]) == (16, 16, 1)


def _edit_config(src, dst, edit):
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return dst


def test_unknown_layer_names_layer_and_class(tmp_path):
    def edit(cfg):
        layer = [l for l in cfg["config"]["layers"] if l["name"] == "ds_up"][0]
        layer["class_name"] = "Lambda"

    p = _edit_config(FIX / "unet_channels_first.h5", tmp_path / "m.h5", edit)
    with pytest.raises(ModelInvalidError) as e:
        load_keras_model(p)
    assert "ds_up" in e.value.message and "Lambda" in e.value.message


def test_grouped_transpose_refused(tmp_path):
    def edit(cfg):
        [l for l in cfg["config"]["layers"] if l["name"] == "up2"][0]["config"]["groups"] = 2

    p = _edit_config(FIX / "unet_channels_first.h5", tmp_path / "m.h5", edit)
    with pytest.raises(ModelInvalidError, match="up2"):
        load_keras_model(p)


def test_weights_only_and_garbage_files(tmp_path):
    p = tmp_path / "w.h5"
    with h5py.File(p, "w") as f:
        f.attrs["layer_names"] = [b"conv"]
    with pytest.raises(ModelInvalidError, match="architecture"):
        load_keras_model(p)
    g = tmp_path / "g.h5"
    g.write_bytes(b"not hdf5 at all")
    with pytest.raises(ModelInvalidError):
        load_keras_model(g)
    with pytest.raises(ModelInvalidError):
        load_keras_model(tmp_path / "missing.h5")


def test_missing_weight_is_reported(tmp_path):
    p = tmp_path / "m.h5"
    shutil.copy(FIX / "zoo_channels_last.h5", p)
    with h5py.File(p, "r+") as f:
        g = f["model_weights"]["c_even"]
        g.attrs["weight_names"] = []
    with pytest.raises(ModelInvalidError, match="c_even"):
        load_keras_model(p)
