"""The model input frame (segmentation/frame.py): one physical knee in any voxel order gives the same
physical labels, through nnU-Net and through a DOSMA 2D net.

The held-out synthetic knee of ``synthetic_mri`` (cropped around the joint to keep the test fast) is stored
as NIfTI in six voxel orders made by SimpleITK (never by the code under test): as it is, RAS, LPS, a
coronal-like and an axial-like axis permutation, and one flipped axis. Each is segmented with the tiny
trained nnU-Net fixture and with a small non-square Keras file; every result, resampled exactly (nearest
neighbour onto coinciding voxel centres) onto the original grid, must match the original's prediction with
Dice >= 0.99 per structure.
"""
from pathlib import Path

import numpy as np
import pytest

from KneePipelineLib.io.volume import Volume
from KneePipelineLib.options import RunOptions
from KneePipelineLib.registry import ModelEntry, get_model
from KneePipelineLib.segmentation import frame as F

import synthetic_mri as S

ROOT = Path(__file__).resolve().parents[1]
TINY_KNEE = ROOT / "Testing" / "fixtures" / "nnunet_tiny_knee"
KERAS = ROOT / "Testing" / "fixtures" / "keras"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


# -- the frame step itself: exact, analytic --------------------------------------------------------------
def _rot(axis, deg):
    t = np.deg2rad(deg)
    m = np.eye(3)
    a, b = [x for x in range(3) if x != axis]
    m[a, a], m[a, b], m[b, a], m[b, b] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return m


SAG = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float)   # i -> P, j -> I, k -> R (a sagittal DICOM)


@pytest.mark.parametrize("direction", [SAG, np.eye(3), _rot(2, 20) @ _rot(0, -12) @ SAG,
                                       np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], float)])
@pytest.mark.parametrize("codes", [F.NNUNET_SAGITTAL, F.DOSMA_SAGITTAL, F.DOSMA_CORONAL, F.DOSMA_AXIAL,
                                   ("RL", "PA", "IS")])
def test_every_voxel_keeps_its_physical_position(direction, codes):
    rng = np.random.default_rng(1)
    img = Volume(rng.random((4, 5, 6)).astype(np.float32), (0.3, 0.5, 1.1), (3.0, -7.0, 11.0), direction)
    out, fm = F.to_frame(img, codes)
    assert F.image_codes(out.direction) == tuple(codes)
    k, j, i = np.nonzero(np.ones(out.array.shape))
    src = np.rint(img.lps_to_ijk(out.ijk_to_lps(np.stack([i, j, k], 1)))).astype(int)
    assert np.array_equal(img.array[src[:, 2], src[:, 1], src[:, 0]], out.array[k, j, i])
    assert np.array_equal(F.from_frame(out.array, fm), img.array)
    probs = np.stack([img.array, 2 * img.array])                   # (C, ...) goes back too
    assert np.array_equal(F.from_frame(fm.forward(probs), fm), probs)


def test_acquisition_plane_and_warning():
    sag = Volume(np.zeros((2, 2, 2)), (0.3, 0.3, 0.8), (0, 0, 0), SAG)           # slices along LR
    cor = Volume(np.zeros((2, 2, 2)), (0.4, 0.4, 2.0),
                 (0, 0, 0), np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float))  # slices along AP
    iso = Volume(np.zeros((2, 2, 2)), (0.5, 0.5, 0.55), (0, 0, 0), np.eye(3))
    assert F.acquisition(sag).plane == "sagittal" and F.acquisition(cor).plane == "coronal"
    assert F.acquisition(iso).plane is None
    assert F.plane_warning(sag, "sagittal", "m") is None and F.plane_warning(iso, "sagittal", "m") is None
    w = F.plane_warning(cor, "sagittal", "nnU-Net")
    assert "coronal acquisition" in w and "2.00 mm" in w and "sagittal" in w


# -- six voxel orders of one held-out knee ------------------------------------------------------------------
def _crop(vol: Volume, lo, hi) -> Volume:
    """Array [k, j, i] crop with the geometry that keeps every voxel where it was."""
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    origin = vol.ijk_to_lps(np.asarray(lo, float)[::-1][None])[0]
    return Volume(np.ascontiguousarray(vol.array[sl]), vol.spacing_mm.copy(), origin, vol.direction.copy())


@pytest.fixture(scope="module")
def knee(sample_labels_path):
    sample = S.load_sample_labels(sample_labels_path)
    img, lab = S.heldout_case(sample, "right")
    c = np.argwhere(np.isin(lab.array, (3, 4, 5, 6))).mean(axis=0).round().astype(int)   # the joint
    half = np.array([24, 40, 40])
    lo = np.clip(c - half, 0, None)
    hi = np.minimum(lo + 2 * half, img.array.shape)
    return _crop(img, lo, hi)


def _orders(vol: Volume):
    """Six voxel orders of one physical image, made with SimpleITK."""
    import SimpleITK as sitk

    im = vol.to_sitk()
    return {
        "original": im,
        "RAS": sitk.DICOMOrient(im, "RAS"),
        "LPS": sitk.DICOMOrient(im, "LPS"),
        "coronal_like": sitk.PermuteAxes(im, [0, 2, 1]),
        "axial_like": sitk.PermuteAxes(im, [1, 0, 2]),
        "flipped": sitk.Flip(im, [False, True, False]),
    }


def _written(vol: Volume, tmp_path: Path):
    """Each order written as NIfTI and read back by our reader (as a user's file would be)."""
    import SimpleITK as sitk
    from KneePipelineLib.io.readers import read_image

    out = {}
    for name, im in _orders(vol).items():
        p = tmp_path / ("%s.nii.gz" % name)
        sitk.WriteImage(im, str(p))
        out[name] = read_image(str(p))
    shapes = {v.array.shape for v in out.values()}
    assert len(shapes) >= 3          # the orders really differ
    return out


def _on_grid(labels: Volume, ref: Volume) -> np.ndarray:
    import SimpleITK as sitk

    res = sitk.Resample(labels.to_sitk(), ref.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(res)


def _dice_per_structure(ref: np.ndarray, other: np.ndarray) -> dict:
    out = {}
    for t in np.unique(ref):
        if t == 0 or (ref == t).sum() < 50:
            continue
        a, b = ref == t, other == t
        out[int(t)] = 2.0 * (a & b).sum() / (a.sum() + b.sum())
    return out


def _check_orders(results: dict, min_structures: int) -> None:
    ref = results["original"]
    ref_arr = ref.array
    for name, lab in results.items():
        d = _dice_per_structure(ref_arr, _on_grid(lab, ref))
        assert len(d) >= min_structures, (name, d)
        assert min(d.values()) >= 0.99, (name, d)


def test_nnunet_same_physical_labels_in_six_voxel_orders(knee, tmp_path):
    from KneePipelineLib.segmentation import segment

    images = _written(knee, tmp_path)
    opts = RunOptions(model="nnunet_fullres", model_dir=str(TINY_KNEE), device="cpu", threads=1, offline=True)
    results, frames = {}, {}
    for name, img in images.items():
        res = segment(img, opts)
        assert img.same_geometry(res.labels, tol=1e-6)
        results[name] = res.labels
        frames[name] = res.model["frame"]
    assert frames["original"]["transpose"] == [0, 1, 2] and not frames["original"]["flipped_frame_axes"]
    assert frames["RAS"]["image_axes"] != frames["original"]["image_axes"]
    assert all(f["frame"] == ["LR", "SI", "AP"] for f in frames.values())
    _check_orders(results, min_structures=6)


@pytest.mark.parametrize("plane", ["sagittal", "coronal", "axial"])
def test_dosma_same_physical_labels_in_six_voxel_orders(knee, tmp_path, plane):
    """A non-square (24 x 40) Keras net in each plane's layout (coronal: rows LR, columns SI, slices AP)."""
    from KneePipelineLib.segmentation.dosma import predict_dosma

    images = _written(knee, tmp_path)
    entry = ModelEntry("test_" + plane, "test", "segmentation", "keras_unet", None, plane=plane,
                       config={"file": "unet_nonsquare_channels_first.h5"},
                       frame=get_model("dosma_" + plane).frame, acquisition_plane="sagittal")
    opts = RunOptions(device="cpu", threads=1, postprocess=False)
    results = {name: predict_dosma(img, entry, KERAS, opts).labels for name, img in images.items()}
    _check_orders(results, min_structures=2)


def test_a_coronal_scan_into_a_sagittal_model_warns_with_its_slice_spacing(tmp_path, capsys):
    """`kneepipeline segment` on a coronal acquisition: a warning event naming the plane and the slice
    spacing the sagittal-trained model has to live with; the labels keep the input's geometry."""
    import json

    from KneePipelineLib.cli import main
    from KneePipelineLib.io.readers import read_labels, write_volume

    cor = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)   # i -> L, j -> I, k -> P: slices along AP
    rng = np.random.default_rng(0)
    img = Volume(rng.random((12, 40, 40)).astype(np.float32) * 100, (0.7, 0.7, 2.5), (0, 0, 0), cor)
    write_volume(img, tmp_path / "coronal.nii.gz")
    rc = main(["segment", "--image", str(tmp_path / "coronal.nii.gz"), "--model", "nnunet_fullres", "--model-dir",
               str(TINY_KNEE), "--out", str(tmp_path / "out"), "--device", "cpu", "--threads", "1",
               "--no-postprocess"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    events = [json.loads(line) for line in cap.out.splitlines() if line.startswith("{")]
    (w,) = [e["message"] for e in events if e["event"] == "warning" and "acquisition" in e["message"]]
    assert "coronal acquisition" in w and "2.50 mm" in w and "sagittal" in w
    info = json.loads((tmp_path / "out" / "segmentation.json").read_text())
    assert info["model"]["frame"]["image_axes"] == ["AP", "SI", "RL"]
    assert read_labels(tmp_path / "out" / "segmentation.nii.gz").same_geometry(img, tol=1e-5)
