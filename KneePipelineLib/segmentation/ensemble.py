"""Multi-plane ensemble of the DOSMA 2D U-Nets (sagittal + coronal + axial), done correctly.

Each member's softmax probabilities are brought back to the *input* grid (bilinear within slices, see
:func:`.dosma.run_plane`) and fused per label:

    fused[c] = sum_m w[m, c] * p_m[c] / sum_m w[m, c]       (over members with w[m, c] > 0)

``w[m, c]`` is member m's trust in label c (registry ``config["trust"]``: ``{member_id: {label: w}}``,
default 1). A plane that is unreliable for a structure gets weight 0 for that label: its probability for
that label is ignored and the label's average is renormalised over the members that trust it -- the
excluded member's mass is *not* moved to background (the reference's STAPLE fusion let excluded labels
vote background). A label no member trusts is never chosen. The label is the argmax of ``fused``.

Agreement map: per voxel, the fraction of members whose own argmax equals the ensemble label.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import ConfigurationError, SegmentationError


def trust_matrix(member_ids: Sequence[str], n_classes: int, trust: Optional[Dict[str, Dict[Any, float]]]) -> np.ndarray:
    """(members, classes) weights from ``{member_id: {label: weight}}`` (missing -> 1)."""
    w = np.ones((len(member_ids), n_classes), dtype=np.float64)
    for m, mid in enumerate(member_ids):
        for label, value in (trust or {}).get(mid, {}).items():
            label = int(label)
            if not 0 <= label < n_classes:
                raise ConfigurationError("Trust weight for label %d of %s is outside 0..%d." % (label, mid, n_classes - 1))
            if value < 0:
                raise ConfigurationError("Trust weights must be >= 0 (got %r for %s label %d)." % (value, mid, label))
            w[m, label] = float(value)
    return w


class Fusion:
    """Streaming fusion: add members one at a time (only one member's probabilities in memory)."""

    def __init__(self, n_members: int, weights: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=np.float64)
        self.n_members = n_members
        self.num: Optional[np.ndarray] = None
        self.member_labels: List[np.ndarray] = []

    def add(self, m: int, probs: np.ndarray) -> None:
        """``probs``: (C, ...) probabilities of member ``m``."""
        C = probs.shape[0]
        if C != self.weights.shape[1]:
            raise SegmentationError("Ensemble member %d has %d classes, expected %d." % (m, C, self.weights.shape[1]))
        if self.num is None:
            self.num = np.zeros(probs.shape, dtype=np.float32)
        for c in range(C):
            w = self.weights[m, c]
            if w > 0:
                self.num[c] += np.float32(w) * probs[c].astype(np.float32)
        self.member_labels.append(np.argmax(probs, axis=0).astype(np.uint8))

    def result(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels uint8, agreement float32 in [0, 1], fused probabilities float32)."""
        assert self.num is not None
        den = self.weights.sum(axis=0)
        fused = np.empty_like(self.num)
        for c in range(fused.shape[0]):
            if den[c] > 0:
                fused[c] = self.num[c] / np.float32(den[c])
            else:
                fused[c] = -1.0  # no member trusts this label: it can never win
        labels = np.argmax(fused, axis=0).astype(np.uint8)
        agree = np.zeros(labels.shape, dtype=np.float32)
        for ml in self.member_labels:
            agree += ml == labels
        agree /= np.float32(len(self.member_labels))
        np.clip(fused, 0.0, None, out=fused)
        return labels, agree, fused


def combine_probabilities(probs: Sequence[np.ndarray], weights: Optional[np.ndarray] = None
                          ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse members' (C, ...) probabilities; ``weights`` (members, C) trust (default all 1).

    Returns (labels, agreement, fused probabilities)."""
    probs = list(probs)
    if not probs:
        raise SegmentationError("An ensemble needs at least one member.")
    C = probs[0].shape[0]
    w = np.ones((len(probs), C)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(probs), C):
        raise ConfigurationError("Trust weights have shape %s, expected %s." % (w.shape, (len(probs), C)))
    fusion = Fusion(len(probs), w)
    for m, p in enumerate(probs):
        fusion.add(m, p)
    return fusion.result()


def predict_ensemble(image, entry, model_path: Optional[Path], options, progress=None):
    """Run every member of ``entry.config["members"]`` and fuse; labels in the input's exact geometry.

    ``model_path``: a folder holding all members' files (``--model-dir``), or None to use the hub cache.
    The result carries ``agreement`` (a Volume, fraction of members agreeing) as an extra attribute and
    summary numbers in ``model["agreement"]``."""
    from ..hub import ensure_model
    from ..registry import get_model
    from . import SegmentationResult
    from .dosma import canonical, postprocess_labels, run_plane

    t0 = time.time()
    member_ids = list((entry.config or {}).get("members", []))
    if not member_ids:
        raise ConfigurationError("Ensemble %s lists no members." % entry.id)
    members = [get_model(mid) for mid in member_ids]
    n = len(members)

    def sub(m: int, lo: float, hi: float):
        def report(fraction, message=""):
            if progress is not None:
                progress((m + lo + (hi - lo) * float(fraction)) / n * 0.95, "%s: %s" % (member_ids[m], message))
        return report

    fusion: Optional[Fusion] = None
    infos, warnings = [], []
    for m, member in enumerate(members):
        root = ensure_model(member, model_dir=str(model_path) if model_path else getattr(options, "model_dir", None),
                            offline=getattr(options, "offline", False), progress=sub(m, 0.0, 0.1))
        out = run_plane(image, member, root, options, sub(m, 0.1, 1.0), probabilities=True)
        probs = out["probabilities"]
        if fusion is None:
            weights = trust_matrix(member_ids, probs.shape[0], (entry.config or {}).get("trust"))
            fusion = Fusion(n, weights)
        fusion.add(m, probs)
        del probs, out["probabilities"]
        infos.append(out["info"])
        warnings += [w for w in out["warnings"] if w not in warnings]
    assert fusion is not None
    labels, agree, _ = fusion.result()
    del fusion
    labels = canonical(labels, entry)
    if getattr(options, "postprocess", True):
        if progress is not None:
            progress(0.96, "largest component per label, bone hole filling")
        labels = postprocess_labels(labels)
    fg = labels > 0
    info = {"id": entry.id, "backend": "ensemble", "members": infos, "warnings": warnings,
            "trust": (entry.config or {}).get("trust", {}),
            "fusion": "per-label trust-weighted mean of member probabilities, renormalised per label",
            "agreement": {"mean_foreground": float(agree[fg].mean()) if fg.any() else None,
                          "fraction_foreground_unanimous": float((agree[fg] == 1).mean()) if fg.any() else None},
            "seconds": round(time.time() - t0, 2), "postprocess": bool(getattr(options, "postprocess", True))}
    result = SegmentationResult(labels=image.with_array(labels.astype(np.uint8)), model=info)
    result.agreement = image.with_array(agree)
    if progress is not None:
        progress(1.0, "ensemble of %d models" % n)
    return result
