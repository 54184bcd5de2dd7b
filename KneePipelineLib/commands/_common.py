"""Argument groups shared by `run`, `analyze`, `segment` and `batch`, all mapped onto RunOptions.

Options are grouped the same way in every command's ``--help``: input, segmentation model, meshes, T2,
shape model (NSM), output, limits (:data:`GROUP_ORDER`; the CLI sorts the groups into that order).
"""
from __future__ import annotations

import argparse

from ..options import CHECKPOINTS, DEVICE_CHOICES, MESH_FORMATS, NSM_CHOICES, NSM_PRECISIONS, PROFILES, RunOptions

INPUT, MODEL, MESHES, T2, NSM, OUTPUT, LIMITS = (
    "input", "segmentation model", "meshes", "T2", "shape model (NSM)", "output", "limits")
GROUP_ORDER = (INPUT, MODEL, MESHES, T2, NSM, OUTPUT, LIMITS)


def group(p: argparse.ArgumentParser, title: str):
    """The parser's argument group ``title`` (created on first use)."""
    for g in p._action_groups:
        if g.title == title:
            return g
    return p.add_argument_group(title)


def add_image_arg(p: argparse.ArgumentParser, required: bool = False) -> None:
    group(p, INPUT).add_argument("--image", required=required,
                                 help="knee MRI: NIfTI, NRRD, DICOM folder/file or zip")


def add_labels_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = group(p, INPUT)
    g.add_argument("--labels", required=required, help="existing label map (NIfTI/NRRD/DICOM); skips segmentation")
    g.add_argument("--label-convention", default="dosma", metavar="NAME|FILE.json",
                   help="label numbering of --labels: dosma (= nnU-Net), pymskt, canonical (our own outputs, with fibula 10), or a JSON file {value: tissue}")


def add_mesh_args(p: argparse.ArgumentParser) -> None:
    d = RunOptions()
    g = group(p, MESHES)
    g.add_argument("--bone-smooth-var-mm2", type=float, default=d.bone_smooth_var_mm2, metavar="MM2",
                   help="Gaussian variance (mm^2) before contouring bones (default %(default)s)")
    g.add_argument("--cartilage-smooth-var-mm2", type=float, default=d.cartilage_smooth_var_mm2, metavar="MM2",
                   help="Gaussian variance (mm^2) before contouring cartilage (default %(default)s)")
    g.add_argument("--mesh-format", choices=MESH_FORMATS, default="vtp", help="binary VTP (default) or legacy VTK")


def add_model_args(p: argparse.ArgumentParser) -> None:
    d = RunOptions()
    g = group(p, MODEL)
    g.add_argument("--model", default=d.model, metavar="ID", help="model id from `kneepipeline models` (default %(default)s)")
    g.add_argument("--model-dir", metavar="DIR", help="use a local copy of the model instead of downloading it")
    g.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    group(p, LIMITS).add_argument("--threads", type=int, metavar="N", help="CPU threads for inference (at least 1)")
    g.add_argument("--folds", type=int, nargs="+", help="nnU-Net folds (default: the model's published folds)")
    g.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    g.add_argument("--tta", action="store_true", help="test-time mirroring (slower, slightly better)")
    g.add_argument("--step-size", type=float, default=d.step_size, metavar="FRACTION", help="sliding-window tile step (0-1]")
    g.add_argument("--profile", choices=PROFILES, default=d.profile,
                   help="fast: nnU-Net tile step 1.0 (2-3x fewer tiles; loses accuracy where tile seams cross "
                        "a structure, see docs/SPEED.md); default: step --step-size")
    g.add_argument("--batch-size", type=int, metavar="N", help="2D U-Nets: slices per batch (default 4 on CPU, 16 on GPU)")
    g.add_argument("--no-postprocess", dest="postprocess", action="store_false",
                   help="keep every connected component and bone holes")
    g.add_argument("--no-cpu-fallback", dest="cpu_fallback", action="store_false",
                   help="fail instead of retrying on the CPU after a GPU out-of-memory error")
    g.add_argument("--offline", action="store_true", help="never contact the Hugging Face hub")


def add_t2_args(p: argparse.ArgumentParser) -> None:
    g = group(p, T2)
    g.add_argument("--echoes", nargs="+", metavar="PATH", help="multi-echo series (DICOM folder/zip, 4D volume or one file per echo)")
    g.add_argument("--echo-times-ms", type=float, nargs="+", metavar="MS", help="echo times when the files do not carry them")
    g.add_argument("--keep-first-echo", dest="t2_drop_first_echo", action="store_false",
                   help="fit all echoes (default drops the first, stimulated-echo contaminated)")
    g.add_argument("--qdess-param", dest="qdess_params", action="append", type=_step_limit, metavar="KEY=VALUE",
                   help="qDESS sequence parameter overriding the DICOM header (repeatable): tr_ms, te_ms, "
                        "flip_deg, tg_us, gl_area, t1_ms, diffusivity_m2_s")
    g.add_argument("--t2-stats-range-ms", type=float, nargs=2, metavar=("LO", "HI"),
                   default=list(RunOptions().t2_stats_range_ms),
                   help="regional T2 statistics use only LO < T2 < HI ms (default 0 80, as the reference)")


def add_nsm_args(p: argparse.ArgumentParser) -> None:
    d = RunOptions()
    g = group(p, NSM)
    g.add_argument("--nsm", choices=NSM_CHOICES, default="none")
    g.add_argument("--nsm-dir", metavar="DIR", help="local NSM model folder (model_params_config.json + model/<epoch>.pth)")
    g.add_argument("--bscore-dir", metavar="DIR", help="B-score model folder (model.json)")
    g.add_argument("--nsm-iterations", type=int, default=d.nsm_iterations, metavar="N",
                   help="fit iterations (default: the model config's num_iterations_recon, 2000 when absent)")
    g.add_argument("--nsm-samples", type=int, default=d.nsm_samples, metavar="N",
                   help="surface points per iteration, split across the surfaces (default: the model config's "
                        "n_samples_latent_recon, 20000 when absent; every vertex when that covers them)")
    g.add_argument("--nsm-patience", type=int, default=d.nsm_patience, metavar="N",
                   help="stop once more than N iterations pass without improvement (default: the model "
                        "config's convergence_patience_recon, 50 when absent)")
    g.add_argument("--nsm-mesh-resolution", type=int, default=d.nsm_mesh_resolution, metavar="N",
                   help="NSM mesh grid over [-1,1]^3, coarse-to-fine narrow band; 0 = latent only "
                        "(default %(default)s)")
    g.add_argument("--nsm-precision", choices=NSM_PRECISIONS, default=d.nsm_precision,
                   help="NSM fit arithmetic: fp32 (published, default) or bf16 (about 2x faster on CPUs with "
                        "AVX512_BF16/AMX; the fitted latent differs slightly)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed of the fit (default %(default)s)")


def add_run_control_args(p: argparse.ArgumentParser) -> None:
    g = group(p, OUTPUT)
    g.add_argument("--out", required=True, metavar="DIR", help="output (run) folder")
    g.add_argument("--no-report", dest="report", action="store_false", help="skip the QC report")
    g.add_argument("--resume", action="store_true",
                   help="reuse earlier work in --out: skip a complete run with the same options; otherwise reuse "
                        "its segmentation when the image and model options are unchanged")
    g = group(p, LIMITS)
    g.add_argument("--timeout", dest="timeout_s", type=float, metavar="SECONDS", help="whole-run time limit in seconds")
    g.add_argument("--step-timeout", dest="step_timeouts_s", action="append", type=_step_limit, metavar="STEP=SECONDS",
                   help="time limit of one step (repeatable), e.g. --step-timeout segmentation=900")


def _step_limit(text: str):
    step, sep, seconds = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return step.strip(), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError("expected STEP=SECONDS, got %r" % text)


def options_from_args(args: argparse.Namespace, **overrides) -> RunOptions:
    names = set(RunOptions.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in names}
    for key in ("step_timeouts_s", "qdess_params"):
        if isinstance(values.get(key), list):
            values[key] = dict(values[key])
    values["out_dir"] = args.out
    values.update(overrides)
    return RunOptions(**values)
