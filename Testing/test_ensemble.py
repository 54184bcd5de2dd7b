"""Multi-plane ensemble: per-label trust renormalisation, agreement, and a full run of the registry entry."""
import numpy as np
import pytest

from KneePipelineLib.errors import ConfigurationError
from KneePipelineLib.segmentation.ensemble import combine_probabilities, trust_matrix


def vox(*ps):
    """Member probabilities at one voxel -> (C, 1) arrays."""
    return [np.asarray(p, np.float32).reshape(-1, 1) for p in ps]


def test_plain_average_without_trust():
    labels, agree, fused = combine_probabilities(vox([0.6, 0.4, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.0]))
    assert np.allclose(fused[:, 0], [1.3 / 3, 1.7 / 3, 0.0])
    assert labels[0] == 1 and np.isclose(agree[0], 1 / 3)


def test_excluded_label_does_not_vote_background():
    # A trusts label 2; B and C are unreliable for it. A STAPLE-style fusion that maps B's and C's
    # label 2 to background would answer 0 here; renormalising per label answers 2.
    probs = vox([0.2, 0.0, 0.8], [0.05, 0.0, 0.95], [0.05, 0.0, 0.95])
    w = trust_matrix(["a", "b", "c"], 3, {"b": {2: 0}, "c": {"2": 0.0}})
    labels, agree, fused = combine_probabilities(probs, w)
    assert np.allclose(fused[:, 0], [0.1, 0.0, 0.8])
    assert labels[0] == 2
    assert np.isclose(agree[0], 1.0)  # every member's own argmax is 2
    # the naive variant really would pick background: excluded mass moved to background
    naive = [p.copy() for p in probs]
    for p in naive[1:]:
        p[0] += p[2]
        p[2] = 0
    assert np.argmax(sum(naive)) == 0


def test_label_trusted_by_nobody_never_wins_and_weights_scale():
    probs = vox([0.1, 0.2, 0.7], [0.1, 0.3, 0.6])
    w = trust_matrix(["a", "b"], 3, {"a": {2: 0}, "b": {2: 0}})
    labels, _, fused = combine_probabilities(probs, w)
    assert labels[0] == 1 and fused[2, 0] == 0
    # fractional trust: label 1 = (1*0.2 + 3*0.8)/4 beats background (0.8 + 0.2)/2
    probs = vox([0.8, 0.2], [0.2, 0.8])
    labels, agree, fused = combine_probabilities(probs, trust_matrix(["a", "b"], 2, {"b": {1: 3.0}}))
    assert np.isclose(fused[1, 0], (0.2 + 3 * 0.8) / 4) and np.isclose(fused[0, 0], 0.5)
    assert labels[0] == 1 and np.isclose(agree[0], 0.5)


def test_agreement_map_over_a_volume():
    rng = np.random.default_rng(1)
    p = [rng.dirichlet(np.ones(4), size=(5, 6, 7)).transpose(3, 0, 1, 2).astype(np.float32) for _ in range(3)]
    labels, agree, _ = combine_probabilities(p)
    members = np.stack([q.argmax(0) for q in p])
    assert labels.shape == (5, 6, 7) and agree.shape == (5, 6, 7)
    assert np.allclose(agree, (members == labels).mean(0))
    assert set(np.unique(np.round(agree * 3))) <= {0, 1, 2, 3}
    assert np.array_equal(labels, np.mean(p, axis=0).argmax(0))


def test_bad_trust_rejected():
    with pytest.raises(ConfigurationError):
        trust_matrix(["a"], 3, {"a": {5: 1.0}})
    with pytest.raises(ConfigurationError):
        trust_matrix(["a"], 3, {"a": {1: -1.0}})


def test_registry_trust_is_the_reference_exclusions():
    """DOSMA bone_seg StanfordQDessBoneUNet2DSTAPLE.list_idx_not_include_STAPLE = [[], [1], [3, 4, 5, 6]]."""
    from KneePipelineLib.registry import get_model

    entry = get_model("dosma_ensemble")
    w = trust_matrix(entry.config["members"], 10, entry.config["trust"])
    assert entry.config["members"] == ["dosma_sagittal", "dosma_coronal", "dosma_axial"]
    excluded = [sorted(int(c) for c in np.nonzero(w[m] == 0)[0]) for m in range(3)]
    assert excluded == [[], [1], [3, 4, 5, 6]]
    assert set(np.unique(w)) == {0.0, 1.0}


def test_registry_ensemble_end_to_end(tmp_path):
    torch = pytest.importorskip("torch")
    from KneePipelineLib.options import RunOptions
    from KneePipelineLib.registry import get_model
    from KneePipelineLib.segmentation.ensemble import predict_ensemble
    from test_dosma import ACQUISITIONS, box_volume, threshold_model

    torch.set_num_threads(1)
    img = box_volume(ACQUISITIONS["oblique"])
    thr = (105.0 - img.array.mean()) / img.array.std()
    entry = get_model("dosma_ensemble")
    for mid in entry.config["members"]:
        threshold_model(tmp_path / get_model(mid).config["file"], threshold=thr, n_classes=10)
    seen = []
    res = predict_ensemble(img, entry, tmp_path, RunOptions(device="cpu", offline=True),
                           lambda f, m="": seen.append(f))
    assert img.same_geometry(res.labels, tol=1e-9) and res.labels.array.dtype == np.uint8
    truth = img.array > 100
    pred = res.labels.array == 1
    assert 2 * (truth & pred).sum() / (truth.sum() + pred.sum()) > 0.95
    assert res.agreement.array.shape == img.array.shape
    assert 0.9 < res.model["agreement"]["mean_foreground"] <= 1.0
    assert [m["plane"] for m in res.model["members"]] == ["sagittal", "coronal", "axial"]
    assert seen == sorted(seen) and seen[-1] == 1.0
