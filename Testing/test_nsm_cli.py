"""`kneepipeline nsm` finds its B-score model the way the pipeline does (steps.nsm.load_bscore_for): no
--bscore-dir needed. The real published bone-only B-score model.json (../shared/data/bscore) is placed in a
temporary model cache in the Git-files layout (git--anoopai--KneePipeline/<commit>/BSCORE_MODELS/...), and the
NSM is our small trained model (Testing/fixtures/nsm_small) with its latent input widened from 16 to the
published 512 values by zero columns (the extra latent values have no effect and no gradient, so they stay
0): a 512-value latent the real B-score vector can score. No network: --offline, and the copies of the
B-score folders on disk (sample-data locations) are hidden so that only the cache can answer."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from KneePipelineLib.registry import BSCORE_COMMIT, get_model  # noqa: E402

SMALL = Path(__file__).resolve().parent / "fixtures" / "nsm_small"
BONE_ONLY = "NSM_Orig_BScore_Bone_Only_April_18_2025"


def widen_latent(src: Path, dst: Path, latent_size: int = 512) -> Path:
    """A copy of the NSM in ``src`` whose latent has ``latent_size`` values (zero weights for the new ones)."""
    cfg = json.loads((src / "model_params_config.json").read_text())
    ck_path = sorted((src / "model").glob("*.pth"))[0]
    ck = torch.load(str(ck_path), map_location="cpu", weights_only=True)
    sd = dict(ck["model"])
    for key in [k for k in sd if k.endswith("fc.weight")]:
        w = sd[key]
        sd[key] = torch.cat([w, torch.zeros(w.shape[0], latent_size - w.shape[1], dtype=w.dtype)], 1)
    cfg["latent_size"] = latent_size
    (dst / "model").mkdir(parents=True)
    (dst / "model_params_config.json").write_text(json.dumps(cfg))
    torch.save({**ck, "model": sd}, str(dst / "model" / ck_path.name))
    return dst


@pytest.fixture
def env(tmp_path, monkeypatch):
    from KneePipelineLib.shape import bscore as B

    for var in ("HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "KNEEPIPELINE_GIT_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("KNEEPIPELINE_CACHE", str(cache))
    monkeypatch.setattr(B, "default_search_dirs", lambda: [tmp_path / "no-copies-on-disk"])
    return cache


def _run(femur, nsm_dir, out, *extra):
    from KneePipelineLib.cli import main

    return main(["--progress", "none", "nsm", "--femur", str(femur), "--laterality", "right", "--nsm-dir",
                 str(nsm_dir), "--out", str(out), "--iterations", "3", "--samples", "2000", "--mesh-resolution", "0",
                 "--device", "cpu", "--threads", "1", "--offline", *extra])


def test_nsm_command_uses_the_cached_bscore_model_without_bscore_dir(tmp_path, env, bscore_dir, femur_meshes_dir):
    src = bscore_dir / BONE_ONLY / "model.json"
    cached = env / "git--anoopai--KneePipeline" / BSCORE_COMMIT / "BSCORE_MODELS" / BONE_ONLY / "model.json"
    cached.parent.mkdir(parents=True)
    shutil.copyfile(src, cached)
    nsm = widen_latent(SMALL, tmp_path / "nsm512")
    out = tmp_path / "out"
    assert _run(sorted(femur_meshes_dir.glob("*.vtk"))[0], nsm, out) == 0
    doc = json.loads((out / "nsm.json").read_text())
    pub = json.loads(src.read_text())
    z = np.asarray(doc["latent"])
    assert z.shape == (512,) and not np.any(z[16:]) and np.any(z[:16])   # the fit moved the real latent values
    want = (z @ np.asarray(pub["bscore_vector"]) - pub["mean_healthy"]) / pub["std_healthy"]
    assert doc["bscore"] == pytest.approx(want, rel=1e-9, abs=1e-12)
    bm = doc["bscore_model"]
    assert bm["registry_id"] == "bscore_bone_only" and Path(bm["path"]) == cached
    assert bm["source"] == "git_files" and bm["revision"] == BSCORE_COMMIT and bm["verified"] is True
    assert bm["sha256"] == get_model("bscore_bone_only").config["sha256"]


def test_nsm_command_offline_with_an_empty_cache_stops_before_writing(tmp_path, env, capsys, femur_meshes_dir):
    out = tmp_path / "out"
    rc = _run(sorted(femur_meshes_dir.glob("*.vtk"))[0], SMALL, out)
    err = capsys.readouterr().err
    assert rc == 20                                           # model_missing
    assert "model_missing" in err and "bscore_bone_only" in err and "offline" in err
    assert "--bscore-dir" in err and "--no-bscore" in err and "kneepipeline models --download bscore_bone_only" in err
    assert not out.exists()                                   # nothing half-written: no output folder at all
    assert not env.exists()                                   # and nothing in the cache
