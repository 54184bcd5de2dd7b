"""Quality-control reports: per knee (:func:`build_report`) and per cohort (:func:`build_cohort_report`).

Rendering is headless: matplotlib (Agg) for 2D figures, VTK offscreen (EGL/OSMesa) for surfaces with a
matplotlib fallback. Heavy imports happen inside the functions.
"""
from __future__ import annotations

from pathlib import Path


def build_report(out_dir, manifest, progress=None) -> Path:
    from .build import build_report as _b

    return _b(Path(out_dir), manifest, progress)


def build_cohort_report(cohort_csv, out_dir) -> Path:
    from .cohort import build_cohort_report as _c

    return _c(Path(cohort_csv), Path(out_dir))


__all__ = ["build_report", "build_cohort_report"]
