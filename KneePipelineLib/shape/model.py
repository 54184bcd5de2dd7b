"""The public NSM object: load a published-format model folder, evaluate SDFs, fit a femur, extract meshes.

Model folder::

    model_params_config.json      architecture keys (see decoder.REQUIRED_KEYS / OPTIONAL_KEYS)
    model/<epoch>.pth             torch.save({"epoch", "model": state_dict, "optimizer"}); newest epoch used

Model space: the normalised space the model was trained in (shapes inside [-1, 1]^3, SDF in the same
units). Patient meshes are in mm; the similarity ICP's scale carries mm -> model units, so
``NsmFit.transform`` (patient mm -> model space) includes the scale, and the mirror for left knees.

Fitting follows the published procedure (docs/NSM.md): settings from the config's ``*_recon`` keys
(recon.py), the reference's shaft clip (prepare.py), VTK's ICP onto the mean surface (icp.py), the
latent optimisation of NSM ``reconstruct_latent`` (fit.py), starting from the mean latent.

ASSD (``NsmFit.assd_mm``): mean over both vertex sets of the exact vertex-to-surface distance in patient mm,
input vertices -> reconstructed surface and reconstructed vertices -> input surface, comparing like with
like: the input is taken as it was fitted (mirrored and shaft-clipped), and reconstructed vertices beyond
the shaft clip plane -- surface the clipped input cannot have -- are left out of the second direction.
``NsmFit.report["assd_parts"]`` holds each direction's mean and 95th percentile, so that a spurious surface
(large model -> input) and a missing one (large input -> model) can be told apart.

Meshes: a coarse-to-fine narrow band (``meshing.sdf_volumes``): 64^3 everywhere, then 128^3 and 256^3
only within two cells of the surface. ``mesh_resolution=0`` fits the latent only (no meshes, no ASSD).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from ..errors import ConfigurationError, ModelInvalidError, ModelMissingError, NsmError
from .decoder import NsmArchitecture, build_decoder, convert_state_dict

log = logging.getLogger(__name__)
CONFIG_NAME = "model_params_config.json"
_MEAN_SURFACES: Dict[tuple, tuple] = {}     # (model_dir, epoch, resolution) -> mean-shape (points, triangles)


def resolve_device(device: str = "auto"):
    import torch

    from ..devices import auto_device, mps_available

    d = (device or "auto").lower()
    if d == "auto":
        return auto_device(torch)   # cuda > mps > cpu, as segmentation
    if d == "mps":
        if not mps_available(torch):
            raise ConfigurationError("--device mps was asked for but Apple MPS is not available.",
                                     hint="Use --device cpu or auto.")
        return torch.device("mps")
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigurationError("--device %s was asked for but no CUDA GPU is available." % device,
                                     hint="Use --device cpu or auto.")
        return torch.device(d)
    if d == "cpu":
        return torch.device("cpu")
    raise ConfigurationError("Unknown device %r." % device, hint="Use auto, cpu, cuda or mps.")


def find_checkpoint(model_dir: Path, epoch: Optional[int] = None) -> Path:
    mdir = model_dir / "model"
    cands = {}
    if mdir.is_dir():
        for p in mdir.glob("*.pth"):
            if p.stem.isdigit():
                cands[int(p.stem)] = p
    if not cands:
        raise ModelMissingError("No checkpoint model/<epoch>.pth in %s." % model_dir,
                                hint="Point --nsm-dir at the NSM folder holding model_params_config.json and model/.")
    if epoch is not None:
        if epoch not in cands:
            raise ModelMissingError("Checkpoint model/%d.pth not found in %s (have: %s)."
                                    % (epoch, model_dir, ", ".join(str(e) for e in sorted(cands))))
        return cands[epoch]
    return cands[max(cands)]


@dataclass
class NsmFit:
    latent: np.ndarray                       # (latent_size,)
    transform: np.ndarray                    # 4x4, patient mm -> model space (mirror included for left knees)
    loss_history: List[float]
    iterations: int
    best_loss: float
    assd_mm: Dict[str, float]
    meshes: Dict[str, object]                # name -> vtkPolyData in patient mm
    laterality: str
    seeds: List[int]
    seconds: float
    device: str
    report: Dict[str, object] = field(default_factory=dict)

    def to_json(self) -> Dict[str, object]:
        def clean(v):
            return None if (isinstance(v, float) and not np.isfinite(v)) else v
        return {"latent": [float(x) for x in self.latent], "transform": np.asarray(self.transform).tolist(),
                "transform_meaning": "patient LPS mm -> NSM model space (homogeneous, row-major)",
                "iterations": int(self.iterations), "best_loss": clean(float(self.best_loss)),
                "assd_mm": {k: clean(float(v)) for k, v in self.assd_mm.items()}, "laterality": self.laterality,
                "seeds": list(self.seeds), "seconds": round(float(self.seconds), 3), "device": self.device,
                "report": self.report}


class NSM:
    """A loaded triplanar NSM. Use :func:`load_nsm`."""

    def __init__(self, decoder, arch: NsmArchitecture, device, model_dir: Optional[Path] = None,
                 epoch: Optional[int] = None, config: Optional[dict] = None):
        self.decoder = decoder
        self.arch = arch
        self.device = device
        self.model_dir = model_dir
        self.epoch = epoch
        self.config = config or {}
        self._mean_surface = None

    @property
    def latent_size(self) -> int:
        return self.arch.latent_size

    @property
    def object_names(self):
        return self.arch.object_names

    def _latent(self, latent):
        import torch

        z = torch.as_tensor(np.asarray(latent, np.float32).reshape(-1), device=self.device)
        if z.numel() != self.arch.latent_size:
            raise NsmError("Latent has %d values; this NSM's latent size is %d." % (z.numel(), self.arch.latent_size),
                           hint="Use a latent fitted with this model.")
        return z

    def planes(self, latent):
        import torch

        with torch.inference_mode():
            return self.decoder.planes(self._latent(latent))

    def sdf(self, latent, xyz, chunk: int = 16384) -> np.ndarray:
        """(N, n_objects) SDF for (N, 3) points in normalised model space; planes computed once."""
        from .meshing import evaluate_grid

        xyz = np.asarray(xyz, np.float32).reshape(-1, 3)
        return evaluate_grid(self.decoder, self.planes(latent), xyz, chunk)

    def mesh(self, latent, resolution: int = 256, coarse: int = 64, transform: Optional[np.ndarray] = None,
             largest_only: bool = True) -> Dict[str, object]:
        """name -> vtkPolyData: contour 0 of each object (normalised units, or patient mm through the inverse
        of ``transform`` when given; reflections keep normals outward)."""
        from .meshing import meshes_from_planes, polydata_arrays
        from .prepare import signed_volume, transform_polydata

        out = meshes_from_planes(self.decoder, self.planes(latent), resolution=resolution, coarse=coarse,
                                 largest_only=largest_only)
        for name, pd in list(out.items()):
            pts, tri = polydata_arrays(pd)
            if len(tri) and signed_volume(pts, tri) < 0:      # make the winding outward
                from .meshing import polydata_from_arrays
                pd = polydata_from_arrays(pts, tri[:, ::-1])
            if transform is not None:
                pd = transform_polydata(pd, np.linalg.inv(np.asarray(transform, float)))
            out[name] = pd
        return out

    @property
    def recon_settings(self):
        """The fit settings of this model's config (``*_recon`` keys, published defaults where absent)."""
        from .recon import settings_from_config

        return settings_from_config(self.config, where=str((self.model_dir or Path(".")) / CONFIG_NAME))

    def mean_surface(self, resolution: int = 128):
        """The bone surface decoded from the zero latent (model space), every component, as the reference's
        ICP target (NSM ``reconstruct_mesh``: ``create_mesh`` of the zero latent, no component filter)."""
        key = (str(self.model_dir), self.epoch, int(resolution)) if self.model_dir is not None else None
        if key is not None and key in _MEAN_SURFACES:
            return _MEAN_SURFACES[key]
        if self._mean_surface is not None and self._mean_surface[0] == int(resolution):
            return self._mean_surface[1]
        from .meshing import polydata_arrays

        bone = self.mesh(np.zeros(self.arch.latent_size), resolution=resolution,
                         largest_only=False)[self.arch.object_names[0]]
        pts, tri = polydata_arrays(bone)
        if len(pts) < 100:
            raise NsmError("The NSM's mean shape (zero latent) has no surface to register to.",
                           hint="The model folder may hold untrained or corrupt weights.")
        self._mean_surface = (int(resolution), (pts, tri))
        if key is not None:
            _MEAN_SURFACES[key] = (pts, tri)
        return pts, tri

    def mean_surface_points(self, resolution: int = 128) -> np.ndarray:
        """Vertices of :meth:`mean_surface`."""
        return self.mean_surface(resolution)[0]

    def fit(self, bone_mesh, cartilage_mesh=None, laterality: str = "right", seed: int = 0,
            iterations: Optional[int] = None, samples: Optional[int] = None, patience: Optional[int] = None,
            n_seeds: int = 1, progress: Optional[Callable[[float, str], None]] = None, mesh_resolution: int = 256,
            clip_shaft: bool = True, warn: Optional[Callable[[str], None]] = None, precision: str = "fp32",
            threads: Optional[int] = None, settings=None) -> NsmFit:
        """Fit the latent to a femur (and its cartilage for a bone+cartilage model); meshes in patient mm.

        Settings: the model config's ``*_recon`` keys (:attr:`recon_settings`, published defaults where
        absent) as the reference reads them; ``iterations`` (num_iterations_recon), ``samples``
        (n_samples_latent_recon: points per step, all surfaces together) and ``patience``
        (convergence_patience_recon) override them when given, ``settings`` (a ReconSettings) replaces
        them. What was used, and where each value came from, is in ``NsmFit.report["recon_settings"]``.

        Threads (CPU): ``threads`` when given. Otherwise a small decoder (< 2 M parameters) is fitted with
        one torch thread -- its many tiny ops gain nothing from more, and on a shared CPU extra OpenMP
        threads made each step ~10x slower (0.57 vs 0.05 s) -- and a larger one (the published 20.8 M)
        with torch's current setting, by default every core: its products are large enough to scale.
        On a CPU shared with other busy processes pass ``threads=1``.

        ``precision``: "fp32" (default, exact) or "bf16" (bfloat16 fit, about 2x faster on CPUs with
        AVX512_BF16 / AMX; the fitted shape differs slightly, see fast.py and bench/bench_nsm.py). The
        meshes are always evaluated in fp32.
        """
        import torch

        from .fast import PRECISIONS

        if precision not in PRECISIONS:
            raise ConfigurationError("Unknown NSM precision %r." % precision, hint="Use fp32 or bf16.")
        st = (settings or self.recon_settings).with_overrides(iterations=iterations, samples=samples,
                                                              patience=patience)
        n_par = sum(p.numel() for p in self.decoder.parameters())
        before = torch.get_num_threads()
        if self.device.type == "cpu":
            if threads:
                torch.set_num_threads(int(threads))
            elif n_par < 2_000_000 and before > 1:
                torch.set_num_threads(1)
        try:
            return self._fit(bone_mesh, cartilage_mesh, laterality, seed, st, n_seeds, progress, mesh_resolution,
                             clip_shaft, warn, precision)
        finally:
            torch.set_num_threads(before)

    def align(self, bone_r, bone_tri, cart, st):
        """(4x4 patient-right mm -> model space, bone points, cartilage points) as the reference aligns: VTK
        similarity ICP of the bone onto the mean surface; with ``scale_jointly`` false, then centred on the
        bone and scaled so that the farthest point of all surfaces is at radius 1."""
        from .icp import apply, similarity_icp

        mean_pts, mean_tri = self.mean_surface(st.mean_mesh_resolution)
        t = similarity_icp(bone_r, bone_tri, mean_pts, mean_tri, iterations=st.icp_iterations,
                           landmarks=st.icp_landmarks)
        if not st.scale_jointly:
            b = apply(t, bone_r)
            allp = b if cart is None else np.concatenate([b, apply(t, cart[0])])
            centre = b.mean(0)
            scale = float(np.max(np.linalg.norm(allp - centre, axis=1)))
            s = np.eye(4)
            s[:3, :3] /= scale
            s[:3, 3] = -centre / scale
            t = s @ t
        return t

    def _fit(self, bone_mesh, cartilage_mesh, laterality, seed, st, n_seeds, progress, mesh_resolution,
             clip_shaft, warn, precision="fp32") -> NsmFit:
        from . import fit as F
        from .icp import apply
        from .meshing import polydata_arrays
        from .prepare import prepare_bone, prepare_cartilage, transform_arrays

        t0 = time.time()
        prog = progress or (lambda f, m="": None)
        n_obj = self.arch.n_objects
        if n_obj >= 2 and cartilage_mesh is None:
            raise NsmError("This NSM models bone and cartilage (%s) but no femoral cartilage mesh was given."
                           % ", ".join(self.arch.object_names),
                           hint="Give the femoral cartilage mesh, or use the bone-only NSM.")
        bone_r, bone_tri, mirror, report = prepare_bone(bone_mesh, laterality, clip=clip_shaft, warn=warn)
        cart = prepare_cartilage(cartilage_mesh, mirror) if (n_obj >= 2) else None
        if cartilage_mesh is not None and n_obj < 2:
            report["cartilage_ignored"] = "bone-only model"
        report["precision"] = precision
        report["recon_settings"] = st.to_json()
        for flag, what in (("fix_mesh", "fix_mesh_recon (meshfix)"),
                           ("random_points", "get_rand_pts_recon (random points around the surface)")):
            if getattr(st, flag):
                msg = "The NSM config asks for %s, which this fit does not do: it fits the mesh vertices." % what
                report.setdefault("recon_not_applied", []).append(what)
                if warn:
                    warn(msg)
        prog(0.02, "registering to the mean shape")
        timings = {}
        t_mean = time.time()
        self.mean_surface(st.mean_mesh_resolution)
        timings["mean_surface_s"] = time.time() - t_mean
        t_reg = time.time()
        t_icp = self.align(bone_r, bone_tri, cart, st)
        transform = t_icp @ mirror
        bone_m = apply(t_icp, bone_r)
        tb = np.zeros((len(bone_m), n_obj))
        if cart is not None:
            cart_m, cart_tri = transform_arrays(t_icp, *cart)
            tb[:, 1] = F.signed_distance(bone_m, cart_m, cart_tri)
            tc = np.zeros((len(cart_m), n_obj))
            tc[:, 0] = F.signed_distance(cart_m, bone_m, bone_tri)
            surfaces = [F.SurfaceSamples("bone", bone_m, tb), F.SurfaceSamples("cartilage", cart_m, tc)]
        else:
            surfaces = [F.SurfaceSamples("bone", bone_m, tb)]
        report["fit_points"] = {s.name: int(len(s.points)) for s in surfaces}
        timings["icp_s"] = time.time() - t_reg
        t_fit = time.time()
        fits = []
        for k in range(max(1, int(n_seeds))):
            sub = (lambda f, m="", k=k: prog(0.05 + 0.8 * (k + f) / max(1, n_seeds), m))
            fits.append(F.fit_latent(self.decoder, surfaces, settings=st, seed=seed + k, progress=sub,
                                     precision=precision))
        latent = np.mean([f.latent for f in fits], 0)
        prog(0.86, "extracting meshes")
        timings["fit_s"] = time.time() - t_fit
        t_mesh = time.time()
        if not mesh_resolution:        # latent only: no meshes, no ASSD
            timings["mesh_s"] = 0.0
            report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
            return self._result(fits, latent, transform, {}, {}, laterality, report, t0, t_icp)
        meshes = self.mesh(latent, resolution=mesh_resolution, transform=transform)
        timings["mesh_s"] = time.time() - t_mesh
        # distances in patient mm against the (clipped) inputs, like with like: the input is compared as
        # clipped, and reconstructed surface beyond the shaft clip plane (which the clipped input lacks)
        # is left out of the model -> input direction
        t_assd = time.time()
        plane = report.get("clip_plane_mm")
        assd, parts = {}, {}
        names = self.arch.object_names
        pairs = [(names[0], (bone_r, bone_tri))] + ([(names[1], cart)] if cart is not None else [])
        for name, (ip, it) in pairs:
            rp, rt = polydata_arrays(meshes[name])
            rp_r, rt_r = transform_arrays(mirror, rp, rt)          # back to the right-side frame of ip
            assd[name], parts[name] = F.clipped_assd(ip, it, rp_r, rt_r, plane if name == names[0] else None)
        report["assd_parts"] = parts
        timings["assd_s"] = time.time() - t_assd
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        prog(1.0, "done")
        return self._result(fits, latent, transform, assd, meshes, laterality, report, t0, t_icp)

    def _result(self, fits, latent, transform, assd, meshes, laterality, report, t0, t_icp) -> NsmFit:
        report["icp_scale"] = float(np.cbrt(abs(np.linalg.det(t_icp[:3, :3]))))
        return NsmFit(latent=latent, transform=transform, loss_history=fits[0].loss_history,
                      iterations=int(sum(f.iterations for f in fits)), best_loss=float(min(f.best_loss for f in fits)),
                      assd_mm=assd, meshes=meshes, laterality=laterality.lower(),
                      seeds=[s for f in fits for s in f.seeds], seconds=time.time() - t0, device=str(self.device),
                      report=report)


def load_nsm(model_dir, device: str = "auto", epoch: Optional[int] = None) -> NSM:
    """Load an NSM folder (model_params_config.json + model/<epoch>.pth, newest epoch unless given)."""
    import torch

    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelMissingError("%s not found in %s." % (CONFIG_NAME, model_dir),
                                hint="Point --nsm-dir at the NSM model folder (it holds %s and model/)." % CONFIG_NAME)
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelInvalidError("%s is not readable JSON: %s" % (cfg_path, exc))
    arch = NsmArchitecture.from_config(cfg, where=str(cfg_path))
    ck_path = find_checkpoint(model_dir, epoch)
    try:
        ck = torch.load(str(ck_path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ModelInvalidError("Cannot read checkpoint %s: %s" % (ck_path, exc))
    sd = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        raise ModelInvalidError("Checkpoint %s holds no state dict under 'model'." % ck_path)
    dec = build_decoder(arch)
    ours = convert_state_dict(sd, arch, where=str(ck_path))
    try:
        dec.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelInvalidError("Checkpoint %s does not match %s: %s" % (ck_path, CONFIG_NAME, str(exc)[:500]),
                                hint="The config's sizes (latent_size, conv_hidden_dims, sdf_latent_size, "
                                     "sdf_hidden_dims, objects_per_decoder) must match the weights.")
    dev = resolve_device(device)
    dec = dec.to(dev).eval()
    for p in dec.parameters():
        p.requires_grad_(False)
    ep = ck.get("epoch") if isinstance(ck, dict) else None
    return NSM(dec, arch, dev, model_dir=model_dir, epoch=int(ep) if ep is not None else int(ck_path.stem),
               config=cfg)


def save_nsm(decoder, model_dir, epoch: int = 0) -> Path:
    """Write our decoder in the published folder format (used by the training script and tests)."""
    import torch

    from .decoder import to_published_state_dict

    model_dir = Path(model_dir)
    (model_dir / "model").mkdir(parents=True, exist_ok=True)
    (model_dir / CONFIG_NAME).write_text(json.dumps(decoder.arch.to_config(), indent=2))
    path = model_dir / "model" / ("%d.pth" % epoch)
    torch.save({"epoch": epoch, "model": to_published_state_dict(decoder), "optimizer": {}}, str(path))
    return path
