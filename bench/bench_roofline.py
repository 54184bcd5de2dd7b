"""Roofline of nnU-Net ResEnc-M on a CPU: can a knee take <= 5 minutes on 2 cores with the default tiling?

    python bench/bench_roofline.py [--threads 2] [--tile-cpu-seconds S] [--backends-json FILE]

* FLOPs of one full-size tile (56x192x160) counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
  meta device (no arithmetic is run), times the tiles of a 384x384x160 knee at the default step 0.5 (80) and
  with ``--profile fast`` (step 1.0: 27), both as measured by ``bench_nnunet.py --full``.
* This CPU's achieved convolution throughput: 3-D convolutions of ResEnc-M's shapes (stage widths 32-320,
  kernel 3x3x3 or 1x3x3) in fp32 (contiguous and channels-last 3-D) and in bf16 (the real bf16 kernel,
  emulated where the CPU has no native bf16: measured on a smaller input), in GFLOP per CPU second.
* The whole network's achieved throughput: FLOPs per tile / measured CPU seconds per tile (``--tile-cpu-seconds``
  or the eager figure of a ``bench_backends.py`` JSON), and the same for the figures recorded on the
  native-bf16 development machine (bench/results/nnunet-full-*.json: fp32 23.7 and bf16 12.5 CPU s per tile).
* The verdict: the CPU seconds a knee needs at that throughput, against 2 cores x 300 s = 600 CPU seconds.

Writes bench/results/roofline-<date>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "bench"))

PATCH_ZYX = (56, 192, 160)
TILES = {"default_step_0.5": 80, "fast_step_1.0": 27}
BUDGET_CPU_S = 2 * 300.0          # <= 5 min on 2 cores
# per-tile CPU seconds measured through `kneepipeline segment` on the native-bf16 (AVX512-BF16) development
# machine, median over the run's tiles (bench/results/nnunet-full-20261207-222021.json fp32,
# nnunet-full-20261207-215818.json bf16)
RECORDED = {"avx512_bf16 machine, fp32": 23.7, "avx512_bf16 machine, bf16 autocast": 12.5}
# (c_in, c_out, kernel, spatial zyx) of ResEnc-M's stages at full tile size
LAYERS = [(32, 32, (1, 3, 3), (56, 192, 160)), (64, 64, (3, 3, 3), (56, 96, 80)),
          (128, 128, (3, 3, 3), (28, 48, 40)), (320, 320, (3, 3, 3), (7, 12, 10))]


def tile_gflop(torch) -> tuple:
    from torch.utils.flop_counter import FlopCounterMode

    from bench_cpu_speed import build_network

    net = build_network(torch).to("meta")
    fc = FlopCounterMode(display=False)
    with torch.no_grad(), fc:
        net(torch.empty((1, 1) + PATCH_ZYX, device="meta"))
    return fc.get_total_flops() / 1e9, sum(p.numel() for p in net.parameters())


def conv_rate(torch, cin, cout, k, zyx, dtype, channels_last, min_cpu_s=1.0):
    import torch.nn.functional as F

    x = torch.randn((1, cin) + tuple(zyx)).to(dtype)
    w = (torch.randn((cout, cin) + tuple(k)) * 0.05).to(dtype)
    if channels_last:
        x, w = x.contiguous(memory_format=torch.channels_last_3d), w.contiguous(memory_format=torch.channels_last_3d)
    pad = tuple(kk // 2 for kk in k)
    flop = 2.0 * cin * cout * (k[0] * k[1] * k[2]) * zyx[0] * zyx[1] * zyx[2]
    with torch.inference_mode():
        F.conv3d(x, w, None, 1, pad)  # builds the primitive
        n, c0 = 0, time.process_time()
        while True:
            F.conv3d(x, w, None, 1, pad)
            n += 1
            cpu = time.process_time() - c0
            if cpu >= min_cpu_s or n >= 20:
                break
    return flop * n / cpu / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile-cpu-seconds", type=float, default=None, help="eager fp32 CPU s per tile on this CPU")
    ap.add_argument("--backends-json", default=None, help="take it from a bench_backends.py result")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.segmentation.cpu_speed import cpu_capability, native_bf16

    torch.set_num_threads(args.threads)
    gflop, n_params = tile_gflop(torch)
    layers = []
    for cin, cout, k, zyx in LAYERS:
        row = {"c_in": cin, "c_out": cout, "kernel": list(k), "zyx": list(zyx)}
        row["fp32_gflop_per_cpu_s"] = round(conv_rate(torch, cin, cout, k, zyx, torch.float32, False), 1)
        row["fp32_channels_last_gflop_per_cpu_s"] = round(conv_rate(torch, cin, cout, k, zyx, torch.float32, True), 1)
        small = zyx if native_bf16() else tuple(max(4, s // 4) for s in zyx)   # emulated bf16 is ~100x slower
        row["bf16_zyx"] = list(small)
        row["bf16_gflop_per_cpu_s"] = round(conv_rate(torch, cin, cout, k, small, torch.bfloat16, False, 0.5), 2)
        layers.append(row)
        print(row, flush=True)
    tile = {}
    if args.backends_json:
        d = json.loads(Path(args.backends_json).read_text())
        tile["this CPU, fp32 (eager)"] = d["figures"]["backends"]["eager"]["cpu_seconds_per_tile"]
        for b in ("openvino", "onnxruntime", "compile"):
            rec = d["figures"]["backends"].get(b, {})
            if "cpu_seconds_per_tile" in rec:
                tile["this CPU, fp32 (%s)" % b] = rec["cpu_seconds_per_tile"]
    if args.tile_cpu_seconds:
        tile["this CPU, fp32 (eager)"] = args.tile_cpu_seconds
    tile.update(RECORDED)
    verdict = {}
    for name, s in tile.items():
        verdict[name] = {"cpu_seconds_per_tile": s, "network_gflop_per_cpu_s": round(gflop / s, 1)}
        for prof, n in TILES.items():
            verdict[name]["knee_cpu_seconds_%s" % prof] = round(n * s, 0)
            verdict[name]["knee_minutes_2_idle_cores_%s" % prof] = round(n * s / 2 / 60, 1)
            verdict[name]["within_5_min_%s" % prof] = n * s <= BUDGET_CPU_S
    need = {prof: round(n * gflop / BUDGET_CPU_S, 1) for prof, n in TILES.items()}
    figures = {"network": "nnU-Net ResEnc-M, published geometry (%.1f M parameters)" % (n_params / 1e6),
               "tile_zyx": list(PATCH_ZYX), "gflop_per_tile": round(gflop, 1), "tiles_per_knee": TILES,
               "knee_tflop": {p: round(n * gflop / 1e3, 1) for p, n in TILES.items()},
               "gflop_per_cpu_s_needed_for_5_min_on_2_cores": need, "threads": args.threads,
               "torch": torch.__version__, "cpu_capability": cpu_capability(), "native_bf16": native_bf16(),
               "conv3d_layers": layers, "whole_network": verdict}
    print(json.dumps({k: v for k, v in figures.items() if k != "conv3d_layers"}, indent=1))
    if not args.no_write:
        print("wrote %s" % write_result("roofline", figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
