"""Generate the Keras ``.h5`` equivalence fixtures in Testing/fixtures/keras/ (needs TensorFlow; run rarely).

The test suite never imports TensorFlow: it loads these files with our PyTorch loader and compares with
the outputs Keras itself computed here. Set-up (a throw-away venv, never the project's .venv)::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tfenv/bin/pip install --no-deps tf_keras==2.21.0
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python tools/make_keras_fixtures.py [OUT_DIR]

``tf_keras`` is Keras 2: it writes the same legacy ``.h5`` layout as the DOSMA files (``model_config``
JSON + ``model_weights`` groups) and its ``Conv2DTranspose`` config carries ``groups`` as Keras 2.11 /
2.16 files do. Channels-first convolutions and pooling run on TF's CPU build with oneDNN enabled (the
default), so the channels-first reference outputs come straight from Keras; no channels-last twin is
needed. Weights are random but non-trivial (batch-norm statistics and PReLU slopes are randomised so
that every layer matters), seeded, so the fixtures are reproducible up to TF's float round-off.

Files written per model NAME: ``NAME.h5`` and ``NAME.npz`` with ``x`` (inputs, file layout) and ``y``
(Keras's outputs of ``model.predict``). Builders draw from one seeded generator in order, so a builder added
at the end leaves the earlier models' weights unchanged; ``unet_nonsquare_channels_first`` (24 x 40 input)
was added that way.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

L = keras.layers
N_CLASSES = 4


def _res_block(x, filters, fmt, name):
    """DOSMA-style residual block: (Conv2D + BN + PReLU + Dropout) x2, 1x1 shortcut, joined by Add."""
    ch_axis = 1 if fmt == "channels_first" else -1
    shared = [2, 3] if fmt == "channels_first" else [1, 2]
    y = x
    for i in range(2):
        y = L.Conv2D(filters, 3, padding="same", data_format=fmt, name="%s_conv%d" % (name, i))(y)
        y = L.BatchNormalization(axis=ch_axis, epsilon=1e-3, name="%s_bn%d" % (name, i))(y)
        y = L.PReLU(shared_axes=shared, name="%s_prelu%d" % (name, i))(y)
        y = L.Dropout(0.2, name="%s_drop%d" % (name, i))(y)
    short = L.Conv2D(filters, 1, padding="same", data_format=fmt, name="%s_short" % name)(x)
    return L.Add(name="%s_add" % name)([y, short])


def tiny_unet(fmt, size=(16, 16)):
    """A two-level U-Net with the DOSMA layer vocabulary (REFERENCE section 2)."""
    ch_axis = 1 if fmt == "channels_first" else -1
    shape = (1,) + size if fmt == "channels_first" else size + (1,)
    inp = L.Input(shape, name="input_1")
    e1 = _res_block(inp, 4, fmt, "enc1")
    p1 = L.MaxPooling2D(2, data_format=fmt, name="pool1")(e1)
    e2 = _res_block(p1, 8, fmt, "enc2")
    p2 = L.MaxPooling2D(2, data_format=fmt, name="pool2")(e2)
    b = _res_block(p2, 8, fmt, "bottom")
    u2 = L.Conv2DTranspose(8, 3, strides=2, padding="same", data_format=fmt, name="up2")(b)
    d2 = _res_block(L.Concatenate(axis=ch_axis, name="cat2")([u2, e2]), 8, fmt, "dec2")
    u1 = L.Conv2DTranspose(4, 2, strides=2, padding="same", data_format=fmt, name="up1")(d2)
    d1 = _res_block(L.Concatenate(axis=ch_axis, name="cat1")([u1, e1]), 4, fmt, "dec1")
    logits = L.Conv2D(N_CLASSES, 1, data_format=fmt, name="logits")(d1)
    # deep supervision: 1x1 conv on the coarser decoder level, upsampled, added into the logits
    ds = L.Conv2D(N_CLASSES, 1, data_format=fmt, name="ds_conv")(d2)
    ds = L.UpSampling2D(2, data_format=fmt, name="ds_up")(ds)
    logits = L.Add(name="ds_add")([logits, ds])
    out = L.Softmax(axis=ch_axis, name="softmax")(logits)
    return keras.Model(inp, out, name="tiny_unet_" + fmt)


def padding_zoo(fmt, size=(15, 13)):
    """Odd sizes, even kernels, strides, dilation, output_padding, bilinear upsampling, crop/pad."""
    shape = (1,) + size if fmt == "channels_first" else size + (1,)
    ch_axis = 1 if fmt == "channels_first" else -1
    inp = L.Input(shape, name="input_1")
    a = L.Conv2D(3, 2, padding="same", data_format=fmt, name="c_even")(inp)            # 15x13
    a = L.LeakyReLU(0.1, name="leaky")(a)
    b = L.Conv2D(4, 4, strides=2, padding="same", data_format=fmt, name="c_s2_even")(a)  # 8x7
    b = L.ReLU(max_value=6.0, name="relu6")(b)
    c = L.Conv2D(4, 3, dilation_rate=2, padding="same", data_format=fmt, activation="tanh", name="c_dil")(b)
    d = L.Conv2DTranspose(3, 3, strides=2, padding="valid", data_format=fmt, name="t_valid")(c)  # 17x15
    e = L.Conv2DTranspose(3, 3, strides=2, padding="same", output_padding=1, data_format=fmt,
                          name="t_outpad")(c)                                                  # 16x14
    e = L.BatchNormalization(axis=ch_axis, center=False, name="bn_nocenter")(e)
    f = L.Conv2DTranspose(2, 4, strides=2, padding="same", data_format=fmt, use_bias=False,
                          activation="sigmoid", name="t_even")(c)                               # 16x14
    g = L.MaxPooling2D(3, strides=2, padding="same", data_format=fmt, name="mp_same")(d)       # 9x8
    g = L.UpSampling2D(2, interpolation="bilinear", data_format=fmt, name="up_bilinear")(g)    # 18x16
    g = L.Cropping2D(((1, 1), (1, 1)), data_format=fmt, name="crop")(g)                        # 16x14
    h = L.ZeroPadding2D(((0, 1), (0, 1)), data_format=fmt, name="zpad")(
        L.AveragePooling2D(2, strides=1, padding="valid", data_format=fmt, name="avg")(e))       # 16x14
    m = L.Concatenate(axis=ch_axis, name="cat")([e, f, g, h])
    out = L.Conv2D(N_CLASSES, 1, data_format=fmt, activation="softmax" if fmt == "channels_last" else None,
                   name="head")(m)
    if fmt == "channels_first":
        out = L.Softmax(axis=1, name="softmax")(out)
    return keras.Model(inp, out, name="padding_zoo_" + fmt)


def randomise(model, rng):
    """Non-trivial weights: random kernels, BN statistics, PReLU slopes (seeded)."""
    for layer in model.layers:
        ws = layer.get_weights()
        if not ws:
            continue
        new = []
        for w, var in zip(ws, layer.weights):
            n = var.name
            if "moving_variance" in n:
                new.append(rng.uniform(0.5, 2.0, w.shape).astype(np.float32))
            elif "gamma" in n:
                new.append(rng.uniform(0.5, 1.5, w.shape).astype(np.float32))
            elif "alpha" in n:
                new.append(rng.uniform(0.05, 0.5, w.shape).astype(np.float32))
            elif w.ndim == 4:  # kernels: fan-in scaling keeps activations O(1), so float32 round-off
                # stays ~1e-7 relative and the softmax is not saturated (a meaningful comparison)
                transposed = isinstance(layer, L.Conv2DTranspose)  # kernel (kh, kw, out, in)
                fan_in = int(np.prod(w.shape[:2])) * (w.shape[3] if transposed else w.shape[2])
                new.append((rng.standard_normal(w.shape) / np.sqrt(fan_in)).astype(np.float32))
            else:  # biases, beta, moving_mean
                new.append((rng.standard_normal(w.shape) * 0.2).astype(np.float32))
        layer.set_weights(new)


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240705)
    builders = {
        "unet_channels_first": lambda: tiny_unet("channels_first"),
        "unet_channels_last": lambda: tiny_unet("channels_last"),
        "zoo_channels_first": lambda: padding_zoo("channels_first"),
        "zoo_channels_last": lambda: padding_zoo("channels_last"),
        # non-square input (rows != columns), like the coronal/axial files' 160 x 512: a slice fed
        # transposed cannot give the same labels (Testing/test_dosma.py, frame tests)
        "unet_nonsquare_channels_first": lambda: tiny_unet("channels_first", size=(24, 40)),
    }
    for name, build in builders.items():
        model = build()
        randomise(model, rng)
        shape = (3,) + tuple(model.input_shape[1:])
        x = rng.standard_normal(shape).astype(np.float32)
        y = model.predict(x, verbose=0)
        model.save(str(out / (name + ".h5")), save_format="h5")
        np.savez_compressed(out / (name + ".npz"), x=x, y=y.astype(np.float32))
        print("%-22s in %s out %s  %d params" % (name, x.shape, y.shape, model.count_params()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "Testing" / "fixtures" / "keras")
