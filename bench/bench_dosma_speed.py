"""CPU speed of the DOSMA 2D U-Net path at the real slice size (512x512), candidate by candidate.

    python bench/bench_dosma_speed.py [--base 64] [--slices 4] [--batch 2] [--threads 2]
                                      [--candidates unfolded folded folded_cl] [--lib DIR] [--label NAME]

The network is ``bench_keras_unet.unet_config`` (the DOSMA-style Keras graph: residual blocks of Conv2D +
BatchNormalization + PReLU, Conv2DTranspose, deep supervision, softmax; channels-first, random weights) run by
our Keras-h5 executor, as :func:`KneePipelineLib.segmentation.dosma.predict_slices` runs it. ``--base 64`` is
36 M parameters (the size of the 165 MB coronal/axial files), ``--base 96`` 81 M (the 324 MB sagittal file if
it holds no optimiser state). The published files' exact layer lists are not available here: the figures are
per slice for this graph, plus its FLOPs, so any other graph can be scaled by its own FLOP count.

Candidates (fp32 unless named):

* ``unfolded``  -- every BatchNormalization as its own multiply-add (the loader before folding),
* ``folded``    -- BatchNormalization folded into the convolution before it (``keras2torch/fold.py``),
* ``folded_cl`` -- folded, and the slices in channels-last memory order (oneDNN's native 2-D layout),
* ``bf16``      -- folded + channels-last under ``torch.autocast("cpu", torch.bfloat16)``: measured only
  where the CPU has native bf16 (``cpu_speed.native_bf16``) or with ``--force-bf16``; elsewhere skipped with
  the reason (emulated bf16 convolutions run ~100x slower than fp32 on an AVX2-only CPU, measured).

Timed: the process's CPU seconds (and wall seconds) over ``--slices`` slices in batches of ``--batch``,
with ``--threads`` torch threads; the per-slice figure is extrapolated by count to a 160-slice knee.
Against the first candidate: the largest absolute softmax difference and the fraction of pixels whose argmax
label differs. ``--lib DIR`` imports KneePipelineLib from DIR (e.g. an export of an older commit, to measure
"before"). Writes bench/results/dosma_speed-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KNEE_SLICES = 160


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--base", type=int, default=64)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--candidates", nargs="+", default=["unfolded", "folded", "folded_cl", "bf16"])
    ap.add_argument("--force-bf16", action="store_true")
    ap.add_argument("--lib", default=None, help="import KneePipelineLib from this folder")
    ap.add_argument("--label", default="", help="recorded with the figures (e.g. 'HEAD before folding')")
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. the machine's load)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(Path(args.lib).resolve() if args.lib else ROOT))

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import KneePipelineLib
    from KneePipelineLib.benchinfo import peak_rss_mb, write_result
    from KneePipelineLib.segmentation import keras_h5
    from KneePipelineLib.segmentation.cpu_speed import cpu_capability, native_bf16
    from bench_keras_unet import unet_config

    torch.set_num_threads(args.threads)
    cfg, w = unet_config(args.size, args.base, 5)
    n_params = sum(int(a.size) for d in w.values() for a in d.values())
    can_fold = "fold_batchnorm" in keras_h5.build_keras_graph.__code__.co_varnames

    def build(fold: bool):
        if can_fold:
            return keras_h5.build_keras_graph(cfg, w, "bench", fold_batchnorm=fold).eval()
        if fold:
            raise RuntimeError("this KneePipelineLib has no BatchNormalization folding")
        return keras_h5.build_keras_graph(cfg, w, "bench").eval()

    fc = FlopCounterMode(display=False)
    with torch.inference_mode(), fc:
        build(False)(torch.zeros(1, 1, 64, 64))
    gflop_per_slice = fc.get_total_flops() * (args.size / 64) ** 2 / 1e9   # convolutions scale with pixels

    rng = np.random.default_rng(0)
    x_all = torch.from_numpy(rng.normal(0, 1, size=(args.slices, 1, args.size, args.size)).astype(np.float32))
    figures = {"network": "DOSMA-style 2D U-Net (bench_keras_unet), random weights", "size": args.size,
               "base_filters": args.base, "parameters": n_params, "gflop_per_slice": round(gflop_per_slice, 1),
               "slices_timed": args.slices, "batch": args.batch, "threads": args.threads,
               "torch": torch.__version__, "cpu_capability": cpu_capability(), "native_bf16": native_bf16(),
               "lib": str(Path(KneePipelineLib.__file__).parent), "label": args.label, "load_note": args.note,
               "extrapolation": "per-slice CPU seconds x %d slices (a 384x384x160 knee's sagittal slices)"
                                % KNEE_SLICES, "candidates": {}, "skipped": {}}
    ref = None
    for cand in args.candidates:
        if cand == "bf16" and not (native_bf16() or args.force_bf16):
            figures["skipped"][cand] = ("no native bf16 on this CPU (AVX512-BF16/AMX): emulated bf16 convolutions "
                                        "measured ~100x slower than fp32 here, not timed at 512x512")
            print("skipped %s: %s" % (cand, figures["skipped"][cand]), flush=True)
            continue
        net = build(cand != "unfolded")
        cl = cand in ("folded_cl", "bf16")
        if cl:  # as dosma.predict_slices does: kernels channels-last, so the feature maps become channels-last
            net = net.to(memory_format=torch.channels_last)
        probs = []
        c0, t0 = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            for s in range(0, args.slices, args.batch):
                x = x_all[s:s + args.batch]
                if cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                if cand == "bf16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        y = net(x)
                else:
                    y = net(x)
                probs.append(y.float().contiguous())
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        p = torch.cat(probs)
        rec = {"cpu_seconds_per_slice": round(cpu / args.slices, 3), "wall_seconds_per_slice": round(wall / args.slices, 3),
               "gflop_per_cpu_second": round(gflop_per_slice * args.slices / cpu, 1),
               "knee_cpu_seconds": round(KNEE_SLICES * cpu / args.slices, 0),
               "knee_minutes_on_2_idle_cores": round(KNEE_SLICES * cpu / args.slices / 2 / 60, 2)}
        if ref is None:
            ref = p
        else:
            rec["max_abs_softmax_diff"] = float((p - ref).abs().max())
            rec["argmax_differs_fraction"] = float((p.argmax(1) != ref.argmax(1)).float().mean())
        figures["candidates"][cand] = rec
        print("%-10s %s" % (cand, rec), flush=True)
        del net
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("wrote %s" % write_result("dosma_speed", figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
