"""2D charts: regional thickness bars and the B-score scale."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .. import labels as L

PLATE_COLOURS = {L.FEMUR: "#d9b64a", L.TIBIA: "#c8674f", L.PATELLA: "#5fa6c4"}

# Reference points on the B-score scale (REFERENCE section 8): 0 = mean of healthy knees, 1 = one SD of
# healthy knees; the mean OA latent scores about 1.79 (bone + cartilage) / 1.75 (bone only).
OA_MEAN_BSCORE = {"nsm_bone_cartilage": 1.79, "nsm_bone_only": 1.75,
                  "bscore_bone_cartilage": 1.79, "bscore_bone_only": 1.75}


def _f(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def region_bars(ax, regions: List[Dict[str, Any]], coverage_min: float = 0.8) -> None:
    rows = {r.get("name"): r for r in regions}
    names, means, sds, cols, hatch, covs = [], [], [], [], [], []
    for reg in L.REGIONS:
        r = rows.get(reg.name, {})
        names.append(reg.chondrometrics)
        m = _f(r.get("thickness_mean_mm"))
        means.append(np.nan if m is None else m)
        s = _f(r.get("thickness_std_mm"))
        sds.append(0.0 if s is None else s)
        cols.append(PLATE_COLOURS.get(reg.bone, "#888888"))
        cov = None
        for k, v in r.items():
            if "coverage" in k and _f(v) is not None:
                cov = _f(v)
                break
        covs.append(cov)
        hatch.append("//" if cov is not None and cov < coverage_min else "")
    x = np.arange(len(names))
    bars = ax.bar(x, np.nan_to_num(means), yerr=sds, color=cols, capsize=3, edgecolor="k", linewidth=0.6)
    for b, h in zip(bars, hatch):
        b.set_hatch(h)
    top = np.nanmax(np.array(means) + np.array(sds)) if np.isfinite(means).any() else 1.0
    for xi, m, c in zip(x, means, covs):
        if not np.isfinite(m):
            ax.text(xi, 0.05 * top, "n/a", ha="center", va="bottom", fontsize=8, color="r")
            continue
        lab = "%.2f" % m + ("" if c is None else "\n%.0f%%" % (100 * c))
        ax.text(xi, 0.02 * top, lab, ha="center", va="bottom", fontsize=7, color="k")
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("mean cartilage thickness (mm) \u00b1 SD", fontsize=8)
    ax.set_ylim(0, top * 1.15 + 0.1)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    handles = [Patch(color=PLATE_COLOURS[L.FEMUR], label="femur"), Patch(color=PLATE_COLOURS[L.TIBIA], label="tibia"),
               Patch(color=PLATE_COLOURS[L.PATELLA], label="patella"),
               Patch(facecolor="w", edgecolor="k", hatch="//", label="coverage < %.0f%%" % (100 * coverage_min))]
    ax.legend(handles=handles, fontsize=7, loc="upper right", ncol=2)


def bscore_scale(ax, scores: Dict[str, float]) -> None:
    """One row per model: healthy band (0 \u00b1 1 SD, \u00b1 2 SD), OA mean, the knee's B-score."""
    vals = [v for v in scores.values() if v is not None]
    lo = min([-3.0] + [v - 1 for v in vals])
    hi = max([5.0] + [v + 1 for v in vals])
    n = max(1, len(scores))
    ax.axvspan(-2, 2, color="#cfe8cf", zorder=0, label="healthy \u00b12 SD")
    ax.axvspan(-1, 1, color="#8fcf8f", zorder=0, label="healthy \u00b11 SD")
    ax.axvline(0, color="g", lw=1, ls="--", label="healthy mean (B = 0)")
    for i, (model, b) in enumerate(scores.items()):
        y = n - 1 - i
        oa = OA_MEAN_BSCORE.get(model)
        if oa is not None:
            ax.plot([oa], [y], marker="|", ms=18, color="#b03030", mew=2,
                    label="OA mean (reference)" if i == 0 else None)
        if b is not None:
            ax.plot([b], [y], marker="D", ms=9, color="k", zorder=5, label="this knee" if i == 0 else None)
            ax.text(b, y + 0.28, "B = %.2f" % b, ha="center", fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(list(scores)[::-1], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("B-score (SD of healthy knees from the healthy mean, along the healthy\u2192OA shape axis)", fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.tick_params(labelsize=8)
