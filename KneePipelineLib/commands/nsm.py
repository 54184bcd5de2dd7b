"""``kneepipeline nsm``: fit the neural shape model to a femur, write nsm.json, the meshes and the B-score."""
from __future__ import annotations

import json
from pathlib import Path

NAME = "nsm"
HELP = "fit the femur neural shape model (NSM) to a femur mesh and compute the B-score"
DESCRIPTION = (HELP + ". Writes nsm.json (strict JSON: latent, bscore, transform, ASSD, iterations, seconds) and "
               "nsm_<object>.vtp meshes in patient mm (LPS).")
USAGE = "(--labels LABELS | --femur FEMUR.vtk [--cartilage CART.vtk]) --nsm-dir DIR --out DIR [options]"
EXAMPLES = [
    "kneepipeline nsm --labels knee_labels.nii.gz --nsm-dir models/nsm_bone_cartilage --out nsm/knee01",
    "kneepipeline nsm --femur femur.vtk --laterality right --nsm-dir models/nsm_bone_only --bscore-dir "
    "models/bscore_bone_only --mesh-resolution 0 --out nsm/knee01",
    "kneepipeline nsm --femur femur.vtk --laterality right --nsm-dir models/nsm_bone_only --no-bscore --out nsm/knee01",
]


def add_arguments(p) -> None:
    from ._common import INPUT, LIMITS, NSM, OUTPUT, group

    g = group(p, INPUT)
    g.add_argument("--femur", metavar="FEMUR", help="femur surface mesh (.vtk/.vtp, LPS mm)")
    g.add_argument("--cartilage", metavar="CART", help="femoral cartilage mesh (needed by bone+cartilage models)")
    g.add_argument("--labels", metavar="LABELS", help="label map to mesh the femur and its cartilage from")
    g.add_argument("--label-convention", default="dosma", help="dosma | nnunet | pymskt | FILE.json (default dosma)")
    g = group(p, NSM)
    g.add_argument("--nsm-dir", required=True, metavar="DIR", help="NSM folder (model_params_config.json, model/)")
    g.add_argument("--bscore-dir", metavar="DIR",
                   help="B-score model folder (model.json); default: the registry's B-score model of this NSM "
                        "(bone+cartilage or bone only), from the model cache or downloaded once, sha256-checked")
    g.add_argument("--no-bscore", action="store_true", help="fit only: no B-score (nothing to download)")
    g.add_argument("--offline", action="store_true", help="never download the B-score model (the cache only)")
    group(p, INPUT).add_argument("--laterality", choices=["right", "left", "auto"], default="auto",
                   help="knee side; auto needs --labels (default %(default)s)")
    group(p, OUTPUT).add_argument("--out", required=True, metavar="DIR", help="output folder")
    g.add_argument("--seed", type=int, default=0, help="seeds the draw of points when fewer than all are used")
    g.add_argument("--n-seeds", type=int, default=1, help="average the latents of this many seeded fits")
    g.add_argument("--iterations", type=int, help="fit steps (default: the config's num_iterations_recon)")
    g.add_argument("--samples", type=int, help="points per step, split across the surfaces (default: the config's "
                                              "n_samples_latent_recon; every vertex when that covers them)")
    g.add_argument("--patience", type=int, help="stop once more than N steps pass without improvement "
                                               "(default: the config's convergence_patience_recon)")
    group(p, OUTPUT).add_argument("--mesh-resolution", type=int, default=256,
                   help="fine grid size over [-1,1]^3 (coarse-to-fine narrow band; 0 = latent only, no meshes)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    group(p, LIMITS).add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fit arithmetic: fp32 (published, default) or bf16 (about 2x faster on CPUs with "
                        "AVX512_BF16/AMX; the fitted latent differs slightly)")


def meshes_from_labels(labels_path, convention: str):
    """(femur, femoral cartilage, laterality) meshes from a label map, via the morphometry code."""
    import dataclasses

    import numpy as np

    from .. import labels as L
    from ..io import read_labels
    from ..morphometry.mesh import mesh_from_mask

    vol = read_labels(labels_path)
    arr = L.remap(vol.array, L.load_convention(convention), convention)
    L.require(arr, [L.FEMUR], "the shape model")
    geo = dataclasses.replace(vol, array=arr)
    femur = mesh_from_mask(arr == L.FEMUR, geo, 0.5)
    cart = mesh_from_mask(arr == L.FEMORAL_CARTILAGE, geo, 0.3125) if np.any(arr == L.FEMORAL_CARTILAGE) else None
    try:
        side = L.detect_laterality(geo).side
    except Exception:  # noqa: BLE001 - laterality is only needed for 'auto'
        side = None
    return femur, cart, side


def reconstructed_thickness(bone_pd, cartilage_pd):
    """Cartilage thickness (mm, NaN = miss) on the reconstructed femur, with the morphometry ray caster."""
    from ..morphometry.raycast import thickness_on_surface

    thickness, _ = thickness_on_surface(bone_pd, cartilage_pd)
    return thickness


def main(args, progress) -> int:
    import numpy as np

    from .. import __version__
    from ..errors import ConfigurationError, ModelMissingError, OutputUnwritableError
    from ..morphometry.mesh import read_mesh, set_point_array, write_mesh
    from ..shape import load_nsm
    from ..shape.bscore import bscore

    from ..steps.nsm import load_bscore_for, nsm_id_for

    progress.set_steps([("load", 1), ("fit", 20), ("write", 1)])
    progress.hello(NAME, __version__)
    if args.threads:
        import torch
        torch.set_num_threads(int(args.threads))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise OutputUnwritableError("%s exists and is not a folder." % out)
    progress.step("load", 0.0, "reading inputs")
    side = None
    cart = None
    if args.labels:
        femur, cart, side = meshes_from_labels(args.labels, args.label_convention)
    elif args.femur:
        femur = read_mesh(args.femur)
    else:
        raise ConfigurationError("Give --femur FEMUR.vtk or --labels LABELS.")
    if args.cartilage:
        cart = read_mesh(args.cartilage)
    laterality = args.laterality
    if laterality == "auto":
        if side is None:
            raise ConfigurationError("--laterality auto needs --labels (to tell left from right).",
                                     hint="Give --laterality right or left for a mesh input.")
        laterality = side
    model = load_nsm(args.nsm_dir, device=args.device)
    from ..shape.memory import check_fit_memory

    check_fit_memory(model, femur, cart, args.samples, args.mesh_resolution, args.precision,
                     what="The NSM fit")   # before the B-score download and before anything is written
    bmodel = None
    if not args.no_bscore:   # the pipeline's own resolution (steps.nsm), before anything is written
        try:
            bmodel = load_bscore_for(nsm_id_for(model), model, args.bscore_dir, args.offline,
                                     progress=lambda f, m="": progress.step("load", 0.5 * float(f), m),
                                     warn=progress.warning)
        except ModelMissingError as exc:
            raise ModelMissingError(exc.message, hint=exc.hint + " Or pass --bscore-dir DIR (a folder holding "
                                    "model.json), or --no-bscore to fit without a B-score.") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritableError("Cannot create %s: %s" % (out, exc))
    progress.step("load", 1.0, "model loaded")
    fit = model.fit(femur, cart if model.arch.n_objects >= 2 else None, laterality=laterality, seed=args.seed,
                    iterations=args.iterations, samples=args.samples, patience=args.patience, n_seeds=args.n_seeds,
                    progress=progress.sub("fit"), mesh_resolution=args.mesh_resolution, warn=progress.warning,
                    precision=args.precision)
    progress.step("write", 0.0, "writing")
    result = fit.to_json()
    result["model_dir"] = str(args.nsm_dir)
    result["object_names"] = list(model.object_names)
    result["bscore"] = bscore(fit.latent, bmodel) if bmodel else None
    if bmodel:
        from ..hub import provenance
        from ..registry import get_model

        prov = provenance(get_model(get_model(nsm_id_for(model)).config["bscore"]), bmodel.path.parent,
                          files=[bmodel.path])
        result["bscore_model"] = {"path": str(bmodel.path), "sha256": bmodel.sha256, "registry_id": bmodel.registry_id,
                                  "source": prov["source"], "revision": prov["revision"], "verified": prov["verified"]}
    names = model.object_names
    if len(names) >= 2 and fit.meshes:
        th = reconstructed_thickness(fit.meshes[names[0]], fit.meshes[names[1]])
        set_point_array(fit.meshes[names[0]], "thickness_mm", th)
        ok = np.isfinite(th)
        result["reconstructed_thickness_mm"] = {"mean": float(np.mean(th[ok])) if ok.any() else None,
                                                "coverage": float(ok.mean())}
    files = {}
    for name, pd in fit.meshes.items():
        files[name] = str(write_mesh(pd, out / ("nsm_%s.vtp" % name)).name)
    result["meshes"] = files
    from ..io.writers import atomic_write_text

    atomic_write_text(out / "nsm.json", json.dumps(result, indent=2, allow_nan=False))
    progress.step("write", 1.0, "done")
    progress.result(out_dir=str(out), manifest=None)
    progress.outcome = dict(progress.outcome or {}, nsm=result)
    progress.say("\nkneepipeline nsm: %s fit of the %s femur%s\nFiles in %s: nsm.json%s" % (
        ", ".join(model.object_names), laterality,
        "; B-score %.2f" % result["bscore"] if result.get("bscore") is not None else "",
        out.resolve(), "".join(", " + f for f in files.values())))
    return 0
