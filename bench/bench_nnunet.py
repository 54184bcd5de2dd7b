"""Benchmark: nnU-Net ResEnc-M (published geometry, random weights) through our backend vs nnunetv2 directly.

    python bench/bench_nnunet.py [--quick] [--device cpu|cuda] [--steps 0.5 1.0] [--threads N]
    python bench/bench_nnunet.py --full [--profiles default fast] [--threads 2] [--limit-s 3600]

The network is the published one (6 stages, features 32-64-128-256-320-320, residual blocks 1-3-4-6-6-6,
patch 56x192x160, spacing 0.8x0.3125x0.3125 mm, 10 classes; ~102 M parameters) with random weights. The
full run segments a 384x384x160 volume at 0.36x0.36x0.7 mm (~80 tiles at step 0.5: many minutes on a CPU);
--quick uses 160x160x64 (2 tiles). TTA is off. Each measurement runs in its own process so peak RSS is
per configuration. "direct" is nnUNetPredictor + initialize_from_trained_model_folder +
predict_single_npy_array (what a user would write); "ours" is KneePipeline's predict_nnunet with
post-processing off (post-processing is timed separately) and fp32 like nnunetv2 on a CPU
(``KNEEPIPELINE_CPU_BF16=0``); on a CPU with native bf16 "ours-bf16" adds our default there (bf16 autocast).
Writes bench/results/nnunet-<date>.json.

``--full`` measures what a user waits for: ``kneepipeline segment`` (a fresh process, as a user runs it) on a
real-size synthetic knee (the pymskt sample label map, 384x384x160 at 0.36x0.36x0.7 mm with its oblique
direction, turned into a DESS-like image by Testing/synthetic_mri.py) with the full-size network, once per
``--profiles`` entry, on ``--threads`` threads. It records wall time, the tiles, the time of every tile (from
the JSON progress lines) with the CPU seconds the process had used by then (robust to other load on
the machine, unlike wall time), and the child's peak RSS (VmHWM polled every second). A run that passes
``--limit-s`` is stopped and recorded as unfinished with the tiles it completed: no figure is extrapolated.
Writes bench/results/nnunet-full-<date>.json (also after each profile, so a killed bench keeps its figures).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))

FULL_SHAPE_IJK = (384, 384, 160)
QUICK_SHAPE_IJK = (160, 160, 64)
SPACING_MM = (0.36, 0.36, 0.7)


def resenc_m_plans() -> dict:
    from nnunet_fixtures import plans_json

    plans = plans_json(fullres_spacing=(0.8, 0.3125, 0.3125))
    conf = plans["configurations"]["3d_fullres"]
    conf["patch_size"] = [56, 192, 160]
    conf["median_image_size_in_voxels"] = [160, 512, 510]
    arch = conf["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
        "kernel_sizes": [[1, 3, 3]] + [[3, 3, 3]] * 5,
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": [1, 1, 1, 1, 1],
    })
    plans["original_median_spacing_after_transp"] = [0.8, 0.3125, 0.3125]
    return plans


def build_model(folder: Path) -> Path:
    from nnunet_fixtures import build_results_folder

    return build_results_folder(folder, ("3d_fullres",), folds=(1,), plans=resenc_m_plans())


def make_image(shape_ijk, seed=0):
    from KneePipelineLib.io.volume import Volume

    rng = np.random.default_rng(seed)
    arr = rng.normal(300, 80, size=shape_ijk[::-1]).astype(np.float32)
    return Volume(arr, SPACING_MM, (0.0, 0.0, 0.0), np.eye(3))


def child(args) -> int:
    """One measurement in this process: prints a JSON line."""
    import torch

    from KneePipelineLib.benchinfo import peak_rss_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.model_root)
    folder = root / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    image = make_image(QUICK_SHAPE_IJK if args.quick else FULL_SHAPE_IJK)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    extra = {}
    if args.mode == "direct":
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        pred = nnUNetPredictor(tile_step_size=args.step, use_mirroring=False, device=torch.device(args.device),
                               perform_everything_on_device=args.device == "cuda", allow_tqdm=False)
        pred.initialize_from_trained_model_folder(str(folder), use_folds=(1,), checkpoint_name="checkpoint_best.pth")
        seg = pred.predict_single_npy_array(image.array[None].astype(np.float32),
                                            {"spacing": [float(s) for s in image.spacing_mm[::-1]]}, None, None, False)
        labels = np.asarray(seg)
    else:
        from KneePipelineLib.options import RunOptions
        from KneePipelineLib.registry import get_model
        from KneePipelineLib.segmentation.nnunet import predict_nnunet
        from KneePipelineLib.segmentation.postprocess import postprocess

        opts = RunOptions(out_dir="x", image="x", device=args.device, step_size=args.step, tta=False,
                          postprocess=False, model_dir=str(root), threads=args.threads)
        res = predict_nnunet(image, get_model("nnunet_fullres"), root, opts)
        labels = res.labels.array
        extra["tiles"] = res.model["tiles"]
        tp = time.perf_counter()
        postprocess(labels)
        extra["postprocess_s"] = round(time.perf_counter() - tp, 3)
    seconds = time.perf_counter() - t0 - extra.get("postprocess_s", 0.0)
    out = {"mode": args.mode, "step": args.step, "seconds": round(seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
           "rss_before_mb": round(rss0, 1), "labels_sha": hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest(), **extra}
    if args.device == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    print("RESULT " + json.dumps(out))
    return 0


def _peak_rss_of(pid: int) -> float:
    try:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _cpu_seconds_of(pid: int) -> float:
    """user + system CPU time of a running process (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def full_segment_run(root: Path, image_path: Path, out_dir: Path, profile: str, threads: int, device: str,
                     limit_s: float, log) -> dict:
    """One ``kneepipeline segment`` process; tile times from its JSON progress lines."""
    import re
    import threading

    cmd = [sys.executable, "-m", "KneePipelineLib", "--progress", "json", "segment", "--image", str(image_path),
           "--out", str(out_dir), "--model", "nnunet_fullres", "--model-dir", str(root), "--device", device,
           "--threads", str(threads), "--offline"] + (["--profile", profile] if profile != "default" else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    peak = [0.0]
    stop = threading.Event()

    def poll():
        while not stop.wait(1.0):
            peak[0] = max(peak[0], _peak_rss_of(proc.pid))

    def killer():
        if not stop.wait(limit_s):
            proc.kill()

    stderr_tail = []
    threading.Thread(target=poll, daemon=True).start()
    threading.Thread(target=killer, daemon=True).start()
    threading.Thread(target=lambda: stderr_tail.extend(proc.stderr.read().splitlines()[-30:]), daemon=True).start()
    tile_times, tile_cpu, total_tiles, model = [], [], None, None
    pat = re.compile(r"tile (\d+) of (\d+)")
    for line in proc.stdout:
        now = time.perf_counter() - t0
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        m = pat.search(str(msg.get("message", "")))
        if m and int(m.group(1)) > len(tile_times):
            tile_times.append(round(now, 1))
            tile_cpu.append(round(_cpu_seconds_of(proc.pid), 1))
            total_tiles = int(m.group(2))
            log("  %s: tile %s of %s at %.0f s" % (profile, m.group(1), m.group(2), now))
    cpu_at_end = _cpu_seconds_of(proc.pid)  # before wait() reaps it
    rc = proc.wait()
    stop.set()
    wall = time.perf_counter() - t0
    info = out_dir / "segmentation.json"
    if rc == 0 and info.is_file():
        model = json.loads(info.read_text())["model"]
    out = {"profile": profile, "threads": threads, "device": device, "finished": rc == 0, "exit_code": rc,
           "wall_seconds": round(wall, 1), "tiles_done": len(tile_times), "tiles_total": total_tiles,
           "tile_done_at_s": tile_times, "tile_done_at_cpu_s": tile_cpu,
           "cpu_seconds_at_end": round(cpu_at_end, 1), "peak_rss_mb": round(peak[0], 1)}
    if len(tile_times) >= 2:  # CPU seconds per tile do not depend on how loaded the machine is (wall does)
        out["seconds_per_tile_median"] = round(float(np.median(np.diff(tile_times))), 2)
        out["cpu_seconds_per_tile_median"] = round(float(np.median(np.diff(tile_cpu))), 2)
    if model is not None:
        out.update({"model_seconds": model.get("seconds"), "tiles": model.get("tiles"),
                    "step_size": model.get("step_size"), "precision": model.get("precision")})
    elif rc != 0:
        out["stopped"] = "killed at the %.0f s limit" % limit_s if wall >= limit_s - 1 else "failed"
        out["stderr_tail"] = stderr_tail
    return out


def full(args) -> int:
    import synthetic_mri as S
    from KneePipelineLib.benchinfo import write_result
    from KneePipelineLib.io.readers import write_volume
    from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data

    shared = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data" / SAMPLE_LABELS
    labels_path = shared if shared.is_file() else Path(ensure_sample_data()) / SAMPLE_LABELS
    threads = args.threads or 2
    figures = {"what": "kneepipeline segment, nnunet_fullres = ResEnc-M (published geometry, random weights), "
                       "real-size synthetic knee", "threads": threads, "device": args.device, "runs": [],
               "load_note": args.note}

    def log(text):
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-nnunet-full-") as tmp:
        t0 = time.perf_counter()
        root = build_model(Path(tmp) / "model")
        sample = S.load_sample_labels(labels_path)
        image = S.synthesize_mri(sample, seed=90_003)
        image_path = Path(tmp) / "knee_fullsize.nii.gz"
        write_volume(image, image_path)
        figures.update({"volume_ijk": list(image.shape_ijk), "spacing_mm": [round(float(s), 4) for s in image.spacing_mm]})
        log("model and %s image ready in %.0f s" % ("x".join(map(str, image.shape_ijk)), time.perf_counter() - t0))
        path = None
        for profile in args.profiles:
            r = full_segment_run(root, image_path, Path(tmp) / ("out-" + profile), profile, threads, args.device,
                                 args.limit_s, log)
            figures["runs"].append(r)
            log("%s: %s" % (profile, json.dumps({k: v for k, v in r.items() if k != "tile_done_at_s"})))
            if path is not None:
                path.unlink()
            path = write_result("nnunet-full", figures)
            log("wrote %s" % path)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="160x160x64 volume instead of 384x384x160")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    ap.add_argument("--steps", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--full", action="store_true", help="kneepipeline segment on a real-size knee (see above)")
    ap.add_argument("--profiles", nargs="+", default=["default"], help="--full: segmentation profiles to run")
    ap.add_argument("--limit-s", type=float, default=3600.0, help="--full: stop a run after this many seconds")
    ap.add_argument("--note", default="", help="--full: recorded with the figures (e.g. the machine's load)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--step", type=float, default=0.5, help=argparse.SUPPRESS)
    ap.add_argument("--model-root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.full:
        return full(args)

    import torch

    from KneePipelineLib.benchinfo import write_result

    with tempfile.TemporaryDirectory(prefix="bench-nnunet-") as tmp:
        t0 = time.perf_counter()
        root = build_model(Path(tmp))
        ck = root / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres" / "fold_1" / "checkpoint_best.pth"
        sd = torch.load(ck, map_location="cpu", weights_only=False)["network_weights"]
        unique = {v.data_ptr(): v for v in sd.values() if v.dtype.is_floating_point}  # decoder.encoder.* is shared
        n_params = int(sum(v.numel() for v in unique.values()))
        print("ResEnc-M: %.1f M parameters, checkpoint %.0f MB (built in %.0f s)"
              % (n_params / 1e6, ck.stat().st_size / 1e6, time.perf_counter() - t0))
        shape = QUICK_SHAPE_IJK if args.quick else FULL_SHAPE_IJK
        runs = []
        for step in args.steps:
            from KneePipelineLib.segmentation.cpu_speed import native_bf16

            modes = ("direct", "ours") + (("ours-bf16",) if args.device == "cpu" and native_bf16() else ())
            for mode in modes:
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--step", str(step), "--model-root",
                       str(root), "--device", args.device] + (["--quick"] if args.quick else []) + \
                      (["--threads", str(args.threads)] if args.threads else [])
                env = dict(os.environ, KNEEPIPELINE_CPU_BF16="1" if mode == "ours-bf16" else "0")
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
                if proc.returncode or not line:
                    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                    raise SystemExit("child failed: %s" % " ".join(cmd))
                r = json.loads(line[0][7:])
                runs.append(r)
                print("step %.2f %-6s %8.2f s  peak RSS %7.0f MB%s" % (
                    step, mode, r["seconds"], r["peak_rss_mb"],
                    ("  tiles %s, post-processing %.2f s" % (r["tiles"], r["postprocess_s"])) if mode != "direct" else ""))
        figures = {"volume_ijk": list(shape), "spacing_mm": list(SPACING_MM), "device": args.device,
                   "threads": args.threads or torch.get_num_threads(), "tta": False, "parameters": n_params,
                   "runs": runs}
        for step in args.steps:
            d = next(r for r in runs if r["mode"] == "direct" and r["step"] == step)
            o = next(r for r in runs if r["mode"] == "ours" and r["step"] == step)
            figures["overhead_pct_step_%s" % step] = round(100.0 * (o["seconds"] - d["seconds"]) / d["seconds"], 2)
            figures["identical_labels_step_%s" % step] = d["labels_sha"] == o["labels_sha"]
            print("step %.2f: our overhead %+.1f %% (labels identical: %s)" % (
                step, figures["overhead_pct_step_%s" % step], figures["identical_labels_step_%s" % step]))
            b = next((r for r in runs if r["mode"] == "ours-bf16" and r["step"] == step), None)
            if b is not None:
                figures["bf16_speedup_step_%s" % step] = round(o["seconds"] / b["seconds"], 2)
                print("step %.2f: bf16 autocast x%.2f vs fp32" % (step, figures["bf16_speedup_step_%s" % step]))
        write_result("nnunet" + ("-quick" if args.quick else ""), figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
