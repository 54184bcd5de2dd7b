"""Throughput of a DOSMA-style 2D U-Net (512x512, channels-first) run by our Keras-h5 executor on PyTorch.

The graph is built in code in the Keras 2 config format (no TensorFlow) with the published layer
vocabulary (REFERENCE section 2): residual blocks of Conv2D + BatchNormalization(axis=1) +
PReLU(shared_axes=[2, 3]) + Dropout joined by Add, MaxPooling2D, Conv2DTranspose, Concatenate(axis=1),
deep-supervision 1x1 conv + UpSampling2D added into the logits, Softmax(axis=1), 10 classes. Depth: 5
levels (4 poolings), filters 64..1024 -- about 36 M parameters (~145 MB of float32), near the 165 MB coronal /
axial files (the 324 MB sagittal file is ~2x wider). Weights are random.

    python bench/bench_keras_unet.py [--size 512] [--base 64] [--batches 1 4 8] [--repeats 1]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from KneePipelineLib.benchinfo import machine_info, peak_rss_mb, write_result  # noqa: E402
from KneePipelineLib.segmentation.keras_h5 import build_keras_graph, layer_config, model_config  # noqa: E402

CF = "channels_first"


def unet_config(size=512, base=32, levels=5, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    layers, weights = [], {}

    def conv(name, src, cin, cout, k=3):
        layers.append(layer_config("Conv2D", name, [src], filters=cout, kernel_size=[k, k], strides=[1, 1],
                                   padding="same", data_format=CF, dilation_rate=[1, 1], groups=1,
                                   activation="linear", use_bias=True))
        weights[name] = {"kernel": (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32),
                         "bias": np.zeros(cout, np.float32)}
        return name

    def block(name, src, cin, cout):
        y, c = src, cin
        for i in range(2):
            y = conv("%s_c%d" % (name, i), y, c, cout)
            bn = "%s_bn%d" % (name, i)
            layers.append(layer_config("BatchNormalization", bn, [y], axis=1, epsilon=1e-3, center=True, scale=True))
            weights[bn] = {"gamma": np.ones(cout, np.float32), "beta": np.zeros(cout, np.float32),
                           "moving_mean": np.zeros(cout, np.float32), "moving_variance": np.ones(cout, np.float32)}
            pr = "%s_pr%d" % (name, i)
            layers.append(layer_config("PReLU", pr, [bn], shared_axes=[2, 3]))
            weights[pr] = {"alpha": np.full((cout, 1, 1), 0.25, np.float32)}
            dr = "%s_do%d" % (name, i)
            layers.append(layer_config("Dropout", dr, [pr], rate=0.2))
            y, c = dr, cout
        sc = conv(name + "_sc", src, cin, cout, 1)
        layers.append(layer_config("Add", name + "_add", [y, sc]))
        return name + "_add"

    layers.append(layer_config("InputLayer", "input_1", [], batch_input_shape=[None, 1, size, size], dtype="float32"))
    x, cin, skips = "input_1", 1, []
    filters = [base * 2 ** i for i in range(levels)]
    for lv, f in enumerate(filters):
        x = block("enc%d" % lv, x, cin, f)
        cin = f
        if lv < levels - 1:
            skips.append((x, f))
            layers.append(layer_config("MaxPooling2D", "pool%d" % lv, [x], pool_size=[2, 2], strides=[2, 2],
                                       padding="valid", data_format=CF))
            x = "pool%d" % lv
    ds_outputs = []
    for lv in range(levels - 2, -1, -1):
        skip, f = skips[lv]
        up = "up%d" % lv
        layers.append(layer_config("Conv2DTranspose", up, [x], filters=f, kernel_size=[3, 3], strides=[2, 2],
                                   padding="same", data_format=CF, dilation_rate=[1, 1], groups=1,
                                   activation="linear", use_bias=True, output_padding=None))
        weights[up] = {"kernel": (rng.standard_normal((3, 3, f, cin)) / np.sqrt(9 * cin)).astype(np.float32),
                       "bias": np.zeros(f, np.float32)}
        layers.append(layer_config("Concatenate", "cat%d" % lv, [up, skip], axis=1))
        x = block("dec%d" % lv, "cat%d" % lv, 2 * f, f)
        cin = f
        if 0 < lv <= 2:  # deep supervision from the two decoder levels above full resolution
            ds = conv("ds%d" % lv, x, f, n_classes, 1)
            layers.append(layer_config("UpSampling2D", "dsup%d" % lv, [ds], size=[2 ** lv, 2 ** lv],
                                       data_format=CF, interpolation="nearest"))
            ds_outputs.append("dsup%d" % lv)
    logits = conv("logits", x, cin, n_classes, 1)
    layers.append(layer_config("Add", "ds_add", [logits] + ds_outputs))
    layers.append(layer_config("Softmax", "softmax", ["ds_add"], axis=1))
    return model_config(layers, ["input_1"], ["softmax"], name="dosma_like_unet"), weights


def time_batches(net, device, size, batches, repeats):
    import torch

    rows = []
    for n, b in enumerate(batches):
        x = torch.randn(b, 1, size, size, device=device)
        with torch.inference_mode():
            if n == 0 or device.type == "cuda":
                net(x)  # warm-up (once on CPU: a 512x512 batch of 8 takes minutes there)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                net(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / repeats
        rows.append({"device": device.type, "batch": b, "seconds_per_batch": round(dt, 4),
                     "slices_per_second": round(b / dt, 3), "seconds_per_160_slices": round(160 * dt / b, 1)})
        print("%-4s batch %2d: %8.3f s/batch  %7.2f slices/s  (%.0f s for a 160-slice knee)"
              % (device.type, b, dt, b / dt, 160 * dt / b), flush=True)
    return rows


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--levels", type=int, default=5)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, w = unet_config(args.size, args.base, args.levels)
    n_params = sum(int(a.size) for d in w.values() for a in d.values())
    net = build_keras_graph(cfg, w, "bench").eval()
    print("DOSMA-like U-Net: %d layers, %.1f M parameters, input 1x%dx%d; torch %s, %d threads"
          % (len(cfg["config"]["layers"]), n_params / 1e6, args.size, args.size, torch.__version__,
             torch.get_num_threads()), flush=True)
    rows = time_batches(net, torch.device("cpu"), args.size, args.batches, args.repeats)
    if torch.cuda.is_available():
        rows += time_batches(net.to("cuda"), torch.device("cuda"), args.size, args.batches + [16, 32], 5)
    figures = {"size": args.size, "base_filters": args.base, "levels": args.levels, "parameters": n_params,
               "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    write_result("keras_unet", figures)
    return figures


if __name__ == "__main__":
    main()
