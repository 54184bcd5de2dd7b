"""Fit behaviour on real femurs with our own small NSM (Testing/fixtures/nsm_small, trained by
tools/train_small_nsm.py on femurs 1-4 of ../shared/data/pymskt/femur_meshes; femur 5 held out)."""
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.errors import NsmError  # noqa: E402
from KneePipelineLib.shape import load_nsm  # noqa: E402
from KneePipelineLib.shape.meshing import polydata_arrays, polydata_from_arrays  # noqa: E402
from KneePipelineLib.shape.prepare import MIRROR, signed_volume, transform_polydata  # noqa: E402

SMALL = Path(__file__).resolve().parent / "fixtures" / "nsm_small"
ITER = 60            # early stopping usually ends the fit sooner
SAMPLES = 3000       # points per step (the config's default, 20 000, uses every vertex: slower)
LR_UPDATES = 3       # the learning rate is divided every ITER // LR_UPDATES = 20 steps
RES = 128            # mesh grid (model units 2/127, ~1 mm on these femurs); the pipeline default is finer


def read(path):
    import vtk

    r = vtk.vtkPolyDataReader()
    r.SetFileName(str(path))
    r.Update()
    return r.GetOutput()


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_nsm(SMALL, device="cpu")


@pytest.fixture(scope="module")
def short(model):
    """Short-fit settings: the config's, with fewer steps and points."""
    return model.recon_settings.with_overrides(iterations=ITER, samples=SAMPLES, patience=20, n_lr_updates=LR_UPDATES)


@pytest.fixture(scope="module")
def held_out(femur_meshes_dir):
    info = json.loads((SMALL / "training_info.json").read_text())
    name = "%d_RIGHT_femur_Nov_02_2021.vtk" % info["held_out"]
    assert name not in info["trained_on"]
    return read(femur_meshes_dir / name)


@pytest.fixture(scope="module")
def right_fit(model, held_out, short):
    return model.fit(held_out, laterality="right", seed=3, settings=short, mesh_resolution=RES)


def test_fixture_is_small_and_in_published_format():
    files = [p for p in SMALL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5e6
    assert (SMALL / "model_params_config.json").is_file() and list((SMALL / "model").glob("*.pth"))


def test_held_out_femur_fits_within_1mm(right_fit):
    """ASSD both ways between the (unclipped, already joint-cropped) held-out femur and the reconstruction,
    in patient mm, and neither one-sided mean hides a large error in the other direction."""
    assert right_fit.assd_mm["bone"] <= 1.0
    parts = right_fit.report["assd_parts"]["bone"]
    assert parts["input_to_model_mean_mm"] <= 1.0 and parts["model_to_input_mean_mm"] <= 1.0
    assert right_fit.iterations <= ITER and len(right_fit.loss_history) == right_fit.iterations
    assert min(right_fit.loss_history) < right_fit.loss_history[0]
    pts, tri = polydata_arrays(right_fit.meshes["bone"])
    assert signed_volume(pts, tri) > 0          # outward normals in patient mm


def test_reconstruction_is_one_closed_surface_without_interior_sheets(model, right_fit):
    """The diagnosis of the old fixture's 2.5 mm ASSD: SDF ~ 0 inside the bone gave spurious internal
    zero crossings. The decoded SDF must be clearly negative deep inside the fitted femur."""
    from KneePipelineLib.shape.icp import apply

    pts, tri = polydata_arrays(right_fit.meshes["bone"])
    from KneePipelineLib.shape.prepare import boundary_edge_fraction
    assert boundary_edge_fraction(tri) == 0.0
    inside = apply(right_fit.transform, pts.mean(0)[None])
    assert model.sdf(right_fit.latent, inside)[0, 0] < -0.05


def test_same_seed_same_latent(model, held_out, right_fit, short):
    again = model.fit(held_out, laterality="right", seed=3, settings=short, mesh_resolution=0)   # latent only
    assert again.meshes == {} and again.assd_mm == {}
    assert np.array_equal(again.latent, right_fit.latent)
    assert np.allclose(again.transform, right_fit.transform)


def test_mirrored_left_knee_gives_same_latent(model, held_out, right_fit, short):
    left = transform_polydata(held_out, MIRROR)           # the same femur as a left knee
    fit = model.fit(left, laterality="left", seed=3, settings=short, mesh_resolution=64)
    assert "reference mirrors without reversing" in fit.report["left_knee_winding"]
    scale = np.linalg.norm(right_fit.latent) + 1e-9
    assert np.linalg.norm(fit.latent - right_fit.latent) / scale < 0.05
    assert np.linalg.det(fit.transform[:3, :3]) < 0                  # the mirror is in the transform
    lp, lt = polydata_arrays(fit.meshes["bone"])
    assert signed_volume(lp, lt) > 0                                 # still outward on the left side
    rp, _ = polydata_arrays(right_fit.meshes["bone"])
    assert abs(lp[:, 0].mean() + rp[:, 0].mean()) < 1.0              # lies where the left femur is


def test_sdf_api_and_planes_once(model):
    z = np.zeros(model.latent_size)
    xyz = np.random.default_rng(0).uniform(-1, 1, (1000, 3))
    out = model.sdf(z, xyz)
    assert out.shape == (1000, 1) and out.dtype == np.float32
    assert np.allclose(out[:10], model.sdf(z, xyz[:10]), atol=1e-6)
    assert out.min() < 0 < out.max()                                 # the mean shape has an inside


def test_empty_mesh_is_refused(model):
    with pytest.raises(NsmError):
        model.fit(polydata_from_arrays(np.zeros((0, 3)), np.zeros((0, 3), int)))


def test_open_mesh_warns_but_fits(model, held_out):
    pts, tri = polydata_arrays(held_out)
    warnings = []
    fit = model.fit(polydata_from_arrays(pts, tri[50:]), seed=0, iterations=3, samples=500, mesh_resolution=0,
                    warn=warnings.append)
    assert warnings and "open" in warnings[0] and fit.report["open_edge_fraction"] > 0


def test_narrow_band_grid_equals_full_evaluation_near_the_surface(model):
    """The coarse-to-fine grid is exact wherever the SDF is near 0, so its contour equals the full grid's."""
    from KneePipelineLib.shape.meshing import _axis, contour, evaluate_grid, sdf_volumes

    planes = model.planes(np.zeros(model.latent_size))
    stats = {}
    band = sdf_volumes(model.decoder, planes, resolution=80, coarse=40, stats=stats)[0]
    ax = _axis(80)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    full = evaluate_grid(model.decoder, planes, g).reshape(80, 80, 80)
    near = np.abs(full) < 2 * 2.0 / 79
    assert near.sum() > 1000 and np.allclose(band[near], full[near], atol=1e-6)
    clear = np.abs(full) > 1e-5
    assert np.array_equal(np.sign(band[clear]), np.sign(full[clear]))
    assert stats["fraction_of_full_grid"] < 0.5 and stats["levels"] == [40, 80]
    from KneePipelineLib.shape.fit import point_to_surface

    a, at = polydata_arrays(contour(band))
    b, bt = polydata_arrays(contour(full))
    assert abs(len(a) - len(b)) <= 2
    assert point_to_surface(a, b, bt).max() < 1e-4 and point_to_surface(b, a, at).max() < 1e-4


def test_point_to_surface_is_exact_against_vtk(held_out):
    from KneePipelineLib.shape.fit import point_to_surface, signed_distance

    pts, tri = polydata_arrays(held_out)
    rng = np.random.default_rng(1)
    q = pts[rng.choice(len(pts), 3000)] + rng.normal(scale=2.0, size=(3000, 3))
    ref = np.abs(signed_distance(q, pts, tri))
    assert np.allclose(point_to_surface(q, pts, tri), ref, atol=1e-9)


def test_assd_compares_a_clipped_input_like_with_like():
    """A sphere (r 30 mm) clipped at z = 10 mm as the 'input' and the whole sphere as the 'reconstruction':
    the model surface beyond the clip plane is left out, so the ASSD is ~0; without the plane it is not."""
    import vtk

    from KneePipelineLib.shape.fit import clipped_assd

    src = vtk.vtkSphereSource()
    src.SetRadius(30.0), src.SetThetaResolution(120), src.SetPhiResolution(120)
    src.Update()
    pts, tri = polydata_arrays(src.GetOutput())
    keep = (pts[:, 2] <= 10.0)[tri].all(1)
    plane = {"origin": [0.0, 0.0, 10.0], "normal": [0.0, 0.0, 1.0]}
    d, parts = clipped_assd(pts, tri[keep], pts, tri, plane)
    assert d < 0.2 and parts["model_to_input_mean_mm"] < 0.2
    d_all, parts_all = clipped_assd(pts, tri[keep], pts, tri, None)
    assert d_all > 1.0 and parts_all["model_to_input_mean_mm"] > 1.0 and parts_all["input_to_model_mean_mm"] < 1e-9


def test_bf16_fit_gives_the_same_shape(model, held_out, right_fit, short):
    """The optional bfloat16 fit (not the default) lands on the fp32 fit's shape: ASSD within 0.05 mm,
    latent within 5 % (bench/bench_nsm.py: 0.0004 mm and < 1 % with the published sampling). Where the CPU
    has no native bf16 (emulated: ~70 CPU-s for this fit on an AVX2-only CPU) both fits take 20 steps of 1000
    points and mesh on a 64^3 grid: the same comparison on a shorter fit."""
    from KneePipelineLib.segmentation.cpu_speed import native_bf16

    if native_bf16():
        settings, res, ref = short, RES, right_fit
    else:
        settings, res = model.recon_settings.with_overrides(iterations=20, samples=1000, patience=20, n_lr_updates=2), 64
        ref = model.fit(held_out, laterality="right", seed=3, settings=settings, mesh_resolution=res)
    fit = model.fit(held_out, laterality="right", seed=3, settings=settings, mesh_resolution=res, precision="bf16")
    assert fit.report["precision"] == "bf16" and ref.report["precision"] == "fp32"
    assert abs(fit.assd_mm["bone"] - ref.assd_mm["bone"]) < 0.05
    scale = np.linalg.norm(ref.latent)
    assert np.linalg.norm(fit.latent - ref.latent) / scale < 0.05
    assert not np.array_equal(fit.latent, ref.latent)          # it did run in another precision
