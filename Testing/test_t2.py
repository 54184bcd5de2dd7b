"""T2 mapping: MESE fit accuracy on synthetic Rician data, qDESS estimator, regional and deep/superficial
T2, resampling, the real GE MESE series, bad inputs and the CLI."""
import json
import math
import shutil
import time
import zipfile

import numpy as np
import pytest

from KneePipelineLib import labels as L
from KneePipelineLib.errors import InvalidInputError, T2Error
from KneePipelineLib.io.readers import write_volume
from KneePipelineLib.io.volume import Volume
from KneePipelineLib import t2 as T2


def _rician(a, sigma, rng):
    return np.abs(a + sigma * rng.standard_normal(a.shape) + 1j * sigma * rng.standard_normal(a.shape))


def _synthetic(te, t2_map, s0=1000.0, snr=50.0, seed=0, spacing=(0.5, 0.5, 2.0)):
    rng = np.random.default_rng(seed)
    t2 = np.where(t2_map > 0, t2_map, 1.0)
    a = np.where(t2_map > 0, s0 * np.exp(-te[:, None, None, None] / t2), 0.0)
    img = _rician(a, s0 / snr, rng).astype(np.float32)
    geom = Volume(img[0], spacing, (10.0, -20.0, 5.0), np.eye(3))
    return T2.MultiEcho(img, np.asarray(te, float), geom, {})


def _ramp_phantom(shape=(8, 40, 40)):
    t2 = np.zeros(shape)
    m = shape[1] // 8
    n = shape[2] - 2 * m
    t2[:, m:shape[1] - m, m:shape[2] - m] = np.linspace(20.0, 60.0, n)[None, None, :]
    return t2


# -- MESE ---------------------------------------------------------------------------------------
def test_mese_synthetic_rician_snr50_median_error_below_1ms():
    te = np.arange(1, 17) * 5.0                       # 16 echoes, 5..80 ms
    truth = _ramp_phantom()
    me = _synthetic(te, truth)
    maps = T2.fit_mese(me, drop_first_echo=False)
    roi = truth > 0
    err = maps.t2_ms.array[roi] - truth[roi]
    mae = float(np.nanmedian(np.abs(err)))
    print("MESE synthetic SNR 50: median |error| %.3f ms, median error %+.3f ms" % (mae, np.nanmedian(err)))
    assert mae <= 1.0
    assert maps.valid.array[roi].mean() > 0.99
    assert not maps.valid.array[~roi].any()           # pure background is never a valid T2
    assert np.isnan(maps.t2_ms.array[~maps.valid.array]).all()
    # background noise estimate (Rayleigh) is close to the truth (sigma = 20)
    assert abs(maps.params["noise_sigma"] - 20.0) < 2.0
    assert maps.method == "loglinear-wls+lm-noise-floor"
    assert maps.t2_ms.same_geometry(me.geometry)


def test_noise_floor_refinement_removes_bias_at_short_t2():
    te = np.arange(1, 9) * 10.0                        # last echo of T2 = 20 ms sits at the noise floor
    truth = np.zeros((6, 30, 30))
    truth[:, 5:25, 5:25] = 20.0
    me = _synthetic(te, truth, seed=3)
    roi = truth > 0
    lin = T2.fit_mese(me, drop_first_echo=False, refine=False)
    ref = T2.fit_mese(me, drop_first_echo=False, refine=True)
    b_lin = float(np.nanmedian(lin.t2_ms.array[roi]) - 20.0)
    b_ref = float(np.nanmedian(ref.t2_ms.array[roi]) - 20.0)
    print("bias at T2 = 20 ms: log-linear %+.3f ms, noise-floor refined %+.3f ms" % (b_lin, b_ref))
    assert b_lin > 0.4                                 # the floor lengthens the log-linear T2
    assert abs(b_ref) < 0.5 * abs(b_lin)


def test_drop_first_echo_ignores_a_contaminated_first_echo_and_quality_masks():
    te = np.arange(1, 9) * 10.0
    truth = np.zeros((4, 20, 20))
    truth[:, 2:18, 2:10] = 40.0
    truth[:, 2:18, 10:18] = 300.0                      # fluid-like: outside the (0, 100] range
    me = _synthetic(te, truth, snr=200.0)
    me.images[0] *= 1.3                                # stimulated-echo excess on echo 1
    kept = T2.fit_mese(me, drop_first_echo=False)
    dropped = T2.fit_mese(me, drop_first_echo=True)
    roi = truth == 40.0
    assert abs(np.nanmedian(dropped.t2_ms.array[roi]) - 40.0) < 0.5
    assert abs(np.nanmedian(kept.t2_ms.array[roi]) - 40.0) > 2.0
    assert dropped.params["echo_times_used_ms"] == [float(t) for t in te[1:]]
    long_t2 = truth == 300.0
    assert not dropped.valid.array[long_t2].any()
    assert dropped.params["n_outside_t2_range"] >= long_t2.sum() * 0.9
    strict = T2.fit_mese(me, r2_min=1.01)              # an impossible R² threshold leaves nothing valid
    assert not strict.valid.array.any()


# -- qDESS --------------------------------------------------------------------------------------
def _hand_qdess(s1, s2, tr_ms, te_ms, flip_deg, tg_us=None, gl_area=None, t1_ms=1200.0, d=1.25e-9):
    TR, TE, T1 = tr_ms / 1000.0, te_ms / 1000.0, t1_ms / 1000.0
    a = math.radians(flip_deg)
    if tg_us is None:
        E, c1 = math.exp(-TR / T1), 0.0
    else:
        Tg = tg_us * 1e-6
        Gl = gl_area / (Tg * 1e6) * 100.0
        dk = 4258.0 * 2.0 * math.pi * Gl * Tg
        E = math.exp(-TR / T1 - TR * dk ** 2 * d)
        c1 = (TR - Tg / 3.0) * dk ** 2 * d
    k = math.sin(a / 2) ** 2 * (1 + E) / (1 - math.cos(a) * E)
    return -2000.0 * (TR - TE) / (math.log((s2 / s1) / k) + c1)


def test_qdess_matches_hand_computed_values():
    s1 = np.array([1000.0, 800.0, 1200.0])
    s2 = np.array([250.0, 150.0, 400.0])
    vol1 = Volume(s1.reshape(1, 1, 3), (1, 1, 1), (0, 0, 0), np.eye(3))
    vol2 = vol1.with_array(s2.reshape(1, 1, 3))
    # With the GE gradient tags: the diffusion-corrected estimator
    p = T2.qdess_params({"repetition_time_ms": 18.0, "echo_times_ms": [5.5, 30.5], "flip_angle_deg": 20.0,
                         "ge_gradient_duration_us": 3400.0, "ge_gradient_area": 3132.0})
    maps = T2.qdess_t2(vol1, vol2, p, t2_range_ms=(0.0, 1000.0), min_signal=0.0)
    want = [_hand_qdess(a, b, 18.0, 5.5, 20.0, 3400.0, 3132.0) for a, b in zip(s1, s2)]
    # hand computation of the first value, written out: Gl = 3132/3400*100 = 92.1176 G/m,
    # dkL = 4258*2*pi*92.1176*0.0034 = 8379.3 rad/m, dkL^2*D = 8.7767e-2 /s, E = exp(-0.015 - 0.0015798)
    # = 0.983556, k = sin^2(10°)*(1+E)/(1-cos(20°)*E) = 0.0301537*1.983556/0.0757539 = 0.78955,
    # c1 = (0.018-0.0034/3)*0.087767 = 0.0014804, T2 = -2000*0.0125/(ln(0.25/0.78955)+c1) = 21.7623 ms
    assert want[0] == pytest.approx(21.76, abs=0.02)
    np.testing.assert_allclose(maps.t2_ms.array.ravel(), want, rtol=1e-5)
    assert maps.params["estimator"] == "sveinsson-diffusion"
    assert maps.params["parameter_sources"]["tg_us"] == "vendor_tag"
    # Without the tags: the low-spoiling fallback, recorded as such
    p2 = T2.qdess_params({}, tr_ms=18.0, te_ms=5.5, flip_deg=20.0)
    maps2 = T2.qdess_t2(vol1, vol2, p2, t2_range_ms=(0.0, 1000.0), min_signal=0.0)
    want2 = [_hand_qdess(a, b, 18.0, 5.5, 20.0) for a, b in zip(s1, s2)]
    np.testing.assert_allclose(maps2.t2_ms.array.ravel(), want2, rtol=1e-5)
    assert maps2.params["estimator"].startswith("low-spoiling")
    assert maps2.params["parameter_sources"]["tr_ms"] == "user"
    assert maps2.method.startswith("qdess:low-spoiling")


def test_qdess_missing_parameters_are_named():
    v = Volume(np.ones((2, 2, 2), np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    with pytest.raises(T2Error) as ei:
        T2.qdess_t2(v, v, T2.qdess_params({}))
    msg = str(ei.value)
    assert "TR" in msg and "TE" in msg and "flip angle" in msg
    with pytest.raises(T2Error) as ei:
        T2.qdess_t2(v, v, T2.qdess_params({}, te_ms=5.0, flip_deg=20.0))
    assert "TR" in str(ei.value) and "flip" not in str(ei.value).split("(")[0].split("needs")[1]
    with pytest.raises(T2Error) as ei:
        T2.qdess_t2(v, v, T2.qdess_params({}, tr_ms=18, te_ms=5, flip_deg=20), allow_fallback=False)
    assert "Tg" in str(ei.value) and "GlArea" in str(ei.value)


# -- regional -----------------------------------------------------------------------------------
def _regional_phantom():
    """A femur slab (7) under femoral cartilage 8 voxels thick split in two sub-regions (11, 12);
    T2 30 ms in the deep half, 50 ms in the superficial half (+10 ms in region 12); a tibia (8) with
    medial tibial cartilage (3) of uniform T2 35 ms on the other side."""
    shape = (40, 30, 40)            # (k, j, i); k is the depth axis
    reg = np.zeros(shape, np.uint8)
    t2 = np.full(shape, np.nan, np.float32)
    # plates span the whole (j, i) extent: no side faces, so depth is purely along k
    reg[2:12, :, :] = L.FEMUR
    reg[12:20, :, :20] = 11
    reg[12:20, :, 20:] = 12
    t2[12:16, :, :] = 30.0
    t2[16:20, :, :] = 50.0
    t2[12:20, :, 20:] += 10.0
    reg[28:38, :, :] = L.TIBIA
    reg[24:28, :, :] = L.MEDIAL_TIBIAL_CARTILAGE
    t2[24:28] = 35.0
    t2[~np.isin(reg, (11, 12, 3))] = np.nan
    spacing = (0.4, 0.4, 0.5)
    rv = Volume(reg, spacing, (0, 0, 0), np.eye(3))
    valid = np.isfinite(t2)
    maps = T2.T2Maps(rv.with_array(t2), rv.with_array(np.ones(shape, np.float32)),
                     rv.with_array(np.ones(shape, np.float32)), rv.with_array(valid), "test", {})
    return maps, rv


def test_regional_t2_and_deep_superficial_layers():
    maps, regions = _regional_phantom()
    rows, _ = T2.regional_t2(maps, regions)
    get = {(r["region"], r["layer"]): r for r in rows}
    assert get[("femur_trochlea", "deep")]["t2_mean_ms"] == pytest.approx(30.0)
    assert get[("femur_trochlea", "superficial")]["t2_mean_ms"] == pytest.approx(50.0)
    assert get[("femur_medial_weightbearing", "deep")]["t2_mean_ms"] == pytest.approx(40.0)
    assert get[("femur_medial_weightbearing", "superficial")]["t2_median_ms"] == pytest.approx(60.0)
    allrow = get[("femur_trochlea", "all")]
    assert allrow["t2_mean_ms"] == pytest.approx(40.0)
    assert allrow["n_voxels"] == 8 * 30 * 20
    assert allrow["t2_std_ms"] == pytest.approx(np.std([30.0] * 2400 + [50.0] * 2400, ddof=1), rel=1e-6)
    assert get[("femoral_cartilage", "all")]["n_voxels"] == 8 * 30 * 40
    assert get[("femoral_cartilage", "all")]["code"] == L.FEMORAL_CARTILAGE
    assert get[("tibia_medial", "all")]["t2_mean_ms"] == pytest.approx(35.0)
    assert get[("femur_trochlea", "deep")]["n_voxels"] == get[("femur_trochlea", "superficial")]["n_voxels"]
    for r in rows:
        assert set(r) >= {"region", "code", "layer", "t2_mean_ms", "t2_std_ms", "t2_median_ms", "n_voxels"}
    # the layer split is physical: anisotropic spacing does not move it (depth axis has 0.5 mm voxels)
    layer, _ = T2.cartilage_layers(regions)
    assert (layer[12:16, 2:28, 2:38] == 1).all() and (layer[16:20, 2:28, 2:38] == 2).all()
    # a regions map that already carries +100/+200 layer codes is used as it is
    arr = regions.array.astype(np.int16).copy()
    arr[12:14, :, :20] = 111                            # 2 deep slices only
    arr[14:20, :, :20] = 211
    rows2, _ = T2.regional_t2(maps, regions.with_array(arr))
    g2 = {(r["region"], r["layer"]): r for r in rows2}
    assert g2[("femur_trochlea", "deep")]["n_voxels"] == 2 * 30 * 20
    assert g2[("femur_trochlea", "superficial")]["t2_mean_ms"] == pytest.approx((2 * 30 + 4 * 50) / 6.0)


def test_t2_projected_onto_bone_surface():
    import vtk

    maps, regions = _regional_phantom()
    # the femur block's surface in LPS mm (i -> x 0.4, j -> y 0.4, k -> z 0.5; voxel centres at index*spacing)
    cube = vtk.vtkCubeSource()
    cube.SetBounds(-0.2, 39 * 0.4 + 0.2, -0.2, 29 * 0.4 + 0.2, 2 * 0.5 - 0.25, 11 * 0.5 + 0.25)
    tri = vtk.vtkTriangleFilter()
    tri.SetInputConnection(cube.GetOutputPort())
    sub = vtk.vtkLinearSubdivisionFilter()
    sub.SetInputConnection(tri.GetOutputPort())
    sub.SetNumberOfSubdivisions(4)
    sub.Update()
    poly = sub.GetOutput()
    _, arrays = T2.regional_t2(maps, regions, {"femur": poly, "femoral_cartilage": None})
    assert set(arrays) == {"femur"}
    vals = arrays["femur"]
    assert vals.shape == (poly.GetNumberOfPoints(),)
    from vtk.util.numpy_support import vtk_to_numpy
    pts = vtk_to_numpy(poly.GetPoints().GetData())
    top = np.isclose(pts[:, 2], 11 * 0.5 + 0.25) & (pts[:, 0] > 2.0) & (pts[:, 0] < 7.0) & (pts[:, 1] > 2.0) & (pts[:, 1] < 9.0)
    assert top.sum() > 5
    np.testing.assert_allclose(vals[top], 40.0, atol=1.0)     # mean of deep 30 and superficial 50
    bottom = np.isclose(pts[:, 2], 2 * 0.5 - 0.25)
    assert np.isnan(vals[bottom]).all()                         # no cartilage under the femur


def test_resample_to_segmentation_grid():
    maps, regions = _regional_phantom()
    coarse_t = Volume(np.zeros((20, 15, 20), np.uint8), regions.spacing_mm * 2, regions.origin_mm + 0.1, np.eye(3))
    coarse = T2.resample_to(maps, coarse_t)
    assert coarse.t2_ms.same_geometry(coarse_t)
    assert coarse.params["resampled"]["t2"].startswith("linear")
    assert coarse.params["resampled"]["valid"].startswith("nearest")
    v = coarse.t2_ms.array[coarse.valid.array]
    assert np.all((v >= 30.0 - 1e-3) & (v <= 60.0 + 1e-3))     # no leakage of invalid zeros into the mean
    back = T2.resample_to(coarse, regions)
    rows, _ = T2.regional_t2(coarse, regions)                    # different grid: resampled automatically
    assert "resampled" in back.params
    g = {(r["region"], r["layer"]): r for r in rows}
    assert 30.0 <= g[("femur_trochlea", "all")]["t2_mean_ms"] <= 50.0


# -- real MESE series ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_echoes(mese_dir):
    return T2.load_echoes([mese_dir])


def test_real_mese_loads_as_8_echoes(real_echoes):
    me = real_echoes
    assert me.images.shape == (8, 24, 256, 256)
    np.testing.assert_allclose(me.echo_times_ms, 6.312 * np.arange(1, 9), atol=1e-3)
    np.testing.assert_allclose(me.geometry.spacing_mm[:2], [0.625, 0.625], atol=1e-4)
    assert me.geometry.spacing_mm[2] == pytest.approx(4.0, abs=0.01)   # 3 mm slices with a 1 mm gap
    assert me.source["slice_thickness_mm"] == pytest.approx(3.0)
    assert me.source["manufacturer"].startswith("GE")
    assert me.source["field_strength_t"] == pytest.approx(3.0)
    # sagittal: the slice axis (k) points mostly left-right (LPS x)
    assert abs(me.geometry.direction[0, 2]) > 0.95
    assert not any(k.startswith("patient") for k in me.source)


def test_real_mese_fit_speed_and_cartilage_like_roi(real_echoes):
    t0 = time.perf_counter()
    maps = T2.fit_mese(real_echoes)
    dt = time.perf_counter() - t0
    print("real MESE fit (%d voxels fitted): %.2f s (log-linear %.2f s, refinement %.2f s)"
          % (maps.params["n_fitted"], dt, maps.params["time_loglinear_s"], maps.params["time_refine_s"]))
    # ROI: the central slices and the central half of the field of view (where the joint and its cartilage
    # lie in this knee series), voxels with a near-perfect mono-exponential fit (R² >= 0.95).
    sl = (slice(6, 18), slice(64, 192), slice(64, 192))
    t2 = maps.t2_ms.array[sl]
    roi = np.isfinite(t2) & (maps.r2.array[sl] >= 0.95)
    assert roi.sum() > 10000
    med = float(np.median(t2[roi]))
    print("real MESE central ROI: median T2 %.1f ms over %d voxels" % (med, roi.sum()))
    assert 25.0 <= med <= 70.0


def test_real_mese_zip_with_extensionless_files(mese_dir, tmp_path):
    z = tmp_path / "mese.zip"
    files = sorted(p for p in mese_dir.iterdir() if p.is_file())
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as zf:
        for n, p in enumerate(files[::-1]):                      # reversed order, no extensions
            zf.write(p, "series/IM%04d" % n)
    me = T2.load_echoes([z])
    assert me.n_echo == 8 and me.images.shape[1] == 24
    np.testing.assert_allclose(me.echo_times_ms[[0, -1]], [6.312, 50.496], atol=1e-3)


# -- file inputs and bad inputs ----------------------------------------------------------------
def _write_4d(path, arr4, spacing=(0.5, 0.5, 2.0)):
    import SimpleITK as sitk

    img = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in arr4])
    img.SetSpacing(list(spacing) + [1.0])
    sitk.WriteImage(img, str(path))


def test_4d_and_per_echo_files(tmp_path):
    te = np.array([10.0, 20.0, 30.0, 40.0])
    me = _synthetic(te, _ramp_phantom((4, 20, 20)))
    _write_4d(tmp_path / "echoes.nii.gz", me.images)
    got = T2.load_echoes([tmp_path / "echoes.nii.gz"], list(te))
    np.testing.assert_allclose(got.images, me.images)
    assert got.echo_times_ms.tolist() == te.tolist()
    paths = []
    for n in (2, 0, 3, 1):                                       # any order: sorted by echo time
        p = tmp_path / ("e%d.nrrd" % n)
        write_volume(me.echo(n), p, compress=False)
        paths.append(p)
    got2 = T2.load_echoes(paths, [te[2], te[0], te[3], te[1]])
    np.testing.assert_allclose(got2.images, me.images)


def test_bad_inputs_are_named(tmp_path, mese_dir):
    te = np.array([10.0, 20.0, 30.0])
    me = _synthetic(te, _ramp_phantom((4, 20, 20)))
    one = tmp_path / "one.nii.gz"
    write_volume(me.echo(0), one)
    with pytest.raises(T2Error, match="one echo"):
        T2.load_echoes([one], [10.0])
    other = tmp_path / "other.nii.gz"
    write_volume(Volume(me.images[1], (0.7, 0.7, 2.0), (10.0, -20.0, 5.0), np.eye(3)), other)
    with pytest.raises(InvalidInputError, match="different grid"):
        T2.load_echoes([one, other], [10.0, 20.0])
    _write_4d(tmp_path / "e4.nii.gz", me.images)
    with pytest.raises(T2Error, match="no echo times"):
        T2.load_echoes([tmp_path / "e4.nii.gz"])
    with pytest.raises(T2Error, match="No echo times"):
        T2.load_echoes([one, tmp_path / "e2.nii.gz" if False else one])
    with pytest.raises(T2Error, match="3 echoes but 2 echo times"):
        T2.load_echoes([tmp_path / "e4.nii.gz"], [10.0, 20.0])
    with pytest.raises(T2Error, match="share the echo time"):
        T2.load_echoes([tmp_path / "e4.nii.gz"], [10.0, 10.0, 20.0])
    # a DICOM folder holding only one echo
    single = tmp_path / "single"
    single.mkdir()
    for p in sorted(mese_dir.iterdir())[:200]:
        if p.is_file():
            shutil.copy(p, single / p.name)
    from KneePipelineLib.io import dicom
    groups = dicom.group_by_echo([str(p) for p in single.iterdir()])
    for te_key, fl in groups.items():
        if te_key != min(groups):
            for f in fl:
                (single / f.split("/")[-1]).unlink()
    with pytest.raises(T2Error, match="one echo"):
        T2.load_echoes([single])


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_t2_with_labels_writes_maps_and_strict_json(tmp_path):
    from KneePipelineLib.cli import main

    maps, regions = _regional_phantom()
    te = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    t2 = np.nan_to_num(maps.t2_ms.array, nan=0.0)
    rng = np.random.default_rng(1)
    a = np.where(t2 > 0, 1000.0 * np.exp(-te[:, None, None, None] / np.where(t2 > 0, t2, 1.0)), 0.0)
    img = _rician(a, 10.0, rng).astype(np.float32)
    _write_4d(tmp_path / "echoes.nii.gz", img, spacing=tuple(regions.spacing_mm))
    # the label map in tissue labels (pymskt convention): femoral cartilage, femur, tibial cartilage, tibia
    lab = np.zeros(regions.array.shape, np.uint8)
    lab[np.isin(regions.array, (11, 12))] = 1
    lab[regions.array == L.FEMUR] = 5
    lab[regions.array == L.MEDIAL_TIBIAL_CARTILAGE] = 2
    lab[regions.array == L.TIBIA] = 6
    write_volume(regions.with_array(lab), tmp_path / "labels.nrrd")
    out = tmp_path / "out"
    rc = main(["--quiet-progress", "t2", "--echoes", str(tmp_path / "echoes.nii.gz"), "--echo-times-ms",
               *map(str, te), "--labels", str(tmp_path / "labels.nrrd"), "--label-convention", "pymskt",
               "--keep-first-echo", "--out", str(out)])
    assert rc == 0
    for name in ("t2_ms.nii.gz", "t2_r2.nii.gz", "t2_s0.nii.gz", "t2_valid.nii.gz", "t2_params.json",
                 "t2_regions.csv", "t2_regions.json"):
        assert (out / name).is_file(), name
    text = (out / "t2_regions.json").read_text()
    assert "NaN" not in text
    data = json.loads(text)
    rows = {(r["region"], r["layer"]): r for r in data["rows"]}
    fem = rows.get(("femoral_cartilage", "all"))
    assert fem is not None and 35.0 < fem["t2_mean_ms"] < 55.0
    assert rows[("femoral_cartilage", "deep")]["t2_mean_ms"] < rows[("femoral_cartilage", "superficial")]["t2_mean_ms"]
    assert abs(rows[("tibia_medial", "all")]["t2_median_ms"] - 35.0) < 1.5
    header = (out / "t2_regions.csv").read_text().splitlines()[0]
    assert header == "region,code,layer,t2_mean_ms,t2_std_ms,t2_median_ms,n_voxels"
    json.loads((out / "t2_params.json").read_text())


def test_cli_qdess_without_parameters_fails_clearly(tmp_path, capsys):
    from KneePipelineLib.cli import main

    me = _synthetic(np.array([5.0, 30.0]), _ramp_phantom((4, 20, 20)))
    _write_4d(tmp_path / "qdess.nii.gz", me.images)
    rc = main(["--quiet-progress", "t2", "--echoes", str(tmp_path / "qdess.nii.gz"), "--echo-times-ms", "5", "30",
               "--qdess", "--out", str(tmp_path / "out")])
    assert rc == T2Error("x").exit_code
    err = capsys.readouterr().err
    assert "TR" in err and "flip angle" in err


# -- reference conventions: the plausible-T2 window, echo grouping ---------------------------------------
def test_regional_stats_exclude_t2_at_or_beyond_0_and_80_ms_by_default():
    """OpenMSK steps/t2_mapping.py T2_MIN_VALID = 0, T2_MAX_VALID = 80: valid fits outside (0, 80) ms are
    not cartilage T2 and stay out of the regional means; the window is configurable and can be switched off."""
    maps, regions = _regional_phantom()
    t2 = maps.t2_ms.array.copy()
    tib = regions.array == L.MEDIAL_TIBIAL_CARTILAGE
    idx = np.argwhere(tib)
    for n, value in enumerate([0.0, -4.0, 80.0, 120.0]):   # four outliers among 35 ms voxels
        t2[tuple(idx[n])] = value
    maps = T2.T2Maps(maps.t2_ms.with_array(t2), maps.s0, maps.r2, maps.valid, "test", {})
    get = lambda rows: {(r["region"], r["layer"]): r for r in rows}[("tibia_medial", "all")]
    default = get(T2.regional_t2(maps, regions)[0])
    assert default["t2_mean_ms"] == pytest.approx(35.0) and default["n_voxels"] == int(tib.sum()) - 4
    wide = get(T2.regional_t2(maps, regions, t2_range_ms=(-10.0, 200.0))[0])
    assert wide["n_voxels"] == int(tib.sum()) and wide["t2_mean_ms"] > 35.0
    assert get(T2.regional_t2(maps, regions, t2_range_ms=None)[0])["n_voxels"] == int(tib.sum())


def test_t2_stats_range_is_a_run_option_recorded_in_the_results():
    from KneePipelineLib.errors import ConfigurationError
    from KneePipelineLib.options import RunOptions

    assert RunOptions().t2_stats_range_ms == [0.0, 80.0]
    o = RunOptions(out_dir="x", labels="l", t2_stats_range_ms=[0.0, 100.0])
    assert o.validate().to_argv()[-3:] == ["--t2-stats-range-ms", "0.0", "100.0"]
    for bad in ([80.0, 0.0], [0.0], [0.0, float("nan")]):
        with pytest.raises(ConfigurationError, match="t2-stats-range-ms"):
            RunOptions(out_dir="x", labels="l", t2_stats_range_ms=bad).validate()


def _dicom_series(folder, n_slices=4, echoes=((1, 10.0),), shape=(6, 8), seed=0):
    """A small MR DICOM series written with pydicom: one file per (echo, slice); ``echoes`` lists
    (EchoNumbers, EchoTime) with None for an absent tag."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    n = 0
    for e, (num, te) in enumerate(echoes):
        for z in range(n_slices):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series, study
            ds.FrameOfReferenceUID = frame
            ds.InstanceNumber = n + 1
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]          # sagittal
            ds.ImagePositionPatient = [float(-10 + 3 * z), -20.0, 30.0]
            ds.PixelSpacing, ds.SliceThickness = [0.5, 0.5], 3.0
            if num is not None:
                ds.EchoNumbers = num
            if te is not None:
                ds.EchoTime = te
            ds.Rows, ds.Columns = shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = (rng.integers(100, 1000, shape) // (e + 1)).astype(np.uint16).tobytes()
            pydicom.dcmwrite(str(folder / ("IM%04d" % n)), ds, enforce_file_format=True)
            n += 1
    return folder


def test_dicom_series_without_echo_time_reads_as_one_image(tmp_path):
    from KneePipelineLib.io.readers import read_image

    img = read_image(str(_dicom_series(tmp_path / "s", echoes=((None, None),))))
    assert img.array.shape == (4, 6, 8)
    img = read_image(str(_dicom_series(tmp_path / "s1", echoes=((1, None),))))
    assert img.array.shape == (4, 6, 8)


def test_echoes_grouped_by_echo_numbers_then_echo_time(tmp_path):
    from KneePipelineLib.io import dicom

    # qDESS-like: one EchoTime tag for both echoes, told apart by EchoNumbers (DOSMA's default grouping)
    q = _dicom_series(tmp_path / "q", echoes=((1, 6.0), (2, 6.0)))
    me = T2.load_echoes([q])
    assert me.n_echo == 2 and me.source["echo_grouping"] == "EchoNumbers"
    assert me.images[0].mean() > me.images[1].mean()          # echo 1 first
    # no EchoNumbers: echo time decides (DOSMA's group_by="EchoTime" fallback)
    m = _dicom_series(tmp_path / "m", echoes=((None, 10.0), (None, 20.0), (None, 30.0)))
    me = T2.load_echoes([m])
    assert list(me.echo_times_ms) == [10.0, 20.0, 30.0] and me.source["echo_grouping"] == "EchoTime"
    # EchoNumbers all 1 but the times differ: still three echoes
    files = sorted(str(p) for p in _dicom_series(tmp_path / "o", echoes=((1, 10.0), (1, 20.0), (1, 30.0))).iterdir())
    assert sorted(dicom.group_by_echo(files)) == [10.0, 20.0, 30.0]
    # a series without echo times: one image for --image, and T2 says what is missing
    none = _dicom_series(tmp_path / "n", echoes=((None, None),))
    with pytest.raises(T2Error, match="one echo"):
        T2.load_echoes([none])
