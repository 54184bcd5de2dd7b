"""A download fetches the fold and checkpoint the model's own model_config.json names (the run's rule,
segmentation.settings.nnunet_settings), not the registry's default: hub.ensure_model reads model_config.json
first, then fetches exactly what it names, or what --folds / --checkpoint ask for. No network: the fake hub
server of test_hub.py (the hub's HTTP API on 127.0.0.1) and the hub's real cache layout (nnunet_fixtures)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("huggingface_hub")

from nnunet_fixtures import lay_out_hub_cache  # noqa: E402
from test_hub import COMMIT, FULL, FakeHub, endpoint  # noqa: E402,F401  (endpoint: a fixture)

from KneePipelineLib import hub  # noqa: E402
from KneePipelineLib.errors import ModelMissingError  # noqa: E402
from KneePipelineLib.modelfiles import recording_models  # noqa: E402
from KneePipelineLib.registry import get_model  # noqa: E402
from KneePipelineLib.segmentation.settings import nnunet_settings  # noqa: E402

TRAINER = "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres/"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import huggingface_hub.constants as c

    for var in ("HF_HUB_OFFLINE", "HF_TOKEN", "KNEEPIPELINE_CACHE", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)


def _repo(tmp_path, model_info):
    """The fullres folder of aagatti/nnunet_knee with folds 1 and 2, both checkpoints, and a model_config.json
    holding ``model_info``."""
    files = {}
    for rel in ("dataset.json", "plans.json", "fold_1/checkpoint_best.pth", "fold_1/checkpoint_final.pth",
                "fold_2/checkpoint_best.pth", "fold_2/checkpoint_final.pth", "model_config.json"):
        p = tmp_path / "src" / (FULL + rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(json.dumps({"model_info": model_info}).encode() if rel == "model_config.json"
                      else ("content of " + rel).encode())
        files[FULL + rel] = p
    return files


@pytest.mark.parametrize("info, kwargs, want", [
    ({"fold": 2, "configuration": "3d_fullres"}, {}, "fold_2/checkpoint_best.pth"),
    ({"fold": 2, "checkpoint": "final"}, {}, "fold_2/checkpoint_final.pth"),
    ({"fold": 2}, {"folds": [1]}, "fold_1/checkpoint_best.pth"),                 # --folds 1 wins
    ({"fold": 2, "checkpoint": "final"}, {"folds": [2], "checkpoint": "best"}, "fold_2/checkpoint_final.pth"),
    ({"fold": 1}, {"checkpoint": "final", "folds": [2]}, "fold_2/checkpoint_final.pth"),  # nothing to read
])
def test_download_fetches_the_fold_and_checkpoint_model_config_names(tmp_path, endpoint, info, kwargs, want):
    entry = get_model("nnunet_fullres")
    cache = tmp_path / "cache"
    with FakeHub(_repo(tmp_path, info)) as fake, recording_models() as used:
        endpoint(fake.url)
        root = hub.ensure_model(entry, cache_dir=str(cache), **kwargs)
    fetched = sorted(r[len(FULL):] for r in fake.requested)
    assert fetched == sorted(["dataset.json", "plans.json", "model_config.json", want])
    run = nnunet_settings(entry, root, kwargs.get("folds"), kwargs.get("checkpoint", "best"))  # what a run uses
    assert "fold_%s/%s" % (run.folds[0], run.checkpoint) == want and (root / TRAINER / want).is_file()
    (_, _, folds, checkpoint), = used                                  # and what the run records
    assert hub.required_files(entry, folds, checkpoint)[-1] == TRAINER + want
    assert hub.ensure_model(entry, cache_dir=str(cache), offline=True, **kwargs) == root   # then offline


def test_offline_cache_with_only_the_declared_fold_is_enough(tmp_path):
    files = _repo(tmp_path, {"fold": 2})
    keep = {k: v for k, v in files.items() if "fold_1/" not in k and "final" not in k}
    cache = tmp_path / "cache"
    snap = lay_out_hub_cache(cache, "aagatti/nnunet_knee", keep, commit=COMMIT)
    entry = get_model("nnunet_fullres")
    assert hub.ensure_model(entry, cache_dir=str(cache), offline=True) == snap / "models/Dataset500_KneeMRI"
    assert hub.model_state(entry, cache_dir=str(cache))["downloaded"] is True
    with pytest.raises(ModelMissingError) as err:          # asking for another fold still names what is missing
        hub.ensure_model(entry, cache_dir=str(cache), offline=True, folds=[1])
    assert "fold_1/checkpoint_best.pth" in err.value.message
