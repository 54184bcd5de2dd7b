"""DOSMA 2D U-Net inference: the reference's slice layouts, physical-space reorientation, geometry round trip,
known-answer segmentation."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.io.volume import Volume  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.registry import ModelEntry, get_model  # noqa: E402
from KneePipelineLib.segmentation import dosma  # noqa: E402
from KneePipelineLib.segmentation.frame import CODE_LPS, frame_map, from_frame  # noqa: E402
from KneePipelineLib.segmentation.keras_h5 import layer_config, model_config, save_keras_h5  # noqa: E402

SIZE = 32
FIX = Path(__file__).resolve().parent / "fixtures" / "keras"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def threshold_model(path, kernel=None, n_classes=2, threshold=0.0):
    """Channels-first Keras-2 file: class 1 where the (filtered) z-scored intensity is > threshold."""
    k = np.zeros((3, 3, 1, n_classes), np.float32)
    if kernel is None:
        k[1, 1, 0, 1] = 20.0
    else:
        k[:, :, 0, 1] = kernel
    layers = [
        layer_config("InputLayer", "input_1", [], batch_input_shape=[None, 1, SIZE, SIZE], dtype="float32"),
        layer_config("Conv2D", "head", ["input_1"], filters=n_classes, kernel_size=[3, 3], strides=[1, 1],
                     padding="same", data_format="channels_first", dilation_rate=[1, 1], groups=1,
                     activation="linear", use_bias=True),
        layer_config("Softmax", "softmax", ["head"], axis=1),
    ]
    bias = np.zeros(n_classes, np.float32)
    bias[1] = -20.0 * threshold
    weights = {"head": {"kernel": k, "bias": bias}}
    return save_keras_h5(path, model_config(layers, ["input_1"], ["softmax"]), weights)


def entry(plane, file="m.h5"):
    return ModelEntry("test_" + plane, "test", "segmentation", "keras_unet", None, plane=plane,
                      config={"file": file, "size": [SIZE, SIZE]})


def rot(axis, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    m = np.eye(3)
    a, b = [x for x in range(3) if x != axis]
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


# direction columns = LPS direction of i, j, k
ACQUISITIONS = {
    # sagittal DICOM-like: i anterior->posterior, j superior->inferior, k across left-right
    "sagittal": np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
    # coronal: i right->left, j superior->inferior, k anterior->posterior
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float),
    # axial: i right->left, j anterior->posterior, k inferior->superior
    "axial": np.eye(3),
    "oblique": rot(2, 25) @ rot(0, -15) @ np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float),
}


def box_volume(direction, shape=(14, 18, 22), spacing=(0.35, 0.4, 0.7)):
    arr = np.full(shape, 10.0, np.float32)
    arr[4:10, 5:13, 6:16] = 200.0
    rng = np.random.default_rng(0)
    arr += rng.normal(0, 1.0, shape).astype(np.float32)
    return Volume(arr, spacing, (10.0, -20.0, 5.0), direction)


def test_reference_slice_layouts():
    # the reference classes' TARGET_ORIENTATION (DOSMA bone_seg models/stanford_qdess_bone.py)
    assert dosma.PLANE_ORIENTATION == {"sagittal": ("SI", "AP", "LR"), "coronal": ("LR", "SI", "AP"),
                                       "axial": ("LR", "AP", "SI")}
    for plane in ("sagittal", "coronal", "axial"):
        assert get_model("dosma_" + plane).frame == dosma.PLANE_ORIENTATION[plane]
    assert get_model("dosma_coronal").config["size"] == [160, 512] == get_model("dosma_axial").config["size"]
    # array [k, j, i] with i -> L (+x), j -> P (+y), k -> S (+z)
    fm = frame_map(np.eye(3), dosma.PLANE_ORIENTATION["sagittal"])
    assert fm.perm == (0, 1, 2) and fm.flips == (True, False, True)  # rows S->I, cols A->P, slices L->R
    fm = frame_map(np.eye(3), dosma.PLANE_ORIENTATION["coronal"])
    assert fm.perm == (2, 0, 1) and fm.flips == (True, True, False)  # rows L->R, cols S->I, slices A->P
    fm = frame_map(np.eye(3), dosma.PLANE_ORIENTATION["axial"])
    assert fm.perm == (2, 1, 0) and fm.flips == (True, False, True)  # rows L->R, cols A->P, slices S->I


def _nibabel_reformat(vol, codes):
    """DOSMA's MedicalVolume.reformat done independently with nibabel's orientation tools: the array
    (axes [k, j, i]) with its RAS affine, reoriented to the axis codes each DOSMA code points to."""
    import nibabel.orientations as nibo

    lps_cols = [vol.direction[:, 2 - a] * vol.spacing_mm[2 - a] for a in range(3)]
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.stack(lps_cols, axis=1)
    ornt = nibo.io_orientation(affine)
    target = nibo.axcodes2ornt(tuple(c[1] for c in codes))   # "LR" points to R, "SI" to I, "AP" to P
    return nibo.apply_orientation(vol.array, nibo.ornt_transform(ornt, target))


@pytest.mark.parametrize("acq", list(ACQUISITIONS))
@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_slices_follow_the_reference_orientation_codes(acq, plane):
    """What each 2D net sees = nibabel's reorientation to the reference's codes, slices on the last axis;
    each code pinned physically: along rows / columns / slices the LPS coordinate moves as the code says."""
    img = box_volume(ACQUISITIONS[acq], shape=(5, 6, 7))
    codes = dosma.PLANE_ORIENTATION[plane]
    stack, fm = dosma.model_slices(img, codes)
    expected = _nibabel_reformat(img, codes)
    assert np.array_equal(stack, np.moveaxis(expected, -1, 0))
    # physical check: the index grid carried through the same layout
    k, j, i = np.meshgrid(*[np.arange(n) for n in img.array.shape], indexing="ij")
    lps = img.ijk_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel()], 1)).reshape(img.array.shape + (3,))
    framed = np.moveaxis(fm.forward(np.moveaxis(lps, -1, 0)), 0, -1)       # (rows, cols, slices, 3)
    for ax, code in enumerate(codes):
        step = np.diff(framed, axis=ax).reshape(-1, 3).mean(axis=0)
        assert float(step @ np.asarray(CODE_LPS[code])) > 0.5 * np.linalg.norm(step), (plane, ax, code)
    assert np.array_equal(from_frame(np.moveaxis(stack, 0, -1), fm), img.array)


def test_non_square_keras_model_gets_rows_along_the_first_code(tmp_path):
    """A 24 x 40 (rows x columns) Keras file in the coronal layout: rows run left-right, and the labels are
    those of the slices fed as the reference feeds them (a transposed feed gives other labels)."""
    from KneePipelineLib.segmentation.keras_h5 import load_keras_model

    h5 = FIX / "unet_nonsquare_channels_first.h5"
    img = box_volume(ACQUISITIONS["sagittal"], shape=(12, 20, 16))
    e = ModelEntry("test_cor", "test", "segmentation", "keras_unet", None, plane="coronal",
                   config={"file": h5.name}, frame=dosma.PLANE_ORIENTATION["coronal"])
    out = dosma.run_plane(img, e, FIX, RunOptions(device="cpu"))
    assert out["info"]["model_input_size"] == [24, 40]
    stack, fm = dosma.model_slices(img, e.frame)
    assert stack.shape == (16, 12, 20)   # slices along AP (i), rows LR (k), columns SI (j)
    net = load_keras_model(h5)
    x = dosma.zscore(dosma.resize_slices_cubic(stack, (24, 40)))
    with torch.no_grad():
        ref = net(torch.from_numpy(x)[:, None]).argmax(1).numpy().astype(np.uint8)
    expect = from_frame(np.moveaxis(dosma.resize_slices_nearest(ref, stack.shape[1:]), 0, -1), fm)
    assert np.array_equal(out["labels"], expect)
    xt = dosma.zscore(dosma.resize_slices_cubic(np.ascontiguousarray(stack.transpose(0, 2, 1)), (24, 40)))
    with torch.no_grad():
        wrong = net(torch.from_numpy(xt)[:, None]).argmax(1).numpy().astype(np.uint8)
    assert not np.array_equal(ref, wrong)
    # a file whose input is the transpose of the registry's slice size is refused, never fed transposed
    from KneePipelineLib.errors import ModelInvalidError

    e_t = ModelEntry("test_cor", "test", "segmentation", "keras_unet", None, plane="coronal",
                     config={"file": h5.name, "size": [40, 24]}, frame=dosma.PLANE_ORIENTATION["coronal"])
    with pytest.raises(ModelInvalidError, match="takes 24 x 40 slices"):
        dosma.run_plane(img, e_t, FIX, RunOptions(device="cpu"))


@pytest.mark.parametrize("acq", list(ACQUISITIONS))
@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_geometry_preserved_and_box_found(tmp_path, acq, plane):
    img = box_volume(ACQUISITIONS[acq])
    # threshold half-way between background (10) and box (200), in z-score units
    threshold_model(tmp_path / "m.h5", threshold=(105.0 - img.array.mean()) / img.array.std())
    before = img.array.copy()
    res = dosma.predict_dosma(img, entry(plane), tmp_path, RunOptions(device="cpu"), None)
    lab = res.labels
    assert lab.array.shape == img.array.shape and lab.array.dtype == np.uint8
    assert img.same_geometry(lab, tol=1e-9)
    assert np.array_equal(img.array, before)  # input untouched
    truth = img.array > 100
    pred = lab.array == 1
    dice = 2 * (truth & pred).sum() / (truth.sum() + pred.sum())
    assert dice > 0.97, dice
    assert res.model["plane"] == plane and res.model["model_input_size"] == [SIZE, SIZE]


def _sitk_relayout(vol, perm, flips):
    import SimpleITK as sitk

    im = sitk.Flip(sitk.PermuteAxes(vol.to_sitk(), perm), flips)
    return Volume.from_sitk(im)


@pytest.mark.parametrize("acq", ["axial", "oblique"])
def test_same_physical_image_gives_same_physical_labels(tmp_path, acq):
    """An orientation-sensitive model (vertical-gradient filter) must give the same physical answer
    whatever the array layout of the input: the reorientation happens in physical space."""
    threshold_model(tmp_path / "m.h5", kernel=np.array([[-5, -10, -5], [0, 0, 0], [5, 10, 5]], np.float32),
                    threshold=1.0)  # fires only on the box edge where intensity rises downwards
    a = box_volume(ACQUISITIONS[acq])
    b = _sitk_relayout(a, [2, 0, 1], [True, False, True])
    assert a.array.shape != b.array.shape
    opts = RunOptions(device="cpu", postprocess=False)
    la = dosma.predict_dosma(a, entry("sagittal"), tmp_path, opts, None).labels
    lb = dosma.predict_dosma(b, entry("sagittal"), tmp_path, opts, None).labels
    assert 0 < (la.array == 1).mean() < 0.2
    la_in_b = _sitk_relayout(la, [2, 0, 1], [True, False, True])
    assert np.array_equal(la_in_b.array, lb.array)
    # the model's rows run superior -> inferior: a filter firing where intensity rises down the rows marks
    # the box's superior face (largest LPS z), whatever the acquisition
    def mean_lps(mask):
        return a.ijk_to_lps(np.argwhere(mask)[:, ::-1].astype(float)).mean(axis=0)

    box = a.ijk_to_lps(np.argwhere(a.array > 100)[:, ::-1].astype(float))[:, 2]
    edge_z = mean_lps(la.array == 1)[2]
    assert edge_z > box.mean() + 0.25 * (box.max() - box.min()), (edge_z, box.mean(), box.max())


def test_progress_batches_and_warnings(tmp_path):
    threshold_model(tmp_path / "m.h5")
    img = box_volume(ACQUISITIONS["sagittal"], spacing=(2.0, 2.0, 3.0))  # MESE-like coarse voxels, 36 mm FOV
    seen = []
    res = dosma.predict_dosma(img, entry("sagittal"), tmp_path / "m.h5", RunOptions(device="cpu"),
                              lambda f, m="": seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0
    w = " ".join(res.model["warnings"])
    assert "field of view" in w and "spacing" in w
    typical = Volume(np.broadcast_to(np.float32(0), (160, 448, 448)), (0.3125, 0.3125, 0.7), (0, 0, 0),
                     ACQUISITIONS["sagittal"])  # qDESS-like: 160 sagittal slices of 0.7 mm, 140 mm FOV
    ornt = dosma.PLANE_ORIENTATION["sagittal"]
    ok = dosma.geometry_warnings(typical, ornt, frame_map(typical.direction, ornt))
    assert ok == []


def test_batch_size_does_not_change_labels(tmp_path):
    threshold_model(tmp_path / "m.h5")
    img = box_volume(ACQUISITIONS["oblique"])
    o1 = RunOptions(device="cpu")
    o1.batch_size = 1
    o2 = RunOptions(device="cpu")
    o2.batch_size = 7
    a = dosma.predict_dosma(img, entry("coronal"), tmp_path, o1, None)
    b = dosma.predict_dosma(img, entry("coronal"), tmp_path, o2, None)
    assert a.model["batch_size"] == 1 and b.model["batch_size"] == 7
    assert np.array_equal(a.labels.array, b.labels.array)


def test_resize_helpers():
    x = np.arange(4 * 6, dtype=np.float32).reshape(1, 4, 6)
    up = dosma.resize_slices_cubic(x, (8, 12))
    assert up.shape == (1, 8, 12) and up.min() >= x.min() and up.max() <= x.max()
    lab = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    assert np.array_equal(dosma.resize_slices_nearest(np.repeat(np.repeat(lab, 2, 1), 2, 2), (4, 4)), lab)
    z = dosma.zscore(np.array([1.0, 3.0], np.float32))
    assert np.allclose(z, [-1, 1], atol=1e-6)


def test_root_sum_of_squares():
    e1 = Volume(np.full((2, 3, 4), 3.0, np.float32), (1, 1, 1), (0, 0, 0), np.eye(3))
    e2 = e1.with_array(np.full((2, 3, 4), 4.0, np.float32))
    rss = dosma.root_sum_of_squares([e1, e2])
    assert np.allclose(rss.array, 5.0) and rss.same_geometry(e1)
    assert np.allclose(dosma.root_sum_of_squares(np.stack([e1.array, e2.array])), 5.0)


# -- CPU arithmetic: channels-last slices, bf16 autocast only where native (docs/SPEED.md) ------------------
def test_cpu_arithmetic_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setenv("KNEEPIPELINE_CPU_BF16", "0")
    assert dosma.cpu_arithmetic(cpu) == {"precision": "fp32", "channels_last": True}
    monkeypatch.setenv("KNEEPIPELINE_CPU_BF16", "1")
    assert dosma.cpu_arithmetic(cpu) == {"precision": "bf16-autocast", "channels_last": True}
    assert dosma.cpu_arithmetic(cuda) == {"precision": "fp32", "channels_last": False}
    monkeypatch.delenv("KNEEPIPELINE_CPU_BF16")
    from KneePipelineLib.segmentation.cpu_speed import native_bf16

    assert dosma.cpu_arithmetic(cpu)["precision"] == ("bf16-autocast" if native_bf16() else "fp32")


def _keras_fixture(name):
    from KneePipelineLib.segmentation.keras_h5 import load_keras_model

    ref = np.load(FIX / (name + ".npz"))
    net = load_keras_model(FIX / (name + ".h5"))
    cf = net.data_format == "channels_first"
    slices = ref["x"][:, 0] if cf else ref["x"][..., 0]
    keras_p = ref["y"] if cf else np.moveaxis(ref["y"], -1, 1)
    return net, slices, keras_p


FP32_NCHW = {"precision": "fp32", "channels_last": False}
FP32_CL = {"precision": "fp32", "channels_last": True}
BF16_CL = {"precision": "bf16-autocast", "channels_last": True}


@pytest.mark.parametrize("name", ["unet_channels_first", "unet_channels_last", "unet_nonsquare_channels_first"])
def test_cpu_fast_path_matches_keras(name):
    """The DOSMA-like U-Nets written by TensorFlow: the CPU path (batch norm folded, channels-last slices) gives
    Keras's probabilities (float16 storage) and labels; bf16 autocast stays within the measured tolerance and
    gives the same label wherever fp32 decides by a margin."""
    net, slices, keras_p = _keras_fixture(name)
    assert len(net.folded) >= 10
    cpu = torch.device("cpu")
    p_ref = dosma.predict_slices(net, slices, 2, cpu, keep_probabilities=True, arithmetic=FP32_NCHW).astype(np.float32)
    p_cl = dosma.predict_slices(net, slices, 2, cpu, keep_probabilities=True, arithmetic=FP32_CL).astype(np.float32)
    assert np.abs(p_cl - keras_p).max() < 1e-3 and np.abs(p_cl - p_ref).max() < 1e-3
    labels = dosma.predict_slices(net, slices, 2, cpu, arithmetic=FP32_CL)
    assert np.array_equal(labels, keras_p.argmax(1)) and len(np.unique(labels)) >= 2
    p_bf = dosma.predict_slices(net, slices, 2, cpu, keep_probabilities=True, arithmetic=BF16_CL).astype(np.float32)
    diff = np.abs(p_bf - keras_p).max()
    assert 2e-3 < diff < 0.05, diff   # bf16 really ran (fp32 + float16 storage: < 3e-4) and stays within 0.05
    top2 = np.sort(keras_p, axis=1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 0.05
    assert decided.mean() > 0.8
    assert np.array_equal(p_bf.argmax(1)[decided], keras_p.argmax(1)[decided])


def test_bf16_forced_segments_like_fp32(tmp_path, monkeypatch):
    """The whole 2D path with bf16 forced (as on a native-bf16 CPU): same box, Dice >= 0.99 against fp32, and
    the model record says which arithmetic ran."""
    img = box_volume(ACQUISITIONS["oblique"])
    threshold_model(tmp_path / "m.h5", threshold=(105.0 - img.array.mean()) / img.array.std())
    res = {}
    for flag in ("0", "1"):
        monkeypatch.setenv("KNEEPIPELINE_CPU_BF16", flag)
        res[flag] = dosma.predict_dosma(img, entry("sagittal"), tmp_path, RunOptions(device="cpu"), None)
    a, b = res["0"].labels.array == 1, res["1"].labels.array == 1
    assert a.sum() > 100
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
    assert res["0"].model["arithmetic"] == FP32_CL and res["1"].model["arithmetic"] == BF16_CL
