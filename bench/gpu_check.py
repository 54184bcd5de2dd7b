"""GPU check in one go (<= 8 minutes on one GPU): what a CUDA machine does with the published model sizes.

    .venv/bin/python bench/gpu_check.py [--device cuda] [--parts nnunet,oom,nsm,jobs] [--tiny]

Parts (each in its own process with its own time limit, so one failure or hang does not lose the others;
the figures go into ONE JSON under bench/results/ with the date and the machine):

* ``nnunet`` — nnU-Net ResEnc-M full-res (the published architecture and plans geometry, random weights) on a
  full-size 384x384x160 knee at 0.36x0.36x0.7 mm through our backend, TTA off, step 0.5: wall time (model
  load + prediction, then a second, warm prediction, then ``--profile fast``), tiles, tiles/s, peak GPU memory.
* ``oom`` — an out-of-memory on purpose: ``torch.cuda.set_per_process_memory_fraction`` leaves the process
  ~200 MB of GPU memory, then the same network predicts a small knee (a) with the CPU fallback on: the run
  must finish on the CPU and say so, (b) with ``--no-cpu-fallback``: the run must fail with the
  ``gpu_out_of_memory`` error, its message and hint (recorded).
* ``nsm`` — the full-size NSM (published architecture, 20.8 M parameters, random weights) fitted to a real
  femur for 200 steps in fp32 and in bf16 (early stopping off): seconds for the fit and its meshes (resolution
  256), ASSD, peak GPU memory.
* ``jobs`` — 12 consecutive ``run --image`` jobs in one process (the tiny trained knee nnU-Net on the held-out
  synthetic knee, so it measures the pipeline, not the network): per-job seconds and the CUDA memory still
  allocated after each job; flat = growth from job 2 to job 12 below 1 MB.

Limits: 150 + 90 + 100 + 140 s, and no part gets more than what is left of 480 s. The full-size ResEnc-M is
built once and shared by the nnunet and oom parts.

``--tiny`` replaces the published sizes with small stand-ins (tiny nnU-Net, small NSM for 10 steps, 1 job on
a crop of the held-out knee, two parts at a time) so the whole script can be exercised on a CPU in seconds
(Testing/test_gpu_check.py does that); the CUDA-only part (oom) reports ``skipped`` with the reason when the
device is not CUDA. Nothing here is mocked.
"""
from __future__ import annotations

import argparse
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
sys.path.insert(0, str(ROOT / "bench"))

# Per-part limits; together <= 8 minutes, and a part never gets more than what is left of TOTAL_LIMIT_S.
PART_LIMITS_S = {"nnunet": 150, "oom": 90, "nsm": 100, "jobs": 140}
TOTAL_LIMIT_S = 480
TINY_PART_LIMIT_S = 300   # --tiny on a CPU: seconds of work each, but a shared CPU can stretch them a lot
TINY_MODEL = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
SMALL_NSM = ROOT / "Testing" / "fixtures" / "nsm_small"


def _cuda_stats(torch, dev) -> dict:
    if dev.type != "cuda":
        return {}
    return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated(dev) / 2 ** 20, 1),
            "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved(dev) / 2 ** 20, 1)}


def _sync(torch, dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _nnunet_root(work: Path, tiny: bool) -> Path:
    """The tiny fixture, or the full-size ResEnc-M built once into ``work`` (shared by the nnunet/oom parts)."""
    if tiny:
        return TINY_MODEL / "models" / "Dataset500_KneeMRI"
    from bench_nnunet import build_model

    done = work / "resenc_m.done"
    if done.is_file():
        return Path(done.read_text().strip())
    root = build_model(work / "resenc_m")
    done.write_text(str(root))
    return root


def _knee_image(tiny: bool, quick: bool):
    from bench_nnunet import FULL_SHAPE_IJK, QUICK_SHAPE_IJK, make_image

    if tiny:
        return make_image((48, 48, 24))
    return make_image(QUICK_SHAPE_IJK if quick else FULL_SHAPE_IJK)


def part_nnunet(args, torch, dev) -> dict:
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.registry import get_model
    from KneePipelineLib.segmentation.nnunet import predict_nnunet

    root = _nnunet_root(Path(args.work), args.tiny)
    image = _knee_image(args.tiny, False)
    out = {"volume_ijk": list(image.shape_ijk), "spacing_mm": [float(s) for s in image.spacing_mm]}
    for run_name, profile in (("cold", "default"), ("warm", "default"), ("fast", "fast")):
        opts = RunOptions(out_dir="x", image="x", device=dev.type, profile=profile, tta=False, postprocess=False,
                          model_dir=str(root))
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(torch, dev)
        t0 = time.perf_counter()
        res = predict_nnunet(image, get_model("nnunet_fullres"), root, opts)
        _sync(torch, dev)
        sec = time.perf_counter() - t0
        tiles = int(sum(res.model.get("tiles") or []))  # one count per stage
        out[run_name] = dict({"seconds": round(sec, 3), "tiles": tiles, "precision": res.model.get("precision"),
                              "profile": profile, "step_size": res.model.get("step_size"),
                              "tiles_per_s": round(tiles / sec, 2) if tiles else None,
                              "device": res.model.get("device")}, **_cuda_stats(torch, dev))
    return out


def part_oom(args, torch, dev) -> dict:
    if dev.type != "cuda":
        return {"skipped": "needs a CUDA device (set_per_process_memory_fraction is CUDA-only)"}
    from KneePipelineLib.errors import GpuOutOfMemoryError
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.registry import get_model
    from KneePipelineLib.segmentation.nnunet import predict_nnunet

    total = torch.cuda.get_device_properties(dev).total_memory
    allowed_mb = 200.0
    torch.cuda.set_per_process_memory_fraction(allowed_mb * 2 ** 20 / total, dev)
    out = {"allowed_gpu_mb": allowed_mb}
    root = _nnunet_root(Path(args.work), args.tiny)
    image = _knee_image(args.tiny, True)
    base = dict(out_dir="x", image="x", device="cuda", step_size=1.0, tta=False, postprocess=False,
                model_dir=str(root), threads=os.cpu_count())
    t0 = time.perf_counter()
    res = predict_nnunet(image, get_model("nnunet_fullres"), root, RunOptions(cpu_fallback=True, **base))
    out["fallback"] = {"seconds": round(time.perf_counter() - t0, 2), "device": res.model.get("device"),
                       "warnings": list(res.model.get("warnings") or []),
                       "ok": str(res.model.get("device")) == "cpu"}
    try:
        predict_nnunet(image, get_model("nnunet_fullres"), root, RunOptions(cpu_fallback=False, **base))
        out["no_fallback"] = {"ok": False, "note": "no out-of-memory error was raised"}
    except GpuOutOfMemoryError as exc:
        out["no_fallback"] = {"ok": True, "category": exc.category, "message": exc.message, "hint": exc.hint,
                              "exit_code": exc.exit_code}
    return out


def _femur_meshes():
    from KneePipelineLib.sample_data import ensure_sample_data

    shared = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data" / "pymskt" / "femur_meshes"
    folder = shared if shared.is_dir() else None
    if folder is None:
        found = sorted(Path(ensure_sample_data()).rglob("*femur*.vtk"))
        folder = found[0].parent if found else None
    if folder is None:
        raise SystemExit("no real femur mesh found (../shared/data or the sample-data cache)")
    files = sorted(p for p in folder.iterdir() if p.suffix in (".vtk", ".vtp") and "cart" not in p.name.lower())
    bone = files[0]
    carts = sorted(p for p in folder.iterdir() if "cart" in p.name.lower())
    return bone, (carts[0] if carts else None)


def part_nsm(args, torch, dev) -> dict:
    from KneePipelineLib.morphometry.mesh import read_mesh
    from KneePipelineLib.shape import load_nsm

    with tempfile.TemporaryDirectory(prefix="gpu-check-nsm-") as tmp:
        if args.tiny:
            model_dir = SMALL_NSM
        else:
            from KneePipelineLib.shape.decoder import NsmArchitecture, build_decoder
            from KneePipelineLib.shape.model import save_nsm

            torch.manual_seed(0)
            dec = build_decoder(NsmArchitecture(512, 2, (512,) * 5, 2, 128, (512,) * 3))
            model_dir = Path(tmp) / "nsm_full"
            save_nsm(dec, model_dir, epoch=2000)
            del dec
        bone_path, cart_path = _femur_meshes()
        bone, cart = read_mesh(bone_path), (read_mesh(cart_path) if cart_path else None)
        steps = 10 if args.tiny else 200
        out = {"model": "small fixture" if args.tiny else "published architecture, random weights",
               "femur": bone_path.name, "steps": steps}
        for prec in ("fp32", "bf16"):
            model = load_nsm(model_dir, device=dev.type)
            out["parameters"] = int(sum(p.numel() for p in model.decoder.parameters()))
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            _sync(torch, dev)
            t0 = time.perf_counter()
            fit = model.fit(bone, cart if model.arch.n_objects >= 2 else None, laterality="right", seed=0,
                            iterations=steps, patience=10 ** 6, precision=prec, mesh_resolution=32 if args.tiny else 256)
            _sync(torch, dev)
            sec = time.perf_counter() - t0
            rep = fit.to_json()
            out[prec] = dict({"seconds_fit_and_mesh": round(sec, 2), "iterations_run": rep.get("iterations"),
                              "assd_mm": {k: round(float(v), 3) for k, v in fit.assd_mm.items()},
                              "device": fit.device}, **_cuda_stats(torch, dev))
            del model, fit
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        return out


def part_jobs(args, torch, dev) -> dict:
    from KneePipelineLib.io.readers import write_volume
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.pipeline import run

    import synthetic_mri as S
    from KneePipelineLib.sample_data import SAMPLE_LABELS, ensure_sample_data

    shared = Path(os.environ.get("KNEEPIPELINE_SHARED", ROOT.parent / "shared")) / "data" / "pymskt" / SAMPLE_LABELS.split("/")[-1]
    labels_path = shared if shared.is_file() else Path(ensure_sample_data()) / SAMPLE_LABELS
    n_jobs = 1 if args.tiny else 12
    allocated, seconds = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-check-jobs-") as tmp:
        if args.tiny:  # a crop of the held-out knee: 3 tiny-model tiles, seconds on a CPU
            from heldout_crop import heldout_crop

            img, _ = heldout_crop(S.load_sample_labels(labels_path), "right")
        else:
            img, _ = S.heldout_case(S.load_sample_labels(labels_path), "right")
        image_path = Path(tmp) / "knee.nii.gz"
        write_volume(img, image_path)
        for j in range(n_jobs):
            t0 = time.perf_counter()
            run(RunOptions(out_dir=str(Path(tmp) / ("job%02d" % j)), image=str(image_path), model="nnunet_fullres",
                           model_dir=str(TINY_MODEL), device=dev.type, report=False))
            seconds.append(round(time.perf_counter() - t0, 2))
            allocated.append(round(torch.cuda.memory_allocated(dev) / 2 ** 20, 2) if dev.type == "cuda" else 0.0)
    growth = allocated[-1] - allocated[min(1, len(allocated) - 1)]
    return {"jobs": n_jobs, "seconds": seconds, "cuda_allocated_after_job_mb": allocated,
            "growth_job2_to_last_mb": round(growth, 2), "flat": abs(growth) < 1.0}


PARTS = {"nnunet": part_nnunet, "oom": part_oom, "nsm": part_nsm, "jobs": part_jobs}


def child(args) -> int:
    import torch

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("RESULT " + json.dumps({"skipped": "no CUDA device"}))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = PARTS[args.child](args, torch, dev)
    out.setdefault("part_seconds", round(time.perf_counter() - t0, 2))
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_seconds"] = round(r.ru_utime + r.ru_stime, 1)  # the whole process; steadier than wall when shared
    print("RESULT " + json.dumps(out, default=str))
    return 0


def run_part(part: str, args, work: str, limit_s: float) -> dict:
    """One part in its own process (its own CUDA context and memory), stopped after ``limit_s``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", part, "--device", args.device, "--work", work] + \
          (["--tiny"] if args.tiny else []) + (["--threads", str(args.threads)] if args.threads else [])
    if part == "oom" and args.device != "cuda":  # decided here: no process (and no torch import) needed
        return {"skipped": "needs a CUDA device (set_per_process_memory_fraction is CUDA-only)"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode == 0 and line:
            res = json.loads(line[-1][7:])
        else:
            res = {"failed": "exit %d" % proc.returncode, "stderr_tail": proc.stderr[-2000:]}
    except subprocess.TimeoutExpired:
        res = {"failed": "exceeded its %d s limit" % limit_s}
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def environment(torch_device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "requested_device": torch_device}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update({"gpu": p.name, "gpu_memory_mb": round(p.total_memory / 2 ** 20), "cuda": torch.version.cuda,
                     "bf16_supported": bool(torch.cuda.is_bf16_supported())})
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu", "mps"))
    ap.add_argument("--parts", default="nnunet,oom,nsm,jobs")
    ap.add_argument("--tiny", action="store_true", help="small stand-ins (exercise the script on a CPU)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; no bench/results file")
    ap.add_argument("--results-dir", default=None, help="write the JSON here instead of bench/results/")
    ap.add_argument("--child", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error("unknown part(s): %s (choose from %s)" % (", ".join(unknown), ", ".join(PARTS)))
    figures = {"environment": environment(args.device), "tiny": args.tiny, "parts": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        if args.tiny:  # small stand-ins on a CPU: the parts are independent, run two at a time
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {p: pool.submit(run_part, p, args, work, TINY_PART_LIMIT_S) for p in parts}
                for part in parts:
                    figures["parts"][part] = res = futures[part].result()
                    print("%-7s %s" % (part, json.dumps(res, default=str)[:600]), flush=True)
        else:  # one at a time: each part has the GPU (and its memory figures) to itself
            for part in parts:
                limit = max(1.0, min(PART_LIMITS_S[part], TOTAL_LIMIT_S - (time.perf_counter() - t_all)))
                figures["parts"][part] = res = run_part(part, args, work, limit)
                print("%-7s %s" % (part, json.dumps(res, default=str)[:600]), flush=True)
    figures["total_seconds"] = round(time.perf_counter() - t_all, 1)
    print("total %.0f s" % figures["total_seconds"])
    if not args.no_write:
        from KneePipelineLib.benchinfo import write_result

        write_result("gpu_check" + ("-tiny" if args.tiny else ""), figures, out_dir=args.results_dir)  # prints the path
    failed = [p for p, r in figures["parts"].items() if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
