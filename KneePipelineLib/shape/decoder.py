"""The published triplanar NSM decoder (REFERENCE §7), written from the description, loading its state dict.

Architecture (sizes from ``model_params_config.json``; published values in brackets):

* ``fc``: Linear(latent_size [512] -> C0 * s0 * s0) with C0 = conv_hidden_dims[0] [512], s0 =
  conv_deep_image_size [2]; reshaped to (C0, s0, s0). No activation.
* for each entry of conv_hidden_dims [5 x 512]: ConvTranspose2d(C_in -> C_i, k3, stride 2, pad 1,
  output_pad 1) then LayerNorm over (C_i, H, W) with elementwise affine. NO activation between blocks.
* final Conv2d(C_last -> 3 * F, k3, pad 1) + tanh, F = sdf_latent_size [128]; channels [0:F] = xz plane,
  [F:2F] = yz plane, [2F:3F] = xy plane.
* a point (x, y, z) is divided by (1 + padding + 1e-5) [1.10001], clamped to [-1, 1] and each plane is
  sampled bilinearly (border padding, align_corners=True; the first grid coordinate indexes width):
  xz at (x, z), yz at (y, z), xy at (x, y). The three F-vectors are summed (or concatenated when
  ``sum_conv_output_features`` is false).
* SDF MLP on concat(feature, xyz): weight-normalised Linears with ReLU between, tanh at the end.

The planes depend on the latent only: :meth:`TriplanarDecoder.planes` computes them once and
:meth:`TriplanarDecoder.query` evaluates any number of points against them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

from ..errors import ModelInvalidError

# Config keys read from model_params_config.json; the rest of the file is ignored.
REQUIRED_KEYS = ("latent_size", "objects_per_decoder", "conv_hidden_dims", "conv_deep_image_size",
                 "sdf_latent_size", "sdf_hidden_dims")
OPTIONAL_KEYS = {  # key -> the only value(s) we implement (published values)
    "conv_norm": (True,),
    "conv_norm_type": ("layer",),
    "conv_start_with_mlp": (True,),
    "conv_pred_sdf": (False,),
    "weight_norm": (True, False),
    "final_activation": ("tanh",),
    "activation": ("relu",),
    "conv_activation": (None, "none"),
}


@dataclass(frozen=True)
class NsmArchitecture:
    latent_size: int
    n_objects: int
    conv_hidden_dims: Tuple[int, ...]
    deep_image_size: int
    plane_features: int
    sdf_hidden_dims: Tuple[int, ...]
    sum_features: bool = True
    padding: float = 0.1
    object_names: Tuple[str, ...] = ("bone", "cartilage")

    @property
    def coord_scale(self) -> float:
        return 1.0 + self.padding + 1e-5     # 1.10001 for the published padding 0.1

    @property
    def plane_size(self) -> int:
        return self.deep_image_size * 2 ** len(self.conv_hidden_dims)

    @property
    def mlp_in(self) -> int:
        return (self.plane_features if self.sum_features else 3 * self.plane_features) + 3

    @classmethod
    def from_config(cls, cfg: Mapping, where: str = "model_params_config.json") -> "NsmArchitecture":
        missing = [k for k in REQUIRED_KEYS if k not in cfg]
        if missing:
            raise ModelInvalidError("%s lacks the key(s) %s needed to build the triplanar NSM."
                                    % (where, ", ".join(missing)),
                                    hint="Use the model_params_config.json that came with the checkpoint.")
        for key, allowed in OPTIONAL_KEYS.items():
            if key in cfg and cfg[key] not in allowed:
                raise ModelInvalidError("%s: %s=%r is not supported (implemented: %s)."
                                        % (where, key, cfg[key], ", ".join(repr(a) for a in allowed)),
                                        hint="Only the published triplanar architecture can be loaded.")
        mt = cfg.get("model_type", "triplanar")
        if mt != "triplanar":
            raise ModelInvalidError("%s: model_type=%r; only 'triplanar' NSMs are supported." % (where, mt))
        n_obj = int(cfg["objects_per_decoder"])
        names = cfg.get("mesh_names") or (["bone", "cartilage"][:n_obj] if n_obj <= 2
                                          else ["object%d" % i for i in range(n_obj)])
        names = tuple("cartilage" if n in ("cart", "cartilage") else str(n) for n in names)
        try:
            arch = cls(latent_size=int(cfg["latent_size"]), n_objects=n_obj,
                       conv_hidden_dims=tuple(int(c) for c in cfg["conv_hidden_dims"]),
                       deep_image_size=int(cfg["conv_deep_image_size"]),
                       plane_features=int(cfg["sdf_latent_size"]),
                       sdf_hidden_dims=tuple(int(c) for c in cfg["sdf_hidden_dims"]),
                       sum_features=bool(cfg.get("sum_conv_output_features", True)),
                       padding=float(cfg.get("padding", 0.1) if cfg.get("padding") is not None else 0.1),
                       object_names=names)
        except (TypeError, ValueError) as exc:
            raise ModelInvalidError("%s has a malformed architecture entry: %s" % (where, exc))
        if len(arch.object_names) != n_obj or not arch.conv_hidden_dims or not arch.sdf_hidden_dims:
            raise ModelInvalidError("%s: mesh_names / conv_hidden_dims / sdf_hidden_dims are inconsistent." % where)
        return arch

    def to_config(self) -> Dict[str, object]:
        return {"model_type": "triplanar", "latent_size": self.latent_size, "objects_per_decoder": self.n_objects,
                "mesh_names": list(self.object_names), "conv_hidden_dims": list(self.conv_hidden_dims),
                "conv_deep_image_size": self.deep_image_size, "conv_norm": True, "conv_norm_type": "layer",
                "conv_start_with_mlp": True, "conv_pred_sdf": False, "sdf_latent_size": self.plane_features,
                "sdf_hidden_dims": list(self.sdf_hidden_dims), "weight_norm": True, "final_activation": "tanh",
                "activation": "relu", "sum_conv_output_features": self.sum_features, "padding": self.padding}


def build_decoder(arch: NsmArchitecture):
    """An untrained :class:`TriplanarDecoder` (plain Linears: weight norm is folded at load time)."""
    import torch
    from torch import nn
    import torch.nn.functional as F

    class TriplanarDecoder(nn.Module):
        def __init__(self, a: NsmArchitecture):
            super().__init__()
            self.arch = a
            c0, s0 = a.conv_hidden_dims[0], a.deep_image_size
            self.fc = nn.Linear(a.latent_size, c0 * s0 * s0)
            self.deconvs = nn.ModuleList()
            self.norms = nn.ModuleList()
            cin, s = c0, s0
            for c in a.conv_hidden_dims:
                s *= 2
                self.deconvs.append(nn.ConvTranspose2d(cin, c, 3, stride=2, padding=1, output_padding=1))
                self.norms.append(nn.LayerNorm([c, s, s], elementwise_affine=True))
                cin = c
            self.final = nn.Conv2d(cin, 3 * a.plane_features, 3, padding=1)
            dims = [a.mlp_in] + list(a.sdf_hidden_dims) + [a.n_objects]
            self.mlp = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1))

        def planes(self, latent: "torch.Tensor") -> "torch.Tensor":
            """(latent_size,) -> (3, F, R, R): the xz, yz and xy feature planes."""
            a = self.arch
            x = self.fc(latent.reshape(1, -1)).view(1, a.conv_hidden_dims[0], a.deep_image_size, a.deep_image_size)
            for deconv, norm in zip(self.deconvs, self.norms):
                x = norm(deconv(x))
            x = torch.tanh(self.final(x))
            r = x.shape[-1]
            return x.view(3, a.plane_features, r, r)

        def features(self, planes: "torch.Tensor", xyz: "torch.Tensor") -> "torch.Tensor":
            a = self.arch
            p = (xyz / a.coord_scale).clamp(-1.0, 1.0)
            grid = torch.stack([p[:, [0, 2]], p[:, [1, 2]], p[:, [0, 1]]], 0).unsqueeze(2)  # (3, N, 1, 2)
            f = F.grid_sample(planes, grid.to(planes.dtype), mode="bilinear", padding_mode="border",
                              align_corners=True)                                       # (3, F, N, 1)
            f = f.squeeze(-1)
            if a.sum_features:
                return f.sum(0).t()                                                    # (N, F)
            return f.permute(2, 0, 1).reshape(f.shape[2], -1)                         # (N, 3F)

        def query(self, planes: "torch.Tensor", xyz: "torch.Tensor") -> "torch.Tensor":
            """SDF (N, n_objects) for points (N, 3) in normalised model space."""
            h = torch.cat([self.features(planes, xyz), xyz.to(planes.dtype)], 1)
            last = len(self.mlp) - 1
            for i, lin in enumerate(self.mlp):
                h = lin(h)
                h = torch.tanh(h) if i == last else torch.relu(h)
            return h

        def forward(self, latent, xyz):
            return self.query(self.planes(latent), xyz)

    return TriplanarDecoder(arch)


def _fold_weight_norm(g, v):
    """W = g * v / ||v||, the norm taken per output row (torch weight_norm with dim=0)."""
    import torch

    norm = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape([-1] + [1] * (v.dim() - 1))
    return g.reshape(norm.shape) * v / norm


def convert_state_dict(sd: Mapping, arch: NsmArchitecture, where: str = "checkpoint") -> Dict[str, object]:
    """Published key layout -> our module's state dict (weight norm folded, duplicates ignored)."""
    n_blocks = len(arch.conv_hidden_dims)
    out = {}
    needed = {"fc.weight": "vae_decoder.fc.weight", "fc.bias": "vae_decoder.fc.bias",
              "final.weight": "vae_decoder.layers.%d.0.weight" % (2 * n_blocks),
              "final.bias": "vae_decoder.layers.%d.0.bias" % (2 * n_blocks)}
    for i in range(n_blocks):
        for p in ("weight", "bias"):
            needed["deconvs.%d.%s" % (i, p)] = "vae_decoder.layers.%d.%s" % (2 * i, p)
            needed["norms.%d.%s" % (i, p)] = "vae_decoder.layers.%d.%s" % (2 * i + 1, p)
    n_lin = len(arch.sdf_hidden_dims) + 1
    missing = [k for k in needed.values() if k not in sd]
    for i in range(n_lin):
        base = "sdf_decoder.layers.%d." % i
        has_wn = base + "weight_g" in sd and base + "weight_v" in sd
        if not has_wn and base + "weight" not in sd:
            missing.append(base + "weight_g/weight_v")
        if base + "bias" not in sd:
            missing.append(base + "bias")
    if missing:
        raise ModelInvalidError("%s lacks %d expected state-dict key(s), e.g. %s." % (where, len(missing),
                                ", ".join(missing[:4])),
                                hint="The checkpoint does not match model_params_config.json (or is not a "
                                     "triplanar NSM checkpoint).")
    for ours, theirs in needed.items():
        out[ours] = sd[theirs]
    for i in range(n_lin):
        base = "sdf_decoder.layers.%d." % i
        if base + "weight_g" in sd:
            out["mlp.%d.weight" % i] = _fold_weight_norm(sd[base + "weight_g"].float(), sd[base + "weight_v"].float())
        else:
            out["mlp.%d.weight" % i] = sd[base + "weight"]
        out["mlp.%d.bias" % i] = sd[base + "bias"]
    return out


def to_published_state_dict(module) -> Dict[str, object]:
    """Our module -> the published key layout (weight_g = row norms, weight_v = W; duplicate decoder keys).

    Used by tools/train_small_nsm.py so that our own models are saved in exactly the published format.
    """
    import torch

    sd = {}
    n = len(module.deconvs)
    sd["vae_decoder.fc.weight"] = module.fc.weight.detach().clone()
    sd["vae_decoder.fc.bias"] = module.fc.bias.detach().clone()
    for i in range(n):
        for p in ("weight", "bias"):
            sd["vae_decoder.layers.%d.%s" % (2 * i, p)] = getattr(module.deconvs[i], p).detach().clone()
            sd["vae_decoder.layers.%d.%s" % (2 * i + 1, p)] = getattr(module.norms[i], p).detach().clone()
    sd["vae_decoder.layers.%d.0.weight" % (2 * n)] = module.final.weight.detach().clone()
    sd["vae_decoder.layers.%d.0.bias" % (2 * n)] = module.final.bias.detach().clone()
    for k in list(sd):
        sd[k.replace("vae_decoder.layers", "vae_decoder.decoder")] = sd[k]
    for i, lin in enumerate(module.mlp):
        w = lin.weight.detach().clone()
        sd["sdf_decoder.layers.%d.weight_g" % i] = torch.linalg.vector_norm(w, dim=1, keepdim=True)
        sd["sdf_decoder.layers.%d.weight_v" % i] = w
        sd["sdf_decoder.layers.%d.bias" % i] = lin.bias.detach().clone()
    return sd
