"""Longitudinal analysis: cartilage change between visits of the same knee, per point and per region.

Read in this order: :mod:`.register` (rigid ICP of a follow-up bone onto the baseline bone), :mod:`.change`
(follow-up thickness on the baseline vertices; regional change), :mod:`.compare` (run folders in,
longitudinal.json / .csv / meshes out), :mod:`.report` (change maps and waterfall).
"""
from .compare import compare_runs  # noqa: F401
