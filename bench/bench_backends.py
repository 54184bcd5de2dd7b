"""Other inference backends for nnU-Net ResEnc-M on a CPU: one full-size tile, against eager PyTorch fp32.

    python bench/bench_backends.py [--threads 2] [--backends eager onnxruntime openvino compile]

The full-size network (published ResEnc-M geometry, 101.9 M parameters, seeded random weights, as in
``bench_cpu_speed.py``) predicts one 56x192x160 tile (the unit nnU-Net's sliding window repeats: 80 tiles per
384x384x160 knee at step 0.5, 27 with ``--profile fast``) with each backend, one after the other in this
process:

* ``eager``       -- PyTorch fp32, what nnunetv2 runs on a CPU (the reference),
* ``onnxruntime`` -- the network exported with ``torch.onnx.export`` and run by ONNX Runtime's CPU provider
  (``pip install onnxruntime``; export and session creation timed apart),
* ``openvino``    -- ``openvino.convert_model`` of the torch module, compiled for the CPU (``pip install
  openvino``; conversion and compilation timed apart),
* ``compile``     -- ``torch.compile`` (inductor, C++ code generation on the CPU; compile time = the first
  call, recorded apart).

For each: the process's CPU seconds and wall seconds of one tile (after the backend's own preparation), the
preparation's CPU/wall seconds, the largest absolute logit difference against eager fp32, the largest absolute
softmax difference and the fraction of voxels whose argmax label differs. CPU seconds are the figure to compare
on a machine shared with other work; the number of threads is recorded. A backend that cannot be imported or
fails is recorded with its error, not skipped silently. Writes bench/results/backends-<date>.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing"))
sys.path.insert(0, str(ROOT / "bench"))

PATCH_ZYX = (56, 192, 160)
TILES = {"default_step_0.5": 80, "fast_step_1.0": 27}   # 384x384x160 knee, measured in nnunet-full-*.json


class Clock:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c
        return False


def compare(y: np.ndarray, ref: np.ndarray) -> dict:
    def softmax(a):
        e = np.exp(a - a.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return {"max_abs_logit_diff": float(np.abs(y - ref).max()),
            "max_abs_softmax_diff": float(np.abs(softmax(y) - softmax(ref)).max()),
            "argmax_differs_fraction": float((y.argmax(1) != ref.argmax(1)).mean())}


def run_eager(torch, net, x, threads):
    with torch.inference_mode():
        with Clock() as prep:
            net(x[:, :, :16, :64, :64])  # builds oneDNN primitives on a small shape (cheap)
        with Clock() as c:
            y = net(x)
    return y.numpy(), prep, c


def run_onnxruntime(torch, net, x, threads):
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="kp_onnx_")) / "resenc_m.onnx"
    with Clock() as prep:
        with torch.inference_mode():
            try:
                torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17,
                                  dynamo=False)
            except TypeError:  # a torch without the dynamo switch
                torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    with Clock() as c:
        y = sess.run(["y"], {"x": x.numpy()})[0]
    return y, prep, c


def run_openvino(torch, net, x, threads):
    import openvino as ov

    with Clock() as prep:
        with torch.no_grad():
            model = ov.convert_model(net, example_input=x)
        core = ov.Core()
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": "f32"})
    with Clock() as c:
        y = compiled([x.numpy()])[compiled.output(0)]
    return np.asarray(y), prep, c


def run_compile(torch, net, x, threads):
    compiled = torch.compile(net)
    with torch.inference_mode():
        with Clock() as prep:
            compiled(x)  # the compile happens at the first call
        with Clock() as c:
            y = compiled(x)
    return y.numpy(), prep, c


RUNNERS = {"eager": run_eager, "onnxruntime": run_onnxruntime, "openvino": run_openvino, "compile": run_compile}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    ap.add_argument("--note", default="", help="recorded with the figures (e.g. the machine's load)")
    ap.add_argument("--patch", type=int, nargs=3, default=list(PATCH_ZYX),
                    help="tile z y x (default: the published 56 192 160); small values make a smoke test")
    ap.add_argument("--no-write", action="store_true", help="print only (smoke tests)")
    args = ap.parse_args(argv)

    import torch

    from KneePipelineLib.benchinfo import peak_rss_mb, write_result
    from KneePipelineLib.segmentation.cpu_speed import cpu_capability, cpu_flags, native_bf16
    from bench_cpu_speed import build_network

    torch.set_num_threads(args.threads)
    net = build_network(torch)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0, 1, size=(1, 1) + tuple(args.patch)).astype(np.float32))
    backends = ["eager"] + [b for b in args.backends if b != "eager"]
    figures = {"network": "nnU-Net ResEnc-M full size, random weights (seed 0), 101.9 M parameters",
               "input": "one tile %s" % (tuple(args.patch),), "threads": args.threads, "torch": torch.__version__,
               "cpu_capability": cpu_capability(), "native_bf16": native_bf16(),
               "cpu_flags_avx512": sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx"))),
               "tiles_per_knee": TILES, "load_note": args.note, "backends": {}}
    ref = None
    for b in backends:
        rec = {}
        try:
            y, prep, c = RUNNERS[b](torch, net, x, args.threads)
            rec.update({"cpu_seconds_per_tile": round(c.cpu, 2), "wall_seconds_per_tile": round(c.wall, 2),
                        "prepare_cpu_seconds": round(prep.cpu, 2), "prepare_wall_seconds": round(prep.wall, 2)})
            if ref is None:
                ref = y
            else:
                rec.update(compare(y, ref))
                rec["cpu_speedup_vs_eager"] = round(figures["backends"]["eager"]["cpu_seconds_per_tile"] / c.cpu, 3)
            for name, n in TILES.items():
                rec["knee_cpu_seconds_%s" % name] = round(n * c.cpu, 0)
            try:
                import importlib.metadata as md

                rec["version"] = md.version({"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(b, "torch"))
            except Exception:  # noqa: BLE001 - informational
                pass
        except Exception as exc:  # noqa: BLE001 - a backend that fails is a result, recorded
            rec["error"] = "%s: %s" % (type(exc).__name__, str(exc)[:500])
            rec["traceback_tail"] = traceback.format_exc()[-1500:]
        figures["backends"][b] = rec
        print("%-12s %s" % (b, {k: v for k, v in rec.items() if k != "traceback_tail"}), flush=True)
    figures["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if not args.no_write:
        print("wrote %s" % write_result("backends", figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
