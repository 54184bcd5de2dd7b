"""CPU speed-up candidates for nnU-Net ResEnc-M, measured back to back on the same tiles in one process.

    python bench/bench_cpu_speed.py [--threads 2] [--repeats 2] [--compile]

The full-size network (published geometry, ~102 M parameters, seeded random weights) predicts the same
input with each candidate, interleaved (A B C D A B C D ...) so that a machine whose load drifts affects them
alike; the figure per candidate is the median over ``--repeats`` (after a first pass that also builds oneDNN's
primitives; with ``--repeats 0`` that first pass is the figure). Wall seconds and the process's CPU seconds
are both recorded: on a machine shared with other work the CPU seconds are the steadier comparison.

* ``fp32``        -- what nnunetv2 does on a CPU (the reference),
* ``fp32_cl``     -- channels-last 3D memory format (network and input),
* ``bf16``        -- ``torch.autocast("cpu", torch.bfloat16)`` around the network (only where the CPU has
  native bf16: :func:`KneePipelineLib.segmentation.cpu_speed.native_bf16`; elsewhere it is skipped, said so),
* ``bf16_cl``     -- both,
* ``compiled``    -- ``torch.compile`` of the fp32 network (``--compile``; the compile time is recorded apart).

The input is one 56x192x160 patch (one tile: what the sliding window repeats ~80 times per knee at step
0.5). Against fp32 it reports the largest absolute softmax difference and the fraction of voxels whose argmax label differs (random weights: logits are small, so this is
a stringent test of the arithmetic, not of a trained model's margins). Writes bench/results/cpu_speed-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "bench"))

PATCH_ZYX = (56, 192, 160)


def build_network(torch):
    from bench_nnunet import resenc_m_plans
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = resenc_m_plans()["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 1, 10, allow_init=True, deep_supervision=False)
    return net.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--candidates", nargs="+", default=["fp32", "bf16", "fp32_cl", "bf16_cl"])
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. the machine's load)")
    args = ap.parse_args()

    import torch

    from KneePipelineLib.benchinfo import peak_rss_mb, write_result
    from KneePipelineLib.segmentation.cpu_speed import cpu_capability, native_bf16

    torch.set_num_threads(args.threads)
    cands = list(args.candidates) + (["compiled"] if args.compile else [])
    skipped = {}
    if not native_bf16():
        for c in [c for c in cands if c.startswith("bf16")]:
            cands.remove(c)
            skipped[c] = "this CPU has no native bf16 (AVX512-BF16 / AMX): emulated bf16 is slower, not measured"
    net = build_network(torch)
    net_cl = build_network(torch).to(memory_format=torch.channels_last_3d)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0, 1, size=(1, 1) + PATCH_ZYX).astype(np.float32))
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    compiled, compile_s = None, None

    def forward(c):
        nonlocal compiled, compile_s
        with torch.inference_mode():
            if c == "fp32":
                return net(x)
            if c == "fp32_cl":
                return net_cl(x_cl)
            if c == "compiled":
                if compiled is None:
                    t = time.perf_counter()
                    compiled = torch.compile(net)
                    compiled(x)
                    compile_s = time.perf_counter() - t
                return compiled(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return (net if c == "bf16" else net_cl)(x if c == "bf16" else x_cl)

    times = {c: [] for c in cands}
    cpu = {c: [] for c in cands}
    outs = {}
    for r in range(args.repeats + 1):  # pass 0 also builds oneDNN's primitives; it counts only if alone
        for c in cands:
            t0, c0 = time.perf_counter(), time.process_time()
            y = forward(c)
            times[c].append(time.perf_counter() - t0)
            cpu[c].append(time.process_time() - c0)
            if r == 0:
                outs[c] = torch.softmax(y.float(), 1)
            print("pass %d %-8s %.1f s wall, %.1f CPU s" % (r, c, times[c][-1], cpu[c][-1]), flush=True)
    if args.repeats:
        times = {c: v[1:] for c, v in times.items()}
        cpu = {c: v[1:] for c, v in cpu.items()}
    ref = outs["fp32"]
    figures = {"network": "ResEnc-M full size, random weights (seed 0)", "input": "one tile %s" % (PATCH_ZYX,),
               "threads": args.threads, "cpu_capability": cpu_capability(), "native_bf16": native_bf16(),
               "repeats": args.repeats, "load_note": args.note, "skipped": skipped, "candidates": {}}
    for c in cands:
        med, med_cpu = float(np.median(times[c])), float(np.median(cpu[c]))
        d = {"seconds_per_tile_median": round(med, 2), "seconds": [round(t, 2) for t in times[c]],
             "cpu_seconds_per_tile_median": round(med_cpu, 2), "cpu_seconds": [round(t, 2) for t in cpu[c]],
             "speedup_vs_fp32": round(float(np.median(times["fp32"])) / med, 2),
             "cpu_speedup_vs_fp32": round(float(np.median(cpu["fp32"])) / med_cpu, 2)}
        if c != "fp32":
            d["max_abs_softmax_diff"] = float((outs[c] - ref).abs().max())
            d["argmax_differs_fraction"] = float((outs[c].argmax(1) != ref.argmax(1)).float().mean())
        figures["candidates"][c] = d
        print("%-8s median %.2f s/tile (x%.2f), %.2f CPU s/tile (x%.2f)%s" % (
            c, med, d["speedup_vs_fp32"], med_cpu, d["cpu_speedup_vs_fp32"], (
            "  max|dsoftmax| %.2e  argmax differs %.4f%%" % (d["max_abs_softmax_diff"], 100 * d["argmax_differs_fraction"])
            if c != "fp32" else "")))
    if compile_s is not None:
        figures["compile_seconds"] = round(compile_s, 1)
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print("wrote %s" % write_result("cpu_speed", figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
