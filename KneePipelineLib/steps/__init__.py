"""The pipeline's steps, in the order a run executes them.

Each step is one function ``step_<name>(ctx: RunContext)`` in the module of its stage; this list gives
each its progress weight, when it runs and whether its failure fails the run. ``pipeline.run`` walks it.
"""
from __future__ import annotations

from typing import List

from .context import BUNDLE_NAME, RESULTS_CSV, RESULTS_JSON, WORK_DIR, RunContext, Step, release_memory
from .inputs import step_input
from .morphometry import step_morphometry
from .nsm import NSM_MODELS, resolve_bscore_dir, resolve_nsm_dir, step_nsm
from .report import step_bundle, step_report
from .results import flatten_results, jsonable, step_results
from .segmentation import segmentation_key, step_segmentation
from .t2 import step_t2

STEPS: List[Step] = [
    Step("input", 1, step_input),
    Step("segmentation", 30, step_segmentation, enabled=lambda o: bool(o.image) and not o.labels),
    Step("morphometry", 10, step_morphometry),
    Step("t2", 4, step_t2, enabled=lambda o: bool(o.echoes)),
    Step("nsm", 25, step_nsm, enabled=lambda o: o.nsm != "none"),
    Step("results", 1, step_results),
    Step("report", 4, step_report, enabled=lambda o: o.report, fatal=False),
    Step("bundle", 1, step_bundle),
]

__all__ = ["STEPS", "Step", "RunContext", "RESULTS_JSON", "RESULTS_CSV", "BUNDLE_NAME", "WORK_DIR",
           "NSM_MODELS", "flatten_results", "jsonable", "release_memory", "resolve_bscore_dir",
           "resolve_nsm_dir", "segmentation_key"]
