"""Decoder equivalence: a published-layout checkpoint loaded by our code gives the SDF of an independent,
straightforward evaluation of the published architecture (REFERENCE §7) written here with plain torch ops."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.errors import ModelInvalidError, ModelMissingError  # noqa: E402
from KneePipelineLib.shape import load_nsm  # noqa: E402

SMALL = {"latent_size": 8, "objects_per_decoder": 2, "conv_hidden_dims": [16, 16, 16], "conv_deep_image_size": 2,
         "sdf_latent_size": 8, "sdf_hidden_dims": [32, 32, 32], "conv_norm": True, "conv_norm_type": "layer",
         "conv_start_with_mlp": True, "weight_norm": True, "final_activation": "tanh", "activation": "relu",
         "sum_conv_output_features": True, "mesh_names": ["bone", "cart"], "model_type": "triplanar"}
FULL = dict(SMALL, latent_size=512, conv_hidden_dims=[512] * 5, sdf_latent_size=128, sdf_hidden_dims=[512] * 3)


def published_state_dict(cfg, seed=0):
    """Random weights with the published key names and shapes, duplicates and weight_g/weight_v included."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=None):
        fan = shape[1] if len(shape) > 1 else shape[0]
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1.0 / np.sqrt(fan))

    L, C, s, F, n = cfg["latent_size"], cfg["conv_hidden_dims"], cfg["conv_deep_image_size"], cfg["sdf_latent_size"], cfg["objects_per_decoder"]
    sd = {"vae_decoder.fc.weight": r(C[0] * s * s, L), "vae_decoder.fc.bias": r(C[0] * s * s, scale=0.1)}
    cin = C[0]
    for i, c in enumerate(C):
        s *= 2
        sd["vae_decoder.layers.%d.weight" % (2 * i)] = r(cin, c, 3, 3, scale=1.0 / np.sqrt(cin * 9 / 4))
        sd["vae_decoder.layers.%d.bias" % (2 * i)] = r(c, scale=0.1)
        sd["vae_decoder.layers.%d.weight" % (2 * i + 1)] = 1.0 + 0.2 * r(c, s, s, scale=1.0)
        sd["vae_decoder.layers.%d.bias" % (2 * i + 1)] = r(c, s, s, scale=0.1)
        cin = c
    k = 2 * len(C)
    sd["vae_decoder.layers.%d.0.weight" % k] = r(3 * F, cin, 3, 3, scale=1.0 / np.sqrt(cin * 9))
    sd["vae_decoder.layers.%d.0.bias" % k] = r(3 * F, scale=0.1)
    for key in list(sd):
        if key.startswith("vae_decoder.layers."):
            sd[key.replace("vae_decoder.layers.", "vae_decoder.decoder.")] = sd[key].clone()
    dims = [F + 3] + cfg["sdf_hidden_dims"] + [n]
    for i in range(len(dims) - 1):
        sd["sdf_decoder.layers.%d.weight_v" % i] = r(dims[i + 1], dims[i], scale=1.0)
        sd["sdf_decoder.layers.%d.weight_g" % i] = (torch.rand(dims[i + 1], 1, generator=g) + 0.5)
        sd["sdf_decoder.layers.%d.bias" % i] = r(dims[i + 1], scale=0.1)
    return sd


def write_model(folder, cfg, sd, epoch=7):
    (folder / "model").mkdir(parents=True)
    (folder / "model_params_config.json").write_text(json.dumps(cfg))
    torch.save({"epoch": epoch, "model": sd, "optimizer": {"state": {}}}, str(folder / "model" / ("%d.pth" % epoch)))
    return folder


def bilinear(plane, u, v):
    """plane (F, H, W) sampled at u (width) and v (height) in [-1, 1], align_corners=True."""
    H, W = plane.shape[1:]
    x = (u + 1) / 2 * (W - 1)
    y = (v + 1) / 2 * (H - 1)
    x0 = torch.clamp(torch.floor(x), 0, W - 2).long()
    y0 = torch.clamp(torch.floor(y), 0, H - 2).long()
    fx, fy = x - x0, y - y0
    p00, p01 = plane[:, y0, x0], plane[:, y0, x0 + 1]
    p10, p11 = plane[:, y0 + 1, x0], plane[:, y0 + 1, x0 + 1]
    return (p00 * (1 - fx) * (1 - fy) + p01 * fx * (1 - fy) + p10 * (1 - fx) * fy + p11 * fx * fy).t()


def reference_sdf(sd, cfg, z, xyz, dtype=None):
    """Straightforward evaluation, planes recomputed here, weight norm from g and v."""
    import torch.nn.functional as Fn

    dtype = dtype or torch.float64
    z = torch.as_tensor(z, dtype=dtype)
    x = torch.as_tensor(xyz, dtype=dtype)
    P = {k: v.to(dtype) for k, v in sd.items()}
    C, s = cfg["conv_hidden_dims"], cfg["conv_deep_image_size"]
    h = (P["vae_decoder.fc.weight"] @ z + P["vae_decoder.fc.bias"]).reshape(1, C[0], s, s)
    for i in range(len(C)):
        h = Fn.conv_transpose2d(h, P["vae_decoder.layers.%d.weight" % (2 * i)], P["vae_decoder.layers.%d.bias" % (2 * i)],
                                stride=2, padding=1, output_padding=1)
        w, b = P["vae_decoder.layers.%d.weight" % (2 * i + 1)], P["vae_decoder.layers.%d.bias" % (2 * i + 1)]
        mu = h.mean(dim=(1, 2, 3), keepdim=True)
        var = h.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
        h = (h - mu) / torch.sqrt(var + 1e-5) * w + b
    k = 2 * len(C)
    h = torch.tanh(Fn.conv2d(h, P["vae_decoder.layers.%d.0.weight" % k], P["vae_decoder.layers.%d.0.bias" % k], padding=1))[0]
    F = cfg["sdf_latent_size"]
    xz, yz, xy = h[:F], h[F:2 * F], h[2 * F:]
    p = torch.clamp(x / 1.10001, -1, 1)
    feat = bilinear(xz, p[:, 0], p[:, 2]) + bilinear(yz, p[:, 1], p[:, 2]) + bilinear(xy, p[:, 0], p[:, 1])
    a = torch.cat([feat, x], 1)
    n = len(cfg["sdf_hidden_dims"]) + 1
    for i in range(n):
        v, g = P["sdf_decoder.layers.%d.weight_v" % i], P["sdf_decoder.layers.%d.weight_g" % i]
        W = g * v / v.norm(dim=1, keepdim=True)
        a = a @ W.t() + P["sdf_decoder.layers.%d.bias" % i]
        a = torch.tanh(a) if i == n - 1 else torch.relu(a)
    return a.numpy()


def points(n, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.uniform(-1.2, 1.2, (n, 3)), [[1.1, -1.1, 0.3], [-1.3, 0.0, 1.5]]])


def test_small_config_matches_reference(tmp_path):
    torch.set_num_threads(1)
    sd = published_state_dict(SMALL, seed=1)
    model = load_nsm(write_model(tmp_path / "m", SMALL, sd), device="cpu")
    assert model.latent_size == 8 and model.object_names == ("bone", "cartilage") and model.epoch == 7
    for seed in range(3):
        z = np.random.default_rng(seed).normal(size=8)
        xyz = points(500, seed)
        ours = model.sdf(z, xyz)
        ref = reference_sdf(sd, SMALL, z, xyz)
        assert ours.shape == (502, 2)
        assert np.abs(ours - ref).max() < 1e-5
        assert np.std(ref) > 1e-3          # not a degenerate (saturated / constant) network


def test_full_size_published_architecture_matches_reference(tmp_path):
    torch.set_num_threads(2)
    sd = published_state_dict(FULL, seed=2)
    model = load_nsm(write_model(tmp_path / "m", FULL, sd, epoch=2000), device="cpu")
    n_params = sum(p.numel() for p in model.decoder.parameters())
    assert 20.5e6 < n_params < 21.2e6      # REFERENCE: 20.8 M parameters
    z = np.random.default_rng(5).normal(scale=0.1, size=512)
    xyz = points(300, 5)
    err = np.abs(model.sdf(z, xyz) - reference_sdf(sd, FULL, z, xyz, dtype=torch.float32)).max()
    assert err < 1e-5


def test_newest_epoch_is_loaded(tmp_path):
    sd = published_state_dict(SMALL, seed=3)
    folder = write_model(tmp_path / "m", SMALL, published_state_dict(SMALL, seed=4), epoch=5)
    torch.save({"epoch": 12, "model": sd, "optimizer": {}}, str(folder / "model" / "12.pth"))
    model = load_nsm(folder, device="cpu")
    assert model.epoch == 12
    z, xyz = np.zeros(8), points(50, 0)
    assert np.abs(model.sdf(z, xyz) - reference_sdf(sd, SMALL, z, xyz)).max() < 1e-5


def test_missing_config_keys_are_named(tmp_path):
    cfg = {k: v for k, v in SMALL.items() if k not in ("latent_size", "sdf_hidden_dims")}
    folder = write_model(tmp_path / "m", cfg, published_state_dict(SMALL))
    with pytest.raises(ModelInvalidError) as e:
        load_nsm(folder, device="cpu")
    assert "latent_size" in e.value.message and "sdf_hidden_dims" in e.value.message


def test_config_not_matching_weights_is_refused(tmp_path):
    folder = write_model(tmp_path / "m", dict(SMALL, latent_size=16), published_state_dict(SMALL))
    with pytest.raises(ModelInvalidError):
        load_nsm(folder, device="cpu")


def test_missing_state_dict_keys_are_named(tmp_path):
    sd = published_state_dict(SMALL)
    del sd["sdf_decoder.layers.2.weight_g"]
    folder = write_model(tmp_path / "m", SMALL, sd)
    with pytest.raises(ModelInvalidError) as e:
        load_nsm(folder, device="cpu")
    assert "sdf_decoder.layers.2" in e.value.message


def test_missing_folder_parts(tmp_path):
    with pytest.raises(ModelMissingError):
        load_nsm(tmp_path, device="cpu")
    (tmp_path / "model_params_config.json").write_text(json.dumps(SMALL))
    with pytest.raises(ModelMissingError):
        load_nsm(tmp_path, device="cpu")


def test_bone_cartilage_model_needs_cartilage(tmp_path):
    from KneePipelineLib.errors import NsmError
    from KneePipelineLib.shape.meshing import polydata_from_arrays

    model = load_nsm(write_model(tmp_path / "m", SMALL, published_state_dict(SMALL)), device="cpu")
    bone = polydata_from_arrays(np.random.default_rng(0).normal(size=(200, 3)), np.arange(600).reshape(-1, 3) % 200)
    with pytest.raises(NsmError) as e:
        model.fit(bone, None)
    assert "cartilage" in e.value.message


def test_wrong_latent_size_for_sdf(tmp_path):
    from KneePipelineLib.errors import NsmError

    model = load_nsm(write_model(tmp_path / "m", SMALL, published_state_dict(SMALL)), device="cpu")
    with pytest.raises(NsmError):
        model.sdf(np.zeros(9), np.zeros((3, 3)))


@pytest.mark.parametrize("summed", [True, False])
def test_fit_path_matches_plain_autograd(tmp_path, summed):
    """The fitting path (texels gathered once per vertex, hand-written MLP backward with reused buffers)
    gives the SDF and the latent gradient of plain autograd through ``planes`` + ``query``, including points
    outside [-1.1, 1.1] (border) and on the grid edges, on two consecutive steps (buffers reused)."""
    from KneePipelineLib.shape.fast import FastEvaluator

    torch.set_num_threads(1)
    cfg = dict(SMALL, sum_conv_output_features=summed)
    sd = published_state_dict(cfg, seed=6)
    if not summed:                          # the MLP reads the three planes' features side by side
        sd["sdf_decoder.layers.0.weight_v"] = torch.randn(32, 3 * cfg["sdf_latent_size"] + 3,
                                                          generator=torch.Generator().manual_seed(6))
    model = load_nsm(write_model(tmp_path / "m", cfg, sd), device="cpu")
    dec = model.decoder
    ev = FastEvaluator(dec)
    xyz = torch.as_tensor(points(700, 6), dtype=torch.float32)
    xyz[:3] = torch.tensor([[1.10001, -1.10001, 0.0], [0.0, 1.10001, -1.10001], [1.10001, 1.10001, 1.10001]])
    idx, w = ev.corners(xyz)
    target = torch.as_tensor(np.random.default_rng(6).uniform(-0.1, 0.1, (len(xyz), 2)), dtype=torch.float32)
    for step in range(2):
        z = torch.as_tensor(np.random.default_rng(step).normal(scale=0.5, size=8), dtype=torch.float32)
        grads, sdfs = [], []
        for fast in (False, True):
            zz = z.clone().requires_grad_(True)
            pred = ev.sdf(ev.planes(zz), idx, w, xyz) if fast else dec.query(dec.planes(zz), xyz)
            (pred - target).abs().sum(1).mean().backward()
            grads.append(zz.grad.numpy())
            sdfs.append(pred.detach().numpy())
        assert np.abs(sdfs[0] - sdfs[1]).max() < 1e-5
        assert np.abs(grads[0] - grads[1]).max() < 1e-5 * max(1.0, np.abs(grads[0]).max())
        assert np.abs(grads[0]).max() > 1e-4                     # the test sees a real gradient


def test_unknown_precision_is_refused(tmp_path):
    from KneePipelineLib.errors import ConfigurationError
    from KneePipelineLib.shape.fast import FastEvaluator

    model = load_nsm(write_model(tmp_path / "m", SMALL, published_state_dict(SMALL)), device="cpu")
    with pytest.raises(ConfigurationError):
        FastEvaluator(model.decoder, "fp8")
    with pytest.raises(ConfigurationError):
        model.fit(None, None, precision="half")
