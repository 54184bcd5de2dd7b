"""B-score (REFERENCE §8): B = (z . b - mu) / sigma for a fitted NSM latent z.

A B-score model folder holds ``model.json`` = {"bscore_vector": [...], "mean_healthy", "std_healthy"}.
Its sha256 is checked against the registry's bscore_* entries; an unknown file still loads, with a
warning recorded in :attr:`BScoreModel.registry_id` (None) and :attr:`BScoreModel.warnings`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import ModelInvalidError, ModelMissingError, NsmError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BScoreModel:
    vector: np.ndarray
    mean_healthy: float
    std_healthy: float
    path: Optional[Path] = None
    sha256: str = ""
    registry_id: Optional[str] = None
    warnings: List[str] = field(default_factory=list)

    @property
    def latent_size(self) -> int:
        return int(self.vector.shape[0])


def _registry_hashes():
    from ..registry import list_models

    return {str(m.config.get("sha256")): m.id for m in list_models("bscore") if m.config.get("sha256")}


def load_bscore_model(folder) -> BScoreModel:
    folder = Path(folder)
    path = folder / "model.json" if folder.is_dir() else folder
    if not path.is_file():
        raise ModelMissingError("B-score model file %s not found." % path,
                                hint="Point --bscore-dir at a folder holding model.json (BSCORE_MODELS/<name>/).")
    raw = path.read_bytes()
    try:
        obj = json.loads(raw.decode("utf-8"))
        vec = np.asarray(obj["bscore_vector"], dtype=np.float64).reshape(-1)
        mu, sd = float(obj["mean_healthy"]), float(obj["std_healthy"])
    except KeyError as exc:
        raise ModelInvalidError("%s lacks the key %s (needs bscore_vector, mean_healthy, std_healthy)." % (path, exc))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ModelInvalidError("%s is not a valid B-score model: %s" % (path, exc))
    if vec.size == 0 or not np.all(np.isfinite(vec)) or not math.isfinite(mu) or not (math.isfinite(sd) and sd > 0):
        raise ModelInvalidError("%s holds an empty or non-finite vector, or a non-positive std_healthy." % path)
    digest = hashlib.sha256(raw).hexdigest()
    rid = _registry_hashes().get(digest)
    warns = []
    if rid is None:
        msg = ("B-score model %s (sha256 %s) is not one of the registered B-score models; results are not "
               "comparable with the published B-score." % (path, digest[:12]))
        log.warning(msg)
        warns.append(msg)
    return BScoreModel(vec, mu, sd, path, digest, rid, warns)


def bscore(latent, model: BScoreModel) -> float:
    """B-score of one latent; refuses a latent whose size differs from the B-score vector's."""
    z = np.asarray(latent, dtype=np.float64).reshape(-1)
    if z.size != model.latent_size:
        raise NsmError("The B-score model has a %d-value vector but the NSM latent has %d values."
                       % (model.latent_size, z.size),
                       hint="Use the B-score model that belongs to this NSM (bone+cartilage <-> 647, bone only "
                            "<-> 551).")
    return float((z @ model.vector - model.mean_healthy) / model.std_healthy)


def check_compatible(model: BScoreModel, latent_size: int) -> None:
    """Refuse early (before a fit) a B-score model that cannot score this NSM's latents."""
    if model.latent_size != int(latent_size):
        raise NsmError("The B-score model's vector has %d values but the NSM latent size is %d."
                       % (model.latent_size, latent_size),
                       hint="Use the B-score model that belongs to this NSM (bone+cartilage <-> 647, bone only "
                            "<-> 551).")


def default_search_dirs() -> List[Path]:
    """Where B-score folders are looked for when no --bscore-dir is given: ``bscore/`` under the sample-data
    locations (a pre-filled ``shared/data``, the sample-data cache)."""
    from ..sample_data import default_cache, shared_data_candidates

    return [c / "bscore" for c in shared_data_candidates()] + [default_cache() / "bscore"]


def find_bscore_folder(bscore_id: str, search: Optional[List[Path]] = None) -> Optional[Path]:
    """The folder (holding model.json) of the registered B-score model ``bscore_id``, searched under
    ``search`` (a folder that is itself the model, or a parent holding the published folder name)."""
    from ..registry import get_model

    folder_name = get_model(bscore_id).config["folder"]
    for d in (search if search is not None else default_search_dirs()):
        d = Path(d)
        if (d / folder_name / "model.json").is_file():
            return d / folder_name
    return None


def ensure_bscore_folder(bscore_id: str, offline: bool = False, progress=None, cache_dir=None,
                         search: Optional[List[Path]] = None) -> Path:
    """The B-score folder of ``bscore_id`` for a run: the places on disk first (:func:`find_bscore_folder`),
    then the model cache, then a download from the registry's source (Git files at a pinned commit, each
    sha256-checked). Raises ModelMissingError (offline, unreachable) or ModelInvalidError (sha256 mismatch)."""
    found = find_bscore_folder(bscore_id, search)
    if found is not None:
        return found
    from ..hub import ensure_model
    from ..registry import get_model

    return ensure_model(get_model(bscore_id), offline=offline, progress=progress, cache_dir=cache_dir)
