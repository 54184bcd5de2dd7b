"""The fast profile's and bf16's cost in Dice, and their time, with the tiny trained knee nnU-Net.

    python bench/bench_fast_profile.py [--threads 1] [--side right]

Segments the whole held-out synthetic knee (``synthetic_mri.heldout_case``: 192x192x80 voxels at 0.73x0.73x1.4
mm, never seen in training) with ``Testing/fixtures/nnunet_tiny_knee`` four ways, back to back in one process:
profile default / fast x fp32 / bf16 autocast (``KNEEPIPELINE_CPU_BF16``). Records per-structure Dice against
the true labels, Dice against default-fp32, tiles, wall seconds and the process's CPU seconds for each (CPU
seconds are the steadier comparison on a shared machine). A first, unrecorded run warms the libraries up.
Writes bench/results/fast_profile-<date>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

MODEL_DIR = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
CONFIGS = (("default", "fp32"), ("fast", "fp32"), ("default", "bf16"), ("fast", "bf16"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--side", default="right", choices=("right", "left"))
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. the machine's load)")
    args = ap.parse_args()

    import numpy as np
    import torch

    import synthetic_mri as S
    from KneePipelineLib import labels as L
    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data
    from KneePipelineLib.segmentation import segment
    from KneePipelineLib.segmentation.cpu_speed import ENV_BF16, native_bf16

    torch.set_num_threads(args.threads)
    shared = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data" / SAMPLE_LABELS
    labels_path = shared if shared.is_file() else Path(ensure_sample_data()) / SAMPLE_LABELS
    img, lab = S.heldout_case(S.load_sample_labels(labels_path), args.side)
    truth = np.where(lab.array == L.FIBULA, 0, lab.array)
    present = [t for t in range(1, 10) if int((truth == t).sum()) > 0]

    def run(profile, precision):
        os.environ[ENV_BF16] = "1" if precision == "bf16" else "0"
        t0, c0 = time.perf_counter(), time.process_time()
        res = segment(img, RunOptions(out_dir="x", image="x", device="cpu", threads=args.threads, profile=profile,
                                      model_dir=str(MODEL_DIR)), None)
        return res, time.perf_counter() - t0, time.process_time() - c0

    run("fast", "fp32")  # warm-up
    segs, figures = {}, {"image_ijk": list(img.shape_ijk), "side": args.side, "threads": args.threads,
                         "native_bf16": native_bf16(), "load_note": args.note, "runs": {}}
    for profile, precision in CONFIGS:
        res, wall, cpu = run(profile, precision)
        key = "%s_%s" % (profile, precision)
        segs[key] = seg = res.labels.array
        figures["runs"][key] = {
            "tiles": res.model["tiles"], "step_size": res.model["step_size"], "precision": res.model["precision"],
            "seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "dice_vs_truth": {L.TISSUES[t]: round(S.dice(seg, truth, t) or 0.0, 4) for t in present},
            "dice_vs_default_fp32": {L.TISSUES[t]: round(S.dice(seg, segs["default_fp32"], t) or 0.0, 4)
                                     for t in present if S.dice(seg, segs["default_fp32"], t) is not None}}
        r = figures["runs"][key]
        print("%-13s tiles %-5s %6.1f s wall %6.1f CPU s  Dice vs truth %s" % (
            key, r["tiles"], wall, cpu, " ".join("%.3f" % v for v in r["dice_vs_truth"].values())), flush=True)
    base = figures["runs"]["default_fp32"]["dice_vs_truth"]
    for key, r in figures["runs"].items():
        r["dice_change_vs_default_fp32"] = {k: round(r["dice_vs_truth"][k] - base[k], 4) for k in base}
        print("%-13s worst Dice change vs default fp32: %+.4f (%s); agreement min %.4f" % (
            key, min(r["dice_change_vs_default_fp32"].values()),
            min(r["dice_change_vs_default_fp32"], key=r["dice_change_vs_default_fp32"].get),
            min(r["dice_vs_default_fp32"].values())))
    write_result("fast_profile", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
