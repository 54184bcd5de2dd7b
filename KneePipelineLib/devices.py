"""Apple GPUs (MPS): the automatic device order and the per-step CPU fallback every torch step uses.

* ``auto`` means an NVIDIA GPU (cuda), else an Apple Silicon GPU (mps), else the CPU (:func:`auto_device`).
* torch runs operations its MPS backend lacks on the CPU only when ``PYTORCH_ENABLE_MPS_FALLBACK=1`` is in the
  environment *before torch is imported*: the CLI's entry and the Slicer runner set it
  (:func:`enable_mps_fallback`).
* What that per-operation fallback cannot cover (an unsupported dtype such as float64, a missing kernel raised
  as ``NotImplementedError``/``TypeError``, a torch without MPS) makes the step rerun on the CPU with a warning
  that says so (:data:`MPS_STEP_ERRORS`, :func:`mps_fallback_warning`): nnU-Net, the 2D U-Nets and the NSM fit.
"""
from __future__ import annotations

import os
from typing import Any, MutableMapping, Optional

MPS_FALLBACK_ENV = "PYTORCH_ENABLE_MPS_FALLBACK"
MPS_STEP_ERRORS = (RuntimeError, TypeError, NotImplementedError)


def enable_mps_fallback(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """Let torch run operations MPS lacks on the CPU (a user's explicit setting is kept)."""
    (os.environ if environ is None else environ).setdefault(MPS_FALLBACK_ENV, "1")


def mps_available(torch: Any) -> bool:
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(mps is not None and mps.is_available())


def auto_device(torch: Any):
    """cuda > mps > cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available(torch):
        return torch.device("mps")
    return torch.device("cpu")


def mps_fallback_warning(what: str, exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return "The Apple GPU (MPS) could not run %s (%s: %s); it ran on the CPU instead (slower)." % (
        what, type(exc).__name__, first)
