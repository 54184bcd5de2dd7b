"""DOSMA 2D U-Net inference: physical-space reorientation, geometry round trip, known-answer segmentation."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.io.volume import Volume  # noqa: E402
from KneePipelineLib.options import RunOptions  # noqa: E402
from KneePipelineLib.registry import ModelEntry  # noqa: E402
from KneePipelineLib.segmentation import dosma  # noqa: E402
from KneePipelineLib.segmentation.keras_h5 import layer_config, model_config, save_keras_h5  # noqa: E402

SIZE = 32


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


def test_reorientation_identity_direction():
    # array [k, j, i] with i -> L (+x), j -> P (+y), k -> S (+z)
    perm, flips = dosma.reorientation(np.eye(3), dosma.PLANE_ORIENTATION["sagittal"])
    assert perm == (0, 1, 2) and flips == (True, False, True)  # rows S->I, cols A->P, slices L->R
    perm, flips = dosma.reorientation(np.eye(3), dosma.PLANE_ORIENTATION["axial"])
    assert perm == (1, 2, 0) and flips == (False, True, True)  # rows A->P, cols L->R, slices S->I


def test_reorientation_round_trip_and_slicing_axis():
    d = ACQUISITIONS["sagittal"]
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    for plane in ("sagittal", "coronal", "axial"):
        perm, flips = dosma.reorientation(d, dosma.PLANE_ORIENTATION[plane])
        out = dosma.to_plane(arr, perm, flips)
        assert np.array_equal(dosma.from_plane(out, perm, flips), arr)
    # sagittal acquisition: k (array axis 0) runs across LR, so it is the sagittal model's slice axis
    perm, _ = dosma.reorientation(d, dosma.PLANE_ORIENTATION["sagittal"])
    assert perm[2] == 0
    perm, _ = dosma.reorientation(d, dosma.PLANE_ORIENTATION["coronal"])
    assert perm[2] == 2  # i runs along AP
    perm, _ = dosma.reorientation(d, dosma.PLANE_ORIENTATION["axial"])
    assert perm[2] == 1  # j runs along SI


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
    ok = dosma.geometry_warnings(typical, ornt, dosma.reorientation(typical.direction, ornt)[0])
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
