"""B-score with the real B-score models (../shared/data/bscore): formula, class means, refusals."""
import json

import numpy as np
import pytest

from KneePipelineLib.errors import ModelInvalidError, ModelMissingError, NsmError
from KneePipelineLib.shape.bscore import bscore, check_compatible, load_bscore_model

CASES = [("NSM_Orig_BScore_Bone_Cartilage_April_17_2025", "bscore_bone_cartilage", 1.79),
         ("NSM_Orig_BScore_Bone_Only_April_18_2025", "bscore_bone_only", 1.75)]


@pytest.mark.parametrize("folder,registry_id,oa_score", CASES)
def test_class_means_score_as_published(bscore_dir, folder, registry_id, oa_score):
    d = bscore_dir / folder
    model = load_bscore_model(d)
    assert model.registry_id == registry_id and not model.warnings
    raw = json.loads((d / "model.json").read_text())
    b = np.asarray(raw["bscore_vector"])
    mu, sd = raw["mean_healthy"], raw["std_healthy"]
    assert np.allclose(np.load(d / "bscore_vector.npy"), b)
    healthy = np.load(d / "mean_control_vector.npy")
    oa = np.load(d / "mean_oa_vector.npy")
    assert bscore(healthy, model) == pytest.approx((healthy @ b - mu) / sd, abs=1e-6)
    assert bscore(oa, model) == pytest.approx((oa @ b - mu) / sd, abs=1e-6)
    assert abs(bscore(healthy, model)) < 1e-6
    assert round(bscore(oa, model), 2) == oa_score


def test_wrong_latent_size_is_refused(bscore_dir):
    model = load_bscore_model(bscore_dir / CASES[0][0])
    with pytest.raises(NsmError) as e:
        bscore(np.zeros(256), model)
    assert "512" in e.value.message and "256" in e.value.message
    with pytest.raises(NsmError):
        check_compatible(model, 16)
    check_compatible(model, 512)


def test_unregistered_model_loads_with_warning(tmp_path):
    (tmp_path / "model.json").write_text(json.dumps({"bscore_vector": [0.6, 0.8], "mean_healthy": 1.0,
                                                     "std_healthy": 2.0}))
    model = load_bscore_model(tmp_path)
    assert model.registry_id is None and model.warnings
    assert bscore([3.0, 4.0], model) == pytest.approx((1.8 + 3.2 - 1.0) / 2.0)


def test_bad_bscore_files(tmp_path):
    with pytest.raises(ModelMissingError):
        load_bscore_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"bscore_vector": [1.0], "mean_healthy": 0.0}))
    with pytest.raises(ModelInvalidError):
        load_bscore_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"bscore_vector": [1.0], "mean_healthy": 0.0, "std_healthy": 0}))
    with pytest.raises(ModelInvalidError):
        load_bscore_model(tmp_path)


def test_registered_bscore_models_are_found_and_verified_where_users_keep_them(bscore_dir, capsys):
    from KneePipelineLib.cli import main
    from KneePipelineLib.shape.bscore import find_bscore_folder

    assert find_bscore_folder("bscore_bone_only", [bscore_dir]).name == "NSM_Orig_BScore_Bone_Only_April_18_2025"
    assert find_bscore_folder("bscore_bone_only", [bscore_dir / "nowhere"]) is None
    import os
    if os.path.realpath(bscore_dir.parent.parent) == os.path.realpath(
            __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared"):
        assert main(["--quiet-progress", "models", "--json"]) == 0
        rows = {r["id"]: r for r in __import__("json").loads(capsys.readouterr().out)}
        assert rows["bscore_bone_cartilage"]["downloaded"] and rows["bscore_bone_cartilage"]["verified"] is True
