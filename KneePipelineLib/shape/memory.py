"""Memory an NSM fit will need, estimated before it starts, and the refusal when the machine lacks it (the
``insufficient_memory`` error of :mod:`KneePipelineLib.resources`, with the NSM's own figures and ways out).

The fit's phases run one after the other: the latent fit (decoder weights, the plane generator's activations
and gradients, per-point MLP buffers), then the meshes (coarse-to-fine SDF grids) and the surface distances.
The estimate adds all of them on top of the process (Python, torch, VTK, the meshes): the allocator does not
hand everything back between phases (a whole small-model fit peaks 185 MB above meshing alone), so the sum is
the upper bound:

* per point of a step: the MLP's activation and gradient buffers (``fast.FastEvaluator``: every hidden width,
  the hidden ones twice: activations and gradients; counted in fp32 for bf16 fits too, which keep half-size
  buffers but were not measured), the gathered features and their
  gradient: 13.9 kB for the published architecture, which is what was measured;
* per fitted vertex: its 12 bilinear texels and weights, point and targets (kept for every vertex);
* fixed: the plane generator's saved activations and their gradients, the largest transposed convolution's
  column buffer, the planes and their gradient -- x 1.4, the measured/analytic ratio of the published
  architecture (188 / 133 MB: backward workspaces, the allocator);
* meshes at R: n_objects x R^3 float32 grids twice (the grid and its upsampled copy) + mask and contour copy;
* surface distances: 20 000 points x their candidate triangles at a time (fixed, ~190 MB).

Measured (bench/bench_nsm_memory.py -> bench/results/nsm_memory-20261208-000535.json; peak RSS of fresh
processes, CPU, fp32, the full-size published decoder, 20.8 M parameters, random weights): 866 / 988 / 1248 MB
for 10 000 / 20 000 / 40 000 points per step (an earlier run: 881 / 1016 / 1279), the process with the decoder
loaded and no fit 560 MB, 13 kB per point; estimates 892 / 1027 / 1298 MB (2-4 % above). Meshing at 256 adds
~190 MB per object; a whole small-model fit (ICP, 3 steps, meshes at 256, ASSD) peaks at 950 MB, estimate
976 MB. A full-size bone+cartilage fit with the defaults (2 x 10 000 vertices, meshes at 256): 1553 MB (the
published weights are not here, so the full-size figures use random weights: the same arrays). MB = 2**20 bytes.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

PROCESS_BYTES = 500 * 2 ** 20       # interpreter + torch + VTK + our code + the input meshes (measured 477) + 23 margin
PER_POINT_FACTOR = 1.0              # measured / analytic per-point bytes, published architecture (fp32): 13.9 kB
FIXED_FACTOR = 1.4                  # measured / analytic fixed fit bytes, published architecture (188 / 133 MB)
ASSD_BYTES = 190 * 2 ** 20          # point_to_surface: 20 000-point chunks x ~40 candidate triangles
PER_VERTEX_BYTES = 12 * 8 + 12 * 4 + 5 * 4   # texel indices (int64) + weights + xyz/targets, kept per vertex


def points_per_step(vertex_counts: Sequence[int], samples: int) -> int:
    """Points evaluated per step: ``samples`` split evenly over the surfaces, at most each one's vertices
    (``fit.step_indices``)."""
    counts = [int(n) for n in vertex_counts]
    per = int(samples) // max(1, len(counts))
    return sum(min(per, n) for n in counts)


def parts(arch, vertex_counts: Sequence[int], samples: int, mesh_resolution: int = 256,
          precision: str = "fp32") -> Dict[str, int]:
    """Bytes per part of an NSM fit (see the module doc): process, weights, fit, mesh, assd."""
    dt = 4   # bf16 keeps half-size MLP buffers but fp32 copies elsewhere; not measured: the fp32 figure bounds it
    n_step = points_per_step(vertex_counts, samples)
    n_all = sum(int(n) for n in vertex_counts)
    widths = [arch.mlp_in] + list(arch.sdf_hidden_dims) + [arch.n_objects]
    feat = arch.plane_features if arch.sum_features else 3 * arch.plane_features
    per_point = dt * (sum(widths[:-1]) + sum(widths[1:-1])) + 4 * 2 * feat + 4 * 4 * arch.n_objects
    # the plane generator: deconvolution and layer-norm outputs kept for backward, their gradients, the
    # largest layer's column buffer (C_in x 9 x H x W), the planes (3F x R x R) with their gradient
    s, acts, col, cin = arch.deep_image_size, 0, 0, arch.conv_hidden_dims[0]
    for c in arch.conv_hidden_dims:
        s *= 2
        acts += c * s * s
        col = max(col, cin * 9 * s * s)
        cin = c
    planes = 3 * arch.plane_features * arch.plane_size ** 2
    fixed = 4 * (4 * acts + col + 2 * planes)
    n_par = (arch.latent_size + 1) * arch.conv_hidden_dims[0] * arch.deep_image_size ** 2
    cin = arch.conv_hidden_dims[0]
    s = arch.deep_image_size
    for c in arch.conv_hidden_dims:
        s *= 2
        n_par += cin * c * 9 + c + 2 * c * s * s     # transposed convolution + layer norm (affine per element)
        cin = c
    n_par += cin * 3 * arch.plane_features * 9 + sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    r = int(mesh_resolution or 0)
    return {"process": PROCESS_BYTES, "weights": 4 * n_par,
            "fit": int(FIXED_FACTOR * fixed + PER_POINT_FACTOR * per_point * n_step + PER_VERTEX_BYTES * 2 * n_all),
            "mesh": (r ** 3) * (8 * arch.n_objects + 5) if r else 0, "assd": ASSD_BYTES if r else 0,
            "points_per_step": n_step, "vertices": n_all, "per_point": int(PER_POINT_FACTOR * per_point)}


def nsm_fit_bytes(arch, vertex_counts: Sequence[int], samples: int, mesh_resolution: int = 256,
                  precision: str = "fp32") -> int:
    """Upper estimate of the peak memory (bytes, all of it on the CPU) of one NSM fit."""
    p = parts(arch, vertex_counts, samples, mesh_resolution, precision)
    return p["process"] + p["weights"] + p["fit"] + p["mesh"] + p["assd"]


def _gpu_free(device) -> Optional[int]:
    try:
        import torch

        if getattr(device, "type", str(device)).startswith("cuda") and torch.cuda.is_available():
            return int(torch.cuda.mem_get_info(device)[0])
    except Exception:  # noqa: BLE001 - no figure: no GPU check
        return None
    return None


def require_nsm_memory(arch, vertex_counts: Sequence[int], samples: int, mesh_resolution: int = 256,
                       precision: str = "fp32", device="cpu", what: str = "the NSM fit") -> Dict[str, int]:
    """Refuse the fit (InsufficientMemoryError, exit 34) before it starts when the estimate exceeds what this
    machine (or, for a CUDA device, the GPU: weights and fit there, the rest on the host) has free."""
    from ..errors import InsufficientMemoryError
    from ..resources import SAFETY, available_bytes

    p = parts(arch, vertex_counts, samples, mesh_resolution, precision)
    gpu = _gpu_free(device)
    on_gpu = p["weights"] + p["fit"] if gpu is not None else 0
    host = p["process"] + p["mesh"] + p["assd"] + (0 if gpu is not None else p["weights"] + p["fit"])
    figures = ("latent %d, decoder %.1f M parameters, %d points per step (%d vertices), %s, meshes at %d, device %s"
               % (arch.latent_size, p["weights"] / 4e6, p["points_per_step"], p["vertices"], precision,
                  int(mesh_resolution or 0), device))
    hint = ("Fewer points per step (--nsm-samples / --samples N: about %.1f kB each), a lower mesh resolution "
            "(--nsm-mesh-resolution / --mesh-resolution), or a machine with more free memory." % (p["per_point"] / 1e3))
    avail = available_bytes()
    if host > SAFETY * avail:
        raise InsufficientMemoryError("%s would need about %.2f GB of memory (%s); this machine has %.2f GB "
                                      "available." % (what, host / 1e9, figures, avail / 1e9), hint=hint)
    if gpu is not None and on_gpu > SAFETY * gpu:
        raise InsufficientMemoryError("%s would need about %.2f GB of GPU memory (%s); the GPU has %.2f GB free."
                                      % (what, on_gpu / 1e9, figures, gpu / 1e9),
                                      hint=hint.replace("a machine", "--device cpu, or a GPU"))
    return {"host_bytes": int(host), "gpu_bytes": int(on_gpu), **{k: int(v) for k, v in p.items()}}


def check_fit_memory(model, bone_mesh, cartilage_mesh=None, samples: Optional[int] = None,
                     mesh_resolution: int = 256, precision: str = "fp32", what: str = "The NSM fit") -> Dict[str, int]:
    """:func:`require_nsm_memory` for a loaded NSM and its input meshes (the vertices it will fit; points per
    step from ``samples`` or the model config's ``n_samples_latent_recon``). Used by the pipeline's nsm step
    and ``kneepipeline nsm`` before the fit starts."""
    counts = [int(bone_mesh.GetNumberOfPoints())]
    if model.arch.n_objects >= 2 and cartilage_mesh is not None:
        counts.append(int(cartilage_mesh.GetNumberOfPoints()))
    n = model.recon_settings.with_overrides(samples=samples).samples
    return require_nsm_memory(model.arch, counts, n, mesh_resolution, precision, model.device, what)
