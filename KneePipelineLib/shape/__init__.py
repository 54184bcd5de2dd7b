"""Neural shape model (NSM) of the femur: published triplanar decoder, fitting, meshes, B-score.

Public API::

    from KneePipelineLib.shape import load_nsm
    model = load_nsm(model_dir, device="auto")
    sdf = model.sdf(latent, xyz)                       # (N, n_objects) numpy
    fit = model.fit(bone_mesh, cartilage_mesh, laterality="left", seed=0)   # NsmFit
    meshes = model.mesh(fit.latent, transform=fit.transform)              # patient mm

Heavy imports (torch, vtk) happen when these functions are called.
"""


def load_nsm(model_dir, device="auto", epoch=None):
    from .model import load_nsm as _load

    return _load(model_dir, device=device, epoch=epoch)


__all__ = ["load_nsm"]
