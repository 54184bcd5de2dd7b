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


# -- BatchNormalization folded into the convolution (keras2torch/fold.py; docs/SPEED.md) ------------------
BN_FIXTURES = ["unet_channels_first", "unet_channels_last", "unet_nonsquare_channels_first"]


@pytest.mark.parametrize("name", BN_FIXTURES)
def test_folded_batchnorm_matches_keras_and_the_unfolded_net(name):
    """The DOSMA-like fixtures (Conv2D -> BatchNormalization -> PReLU blocks) load with every batch norm folded
    into its convolution, and still give Keras's probabilities; the unfolded net gives them too."""
    ref = np.load(FIX / (name + ".npz"))
    folded = load_keras_model(FIX / (name + ".h5"))
    plain = load_keras_model(FIX / (name + ".h5"), fold_batchnorm=False)
    n_bn = sum(1 for l in folded.layers_cfg if l["class_name"] == "BatchNormalization")
    assert n_bn >= 10 and len(folded.folded) == n_bn and plain.folded == {}
    with torch.no_grad():
        yf = folded(torch.from_numpy(ref["x"])).numpy()
        yp = plain(torch.from_numpy(ref["x"])).numpy()
    assert np.abs(yf - ref["y"]).max() < 1e-5
    assert np.abs(yp - ref["y"]).max() < 1e-5
    assert np.abs(yf - yp).max() < 1e-5


def _conv_bn_net(activation="linear", second_consumer=False, bn_axis=1):
    from KneePipelineLib.segmentation.keras_h5 import build_keras_graph, layer_config, model_config

    rng = np.random.default_rng(1)
    cf = "channels_first"
    n = 3 if bn_axis == 1 else 8  # batch-norm parameters: one per position of the normalised axis
    layers = [layer_config("InputLayer", "in", [], batch_input_shape=[None, 2, 8, 8], dtype="float32"),
              layer_config("Conv2D", "conv", ["in"], filters=3, kernel_size=[3, 3], strides=[1, 1], padding="same",
                           data_format=cf, dilation_rate=[1, 1], groups=1, activation=activation, use_bias=True),
              layer_config("BatchNormalization", "bn", ["conv"], axis=bn_axis, epsilon=1e-3, center=True,
                           scale=True)]
    out = "bn"
    if second_consumer:
        layers.append(layer_config("Add", "add", ["bn", "conv"]))
        out = "add"
    weights = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 3)).astype(np.float32),
                        "bias": rng.normal(size=3).astype(np.float32)},
               "bn": {"gamma": rng.uniform(0.5, 2, n).astype(np.float32), "beta": rng.normal(size=n).astype(np.float32),
                      "moving_mean": rng.normal(size=n).astype(np.float32),
                      "moving_variance": rng.uniform(0.5, 2, n).astype(np.float32)}}
    cfg = model_config(layers, ["in"], [out])
    return build_keras_graph(cfg, weights), build_keras_graph(cfg, weights, fold_batchnorm=False), weights


def _numpy_conv_bn(x, w, activation):
    """Keras's arithmetic by hand: 3x3 'same' convolution (+ReLU), then (x - mean) / sqrt(var + eps) * gamma + beta."""
    k, b = w["conv"]["kernel"].astype(np.float64), w["conv"]["bias"].astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((x.shape[0], 3, 8, 8))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nchw,co->nohw", xp[:, :, i:i + 8, j:j + 8], k[i, j])
    y += b[None, :, None, None]
    if activation == "relu":
        y = np.maximum(y, 0)
    bn = {n: v.astype(np.float64)[None, :, None, None] for n, v in w["bn"].items()}
    return (y - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-3) * bn["gamma"] + bn["beta"]


@pytest.mark.parametrize("activation,second_consumer,bn_axis,folds", [
    ("linear", False, 1, True),     # the foldable pattern
    ("relu", False, 1, False),      # batch norm after the activation: not linear in the conv's output
    ("linear", True, 1, False),     # the conv's output is also used unnormalised elsewhere
    ("linear", False, 2, False),    # the batch norm normalises another axis than the conv's channels
])
def test_batchnorm_folded_only_where_exact(activation, second_consumer, bn_axis, folds):
    folded, plain, w = _conv_bn_net(activation, second_consumer, bn_axis)
    assert (folded.folded == {"bn": "conv"}) is folds and (folded.folded == {}) is (not folds)
    x = np.random.default_rng(2).normal(size=(2, 2, 8, 8)).astype(np.float32)
    with torch.no_grad():
        yf, yp = folded(torch.from_numpy(x)).numpy(), plain(torch.from_numpy(x)).numpy()
    assert np.abs(yf - yp).max() < 1e-5
    if bn_axis == 1:
        truth = _numpy_conv_bn(x, w, activation)
        if second_consumer:
            k = dict(w, bn={"gamma": np.ones(3), "beta": np.zeros(3), "moving_mean": np.zeros(3),
                            "moving_variance": np.full(3, 1 - 1e-3)})
            truth = truth + _numpy_conv_bn(x, k, activation)
        assert np.abs(yf - truth).max() < 1e-4
