"""nnU-Net model settings from the model's own files, and the check that a results folder is the model the
registry describes -- before anything is predicted.

Settings (each recorded with where it came from):

* **fold** -- ``--folds`` when given; else ``model_config.json`` ``model_info.fold`` of the configuration
  that makes the final prediction (as nnunet_knee_inference ``scripts/inference.py`` ``_detect_fold``); else
  the registry's fold (1, the reference's default).
* **checkpoint** -- ``--checkpoint``; else ``model_config.json`` ``model_info.checkpoint`` where a folder
  names one; else ``checkpoint_best.pth`` (the reference's ``-chk checkpoint_best.pth``).
* **configuration** -- the registry's (the folder ``<trainer>__<plans>__<configuration>``); a
  ``model_config.json`` ``configuration`` that names another one is recorded as stale, not obeyed (the
  published 3d_fullres folder carries the cascade's value).

Checks (``check_folder``; ``kneepipeline models --check DIR`` runs them on a folder a user has):
``dataset.json`` and ``plans.json`` readable; one input channel; the configuration present in the plans;
``transpose_forward`` / ``transpose_backward`` inverse permutations that keep the coarsest spacing on the
model frame's through-plane axis (a sagittal-trained model: the LR axis of ``ModelEntry.frame``); the label
set the registry's convention expects (values and names); the chosen fold's checkpoint present.
"""
from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ModelInvalidError

MODEL_CONFIG = "model_config.json"
_THROUGH_PLANE = {"sagittal": ("LR", "RL"), "coronal": ("AP", "PA"), "axial": ("SI", "IS")}


@dataclass
class NnunetSettings:
    configurations: List[str]
    folds: List[str]
    checkpoint: str                                   # file name, e.g. checkpoint_best.pth
    source: Dict[str, str] = field(default_factory=dict)   # setting -> where it came from
    notes: List[str] = field(default_factory=list)

    def record(self) -> Dict[str, Any]:
        return {"configurations": list(self.configurations), "folds": list(self.folds),
                "checkpoint": self.checkpoint, "source": dict(self.source), "notes": list(self.notes)}


def _read_json(path: pathlib.Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelInvalidError("%s is missing in %s." % (what, path.parent),
                                hint="This is not a complete nnU-Net v2 results folder: download the model "
                                     "again or point --model-dir at the right folder.") from None
    except (OSError, ValueError) as exc:
        raise ModelInvalidError("%s in %s cannot be read (%s)." % (what, path.parent, type(exc).__name__),
                                hint="The file is damaged: download the model again.") from exc
    if not isinstance(data, dict):
        raise ModelInvalidError("%s in %s is not a JSON object." % (what, path.parent))
    return data


def _declared(folder: pathlib.Path, key: str) -> Any:
    p = pathlib.Path(folder) / MODEL_CONFIG
    if not p.is_file():
        return None
    info = _read_json(p, MODEL_CONFIG).get("model_info", {})
    return info.get(key) if isinstance(info, dict) else None


def declared_fold(folder: pathlib.Path) -> Optional[str]:
    """``model_info.fold`` of ``folder/model_config.json``, or None."""
    fold = _declared(folder, "fold")
    return None if fold is None else str(fold)


def model_dir_folds(entry: Any, model_dir: str) -> Optional[List[str]]:
    """The fold a user's model folder declares (``model_config.json`` of the final configuration), looked
    for where ``--model-dir`` may point (the results root, the dataset folder or a trainer folder)."""
    from ..hub import _candidate_roots

    confs = (entry.config or {}).get("configurations", [])
    if not confs:
        return None
    for root in _candidate_roots(entry, pathlib.Path(model_dir).expanduser()):
        fold = declared_fold(root / folder_name(entry, confs[-1]))
        if fold is not None:
            return [fold]
    return None


def folder_name(entry: Any, configuration: str) -> str:
    cfg = entry.config or {}
    return "%s__%s__%s" % (cfg.get("trainer", "nnUNetTrainer"), cfg.get("plans", "nnUNetPlans"), configuration)


def nnunet_settings(entry: Any, root: pathlib.Path, folds: Optional[Sequence] = None,
                    checkpoint: str = "best") -> NnunetSettings:
    """Fold / checkpoint / configurations for ``entry`` in the results folder ``root`` (see module doc)."""
    confs = [str(c) for c in (entry.config or {}).get("configurations", [])]
    if not confs:
        raise ModelInvalidError("Registry entry %s names no nnU-Net configuration." % entry.id)
    ck = checkpoint if checkpoint.endswith(".pth") else "checkpoint_%s.pth" % checkpoint
    s = NnunetSettings(confs, [], ck, {"configurations": "registry",
                                       "checkpoint": "options" if checkpoint != "best" else "default (reference)"})
    last = pathlib.Path(root) / folder_name(entry, confs[-1])
    if folds:
        s.folds, s.source["folds"] = [str(f) for f in folds], "options"
    else:
        fold = declared_fold(last)
        if fold is not None:
            s.folds, s.source["folds"] = [fold], "%s/%s" % (last.name, MODEL_CONFIG)
        else:
            s.folds = [str(f) for f in (entry.config or {}).get("folds", [1])]
            s.source["folds"] = "registry (no %s)" % MODEL_CONFIG
    declared_ck = _declared(last, "checkpoint")
    if checkpoint == "best" and declared_ck:   # a folder that names its checkpoint (not the published one)
        s.checkpoint = str(declared_ck) if str(declared_ck).endswith(".pth") else "checkpoint_%s.pth" % declared_ck
        s.source["checkpoint"] = "%s/%s" % (last.name, MODEL_CONFIG)
    for conf in confs:
        p = pathlib.Path(root) / folder_name(entry, conf) / MODEL_CONFIG
        if p.is_file():
            info = _read_json(p, MODEL_CONFIG).get("model_info", {})
            named = info.get("configuration") if isinstance(info, dict) else None
            if named and named != conf:
                s.notes.append("%s names configuration %r in folder %s: stale, the folder's %s is used"
                               % (MODEL_CONFIG, named, p.parent.name, conf))
            other = info.get("fold") if isinstance(info, dict) else None
            if other is not None and str(other) not in s.folds and s.source["folds"] != "options":
                s.notes.append("%s of %s names fold %s; the run uses fold %s"
                               % (MODEL_CONFIG, conf, other, ",".join(s.folds)))
    return s


def _norm(name: str) -> str:
    n = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    return re.sub(r"_bone$", "", n)


def expected_labels(entry: Any) -> Dict[int, str]:
    """Label value -> tissue name the registry's label convention expects from the network."""
    from ..labels import TISSUES, load_convention

    table = load_convention(entry.label_convention or "dosma")
    return {int(v): ("background" if c == 0 else TISSUES[c]) for v, c in table.items()}


def _configuration(plans: dict, conf: str, folder: pathlib.Path) -> dict:
    confs = plans.get("configurations")
    if not isinstance(confs, dict) or conf not in confs:
        raise ModelInvalidError("plans.json in %s has no configuration %r (it has %s)."
                                % (folder, conf, ", ".join(sorted(confs or {})) or "none"),
                                hint="This folder holds another configuration than the registry entry expects.")
    cfg, seen = dict(confs[conf]), {conf}
    while "inherits_from" in cfg:
        parent = cfg.pop("inherits_from")
        if parent in seen or parent not in confs:
            raise ModelInvalidError("plans.json in %s: configuration %r inherits from unknown %r."
                                    % (folder, conf, parent))
        seen.add(parent)
        cfg = {**confs[parent], **cfg}
    return cfg


def check_folder(entry: Any, folder: pathlib.Path, configuration: str, folds: Sequence[str],
                 checkpoint: str) -> Dict[str, Any]:
    """Raise :class:`ModelInvalidError` naming the first thing that makes ``folder`` not the model the
    registry describes; return what was checked."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise ModelInvalidError("The nnU-Net folder %s does not exist." % folder,
                                hint="Expected %s inside the model folder." % folder.name)
    plans = _read_json(folder / "plans.json", "plans.json")
    ds = _read_json(folder / "dataset.json", "dataset.json")
    channels = ds.get("channel_names", ds.get("modality", {"0": "MRI"}))
    if not isinstance(channels, dict) or len(channels) != 1:
        raise ModelInvalidError("The model in %s expects %d input channels; KneePipeline supplies one image."
                                % (folder, len(channels) if isinstance(channels, dict) else 0),
                                hint="Use a single-channel knee model.")
    cfg = _configuration(plans, configuration, folder)
    tf, tb = plans.get("transpose_forward"), plans.get("transpose_backward")
    if (not isinstance(tf, list) or sorted(tf) != [0, 1, 2] or not isinstance(tb, list)
            or [tf[i] for i in tb] != [0, 1, 2]):
        raise ModelInvalidError("plans.json in %s has transpose_forward %r / transpose_backward %r: not a pair "
                                "of inverse axis permutations." % (folder, tf, tb),
                                hint="The plans file is damaged or not an nnU-Net v2 plans file.")
    spacing = cfg.get("spacing")
    if not isinstance(spacing, list) or len(spacing) != 3 or not all(float(v) > 0 for v in spacing):
        raise ModelInvalidError("plans.json in %s: configuration %s has no valid 3D spacing (%r)."
                                % (folder, configuration, spacing))
    frame = tuple(getattr(entry, "frame", ()) or ())
    plane = getattr(entry, "acquisition_plane", None)
    coarse_axis = None
    if frame and plane in _THROUGH_PLANE and max(spacing) > 1.05 * sorted(spacing)[1]:
        coarse_axis = int(tf[max(range(3), key=lambda a: float(spacing[a]))])   # in the input array's axes
        want = next(i for i, c in enumerate(frame) if c in _THROUGH_PLANE[plane])
        if coarse_axis != want:
            raise ModelInvalidError(
                "plans.json in %s puts the coarsest spacing (%.3g mm) on input axis %d (%s of frame %s) with "
                "transpose_forward %r, but %s was trained on %s images, whose slice axis is %s (axis %d): "
                "this folder was trained in another voxel frame." % (
                    folder, max(float(v) for v in spacing), coarse_axis, frame[coarse_axis], "/".join(frame), tf,
                    entry.id, plane, frame[want], want),
                hint="Use the model folder the registry entry describes (kneepipeline models --check DIR).")
    want_labels = expected_labels(entry)
    got = ds.get("labels")
    if not isinstance(got, dict):
        raise ModelInvalidError("dataset.json in %s has no label table." % folder)
    try:
        got_by_value = {int(v): _norm(k) for k, v in got.items()}
    except (TypeError, ValueError):
        raise ModelInvalidError("dataset.json in %s has region-based or non-integer labels; the knee models "
                                "use one integer per tissue." % folder) from None
    mismatch = sorted(v for v in set(want_labels) | set(got_by_value)
                      if _norm(want_labels.get(v, "?")) != got_by_value.get(v))
    if mismatch:
        raise ModelInvalidError(
            "dataset.json in %s has another label set than %s emits (%s convention): values %s differ (found %s; "
            "expected %s)." % (folder, entry.id, entry.label_convention, mismatch,
                               ", ".join("%d=%s" % (v, got_by_value.get(v, "-")) for v in mismatch),
                               ", ".join("%d=%s" % (v, want_labels.get(v, "-")) for v in mismatch)),
            hint="This folder is a different model; KneePipeline never guesses a label mapping.")
    for fold in folds:
        ck = folder / ("fold_%s" % fold) / checkpoint
        if not ck.is_file():
            have = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
            raise ModelInvalidError("Fold %s of %s is missing: %s does not exist (folds present: %s)."
                                    % (fold, folder.name, ck, ", ".join(have) or "none"),
                                    hint="Download that fold, or choose one that is present with --folds.")
    return {"folder": folder.name, "configuration": configuration, "transpose_forward": tf,
            "spacing": [float(v) for v in spacing], "coarse_input_axis": coarse_axis,
            "labels": len(got_by_value), "folds": list(folds), "checkpoint": checkpoint}


def check_model(entry: Any, root: pathlib.Path, folds: Optional[Sequence] = None,
                checkpoint: str = "best") -> Dict[str, Any]:
    """Settings + every configuration folder checked; raises :class:`ModelInvalidError` on the first problem."""
    s = nnunet_settings(entry, root, folds, checkpoint)
    checks = [check_folder(entry, pathlib.Path(root) / folder_name(entry, c), c, s.folds, s.checkpoint)
              for c in s.configurations]
    return {"settings": s.record(), "checks": checks}


__all__ = ["NnunetSettings", "nnunet_settings", "model_dir_folds", "check_folder", "check_model", "declared_fold",
           "expected_labels", "folder_name"]
