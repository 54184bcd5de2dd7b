"""Data types of the T2 package: multi-echo input, fitted maps, qDESS sequence parameters."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

from ..io.volume import Volume


@dataclass
class MultiEcho:
    """Several echoes of one acquisition on one grid.

    ``images`` is ``(n_echo, k, j, i)`` float32 in the order of ``echo_times_ms`` (ascending);
    ``geometry`` is the first echo as a :class:`Volume` (LPS mm); ``source`` holds the sequence parameters
    that were found (never patient fields).
    """

    images: np.ndarray
    echo_times_ms: np.ndarray
    geometry: Volume
    source: Dict[str, Any] = field(default_factory=dict)

    @property
    def n_echo(self) -> int:
        return int(self.images.shape[0])

    def echo(self, index: int) -> Volume:
        return self.geometry.with_array(self.images[index])


@dataclass
class T2Maps:
    """Fitted maps on one grid. ``t2_ms`` is NaN wherever ``valid`` is False."""

    t2_ms: Volume
    s0: Volume
    r2: Volume
    valid: Volume
    method: str
    params: Dict[str, Any] = field(default_factory=dict)


@dataclass
class QdessParams:
    """Sequence parameters of the qDESS two-echo T2 estimator (REFERENCE §6).

    ``tg_us`` (gradient duration, GE tag (0019,10B7)) and ``gl_area`` (gradient area, GE tag (0019,10B6))
    are optional: without them the low-spoiling estimator runs (no diffusion term).
    ``source`` says where each value came from ("dicom", "vendor_tag", "user", "default").
    """

    tr_ms: Optional[float] = None
    te_ms: Optional[float] = None
    flip_deg: Optional[float] = None
    tg_us: Optional[float] = None
    gl_area: Optional[float] = None
    t1_ms: float = 1200.0
    diffusivity_m2_s: float = 1.25e-9
    source: Dict[str, str] = field(default_factory=dict)

    def missing(self) -> List[str]:
        names = {"tr_ms": "repetition time TR (--tr-ms)", "te_ms": "echo time TE (--te-ms)",
                 "flip_deg": "flip angle (--flip-deg)"}
        return [label for key, label in names.items() if getattr(self, key) is None]

    @property
    def has_diffusion_terms(self) -> bool:
        return self.tg_us is not None and self.gl_area is not None
