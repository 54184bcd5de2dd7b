"""Benchmark: `kneepipeline run --image` end to end on a full-size knee image, the time of every step.

    python bench/bench_run_steps.py [--threads 2] [--profile default|fast] [--no-nsm]

The image is a DESS-like synthetic knee (Testing/synthetic_mri.py) made from the real sample label map on
its own full 384×384×160 grid (0.365 × 0.365 × 0.7 mm, oblique direction). Every step runs for real:
input checks, segmentation, morphometry, the NSM fit (bone only) with its meshes, results, the QC report
and the bundle. The segmentation model is the small trained knee nnU-Net of the tests
(Testing/fixtures/nnunet_tiny_knee) and the NSM the small trained one (Testing/fixtures/nsm_small): both
give real labels and a real fit, which random full-size weights would not (a random network labels no
femur, and the later steps have nothing to measure). The full-size networks' own times are measured by
`bench/bench_nnunet.py --full` (ResEnc-M, 101.9 M parameters) and `bench/bench_nsm.py` (the published NSM
size); this script prints them beside the measured steps, from their newest bench/results JSON, and says
which figure came from where.

Prints one line per step (wall and CPU seconds) and writes bench/results/run_steps-<date>.json.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

from KneePipelineLib import labels as L  # noqa: E402
from KneePipelineLib.benchinfo import write_result  # noqa: E402
from KneePipelineLib.io.readers import write_volume  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.pipeline import run  # noqa: E402
from KneePipelineLib.progress import Progress  # noqa: E402
from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data  # noqa: E402

import synthetic_mri as S  # noqa: E402

TINY_NNUNET = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
NSM_SMALL = ROOT / "Testing" / "fixtures" / "nsm_small"


def _newest(pattern: str):
    files = sorted((ROOT / "bench" / "results").glob(pattern))
    if not files:
        return None, None
    return files[-1].name, json.loads(files[-1].read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", default="default", choices=("default", "fast"))
    ap.add_argument("--no-nsm", action="store_true", help="leave out the NSM fit")
    ap.add_argument("--labels", default=None, help="label map to synthesise the image from (default: the sample knee)")
    args = ap.parse_args()

    labels_path = args.labels or str(Path(ensure_sample_data()) / SAMPLE_LABELS)
    sample = S.load_sample_labels(labels_path)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        grid = S.coarse_grid(sample, (1, 1, 1))
        lab = S.variant_labels(sample, grid, S.HELDOUT_RIGHT)
        img = S.synthesize_mri(lab, seed=S.HELDOUT_SEEDS["right"])   # deterministic for the seed
        write_volume(img, tmp / "knee.nii.gz")
        print("image %s voxels, spacing %s mm (made in %.1f s)"
              % ("x".join(map(str, img.array.shape[::-1])), tuple(round(s, 3) for s in img.spacing_mm), time.time() - t0))

        opts = RunOptions(out_dir=str(tmp / "run"), image=str(tmp / "knee.nii.gz"), model="nnunet_fullres",
                          model_dir=str(TINY_NNUNET), device="cpu", threads=args.threads, profile=args.profile,
                          nsm="none" if args.no_nsm else "bone_only", nsm_dir=None if args.no_nsm else str(NSM_SMALL),
                          report=True)
        cpu0 = time.process_time()
        t0 = time.time()
        manifest = run(opts, Progress(sink=lambda e: None), command="run")
        wall = time.time() - t0
        cpu = time.process_time() - cpu0
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        if manifest.status != "complete":
            raise SystemExit("the run did not complete: %s" % manifest.status)
        seg = np.asarray(__import__("SimpleITK").GetArrayFromImage(
            __import__("SimpleITK").ReadImage(str(tmp / "run" / "segmentation.nii.gz"))))
        dice_femcart = S.dice(seg, lab.array, L.FEMORAL_CARTILAGE)

    steps = {name: {"seconds": s.get("seconds"), "status": s.get("status")} for name, s in manifest.steps.items()}
    print("\n%-14s %10s" % ("step", "wall s"))
    for name, s in steps.items():
        print("%-14s %10s" % (name, "%.1f" % s["seconds"] if s["seconds"] is not None else "-"))
    print("%-14s %10.1f   (CPU %.0f s, %d threads, peak RSS %.1f GB; femoral cartilage Dice %.3f)"
          % ("total", wall, cpu, args.threads, peak_gb, dice_femcart or float("nan")))

    full_nn_name, full_nn = _newest("nnunet-full-2*.json")
    nsm_name, nsm = _newest("nsm_steps-*.json")
    print("\nFull-size networks, measured separately (not in this run):")
    print("  nnU-Net ResEnc-M full size: %s" % (full_nn_name or "no bench/results/nnunet-full-*.json yet: run bench/bench_nnunet.py --full"))
    print("  published-size NSM fit:     %s" % (nsm_name or "no bench/results/nsm_steps-*.json yet: run bench/bench_nsm.py"))
    write_result("run_steps", {
        "image_size_xyz": list(img.array.shape[::-1]), "spacing_mm": list(img.spacing_mm),
        "segmentation_model": "Testing/fixtures/nnunet_tiny_knee (small trained nnU-Net v2)",
        "nsm_model": None if args.no_nsm else "Testing/fixtures/nsm_small (bone only)",
        "threads": args.threads, "profile": args.profile, "steps": steps, "total_wall_s": round(wall, 2),
        "total_cpu_s": round(cpu, 2), "peak_rss_gb": round(peak_gb, 2),
        "femoral_cartilage_dice": dice_femcart,
        "full_size_segmentation_from": full_nn_name, "full_size_nsm_from": nsm_name,
    })


if __name__ == "__main__":
    main()
