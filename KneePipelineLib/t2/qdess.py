"""qDESS two-echo T2 estimator (Sveinsson et al., MRM 2017; REFERENCE §6)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import T2Error
from ..io.volume import Volume
from .types import QdessParams, T2Maps

GAMMA_RAD_PER_G_S = 4258.0 * 2.0 * math.pi


def qdess_params(source: Optional[Dict[str, Any]] = None, tr_ms: Optional[float] = None,
                 te_ms: Optional[float] = None, flip_deg: Optional[float] = None, tg_us: Optional[float] = None,
                 gl_area: Optional[float] = None, t1_ms: Optional[float] = None,
                 diffusivity_m2_s: Optional[float] = None) -> QdessParams:
    """Resolve the sequence parameters: user values first, then the DICOM header (``MultiEcho.source``):
    TR (0018,0080), TE of the first echo (0018,0081), flip angle (0018,1314), and the GE private tags
    Tg (0019,10B7) and GlArea (0019,10B6). Records where each value came from."""
    src = dict(source or {})
    tes = src.get("echo_times_ms") or []
    dicom_vals = {"tr_ms": src.get("repetition_time_ms"), "te_ms": tes[0] if tes else None,
                  "flip_deg": src.get("flip_angle_deg")}
    vendor_vals = {"tg_us": src.get("ge_gradient_duration_us"), "gl_area": src.get("ge_gradient_area")}
    user = {"tr_ms": tr_ms, "te_ms": te_ms, "flip_deg": flip_deg, "tg_us": tg_us, "gl_area": gl_area}
    p = QdessParams()
    origin: Dict[str, str] = {}
    for key, uval in user.items():
        if uval is not None:
            setattr(p, key, float(uval))
            origin[key] = "user"
        else:
            v = dicom_vals.get(key, vendor_vals.get(key))
            if v is not None:
                setattr(p, key, float(v))
                origin[key] = "dicom" if key in dicom_vals else "vendor_tag"
    if t1_ms is not None:
        p.t1_ms = float(t1_ms)
        origin["t1_ms"] = "user"
    else:
        origin["t1_ms"] = "default"
    if diffusivity_m2_s is not None:
        p.diffusivity_m2_s = float(diffusivity_m2_s)
        origin["diffusivity_m2_s"] = "user"
    else:
        origin["diffusivity_m2_s"] = "default"
    p.source = origin
    return p


def qdess_t2_values(s1: np.ndarray, s2: np.ndarray, params: QdessParams,
                    allow_fallback: bool = True) -> Tuple[np.ndarray, str, Dict[str, float]]:
    r"""T2 (ms) from the two qDESS echoes, element-wise; returns (T2, estimator, constants).

    With times in seconds, α the flip angle, T1 = ``t1_ms``/1000, D the diffusivity (m²/s) and
    γ = 4258·2π rad/(G·s)::

        Tg    = tg_us · 1e-6
        Gl    = GlArea / (Tg · 1e6) · 100
        ΔkL   = γ · Gl · Tg
        E     = exp(−TR/T1 − TR · ΔkL² · D)
        k     = sin²(α/2) · (1 + E) / (1 − cos α · E)
        c1    = (TR − Tg/3) · ΔkL² · D
        T2/ms = −2000 · (TR − TE) / (ln(r/k) + c1),   r = S2 / S1

    Without Tg and GlArea (the GE private tags are often stripped by anonymisation) the low-spoiling
    estimator runs: E = exp(−TR/T1), c1 = 0 (``allow_fallback=False`` makes that an error).
    """
    missing = params.missing()
    if missing:
        raise T2Error("qDESS T2 needs %s, which neither the DICOM header nor the options gave."
                      % ", ".join(missing), hint="Pass them with --tr-ms, --te-ms, --flip-deg.")
    if not params.has_diffusion_terms and not allow_fallback:
        names = [n for n, v in (("gradient duration Tg (0019,10B7; --tg-us)", params.tg_us),
                                ("gradient area GlArea (0019,10B6; --gl-area)", params.gl_area)) if v is None]
        raise T2Error("qDESS T2 with the diffusion correction needs %s." % " and ".join(names),
                      hint="Pass --tg-us and --gl-area, or allow the low-spoiling estimator.")
    tr = params.tr_ms * 1e-3
    te = params.te_ms * 1e-3
    t1 = params.t1_ms * 1e-3
    if not (tr > te >= 0) or t1 <= 0:
        raise T2Error("qDESS parameters are inconsistent: TR %.4g ms must exceed TE %.4g ms (> 0), T1 %.4g ms > 0."
                      % (params.tr_ms, params.te_ms, params.t1_ms))
    alpha = math.radians(params.flip_deg)
    if params.has_diffusion_terms:
        tg = params.tg_us * 1e-6
        if tg <= 0:
            raise T2Error("The qDESS gradient duration Tg must be positive; got %g us." % params.tg_us)
        gl = params.gl_area / (tg * 1e6) * 100.0
        dkl = GAMMA_RAD_PER_G_S * gl * tg
        diff = dkl * dkl * params.diffusivity_m2_s
        e = math.exp(-tr / t1 - tr * diff)
        c1 = (tr - tg / 3.0) * diff
        estimator = "sveinsson-diffusion"
    else:
        dkl = 0.0
        e = math.exp(-tr / t1)
        c1 = 0.0
        estimator = "low-spoiling (no diffusion term: E = exp(-TR/T1), c1 = 0)"
    k = math.sin(alpha / 2.0) ** 2 * (1.0 + e) / (1.0 - math.cos(alpha) * e)
    s1 = np.asarray(s1, dtype=np.float64)
    s2 = np.asarray(s2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = s2 / s1
        t2 = -2000.0 * (tr - te) / (np.log(r / k) + c1)
    return t2, estimator, {"E": e, "k": k, "c1": c1, "delta_kL_rad_per_m": dkl}


def qdess_t2(s1: Volume, s2: Volume, params: QdessParams, t2_range_ms: Tuple[float, float] = (0.0, 100.0),
             allow_fallback: bool = True, min_signal: Optional[float] = None) -> T2Maps:
    """qDESS T2 map from the first (S+, FID-like) and second (S−, echo-like) echo volumes.

    The estimator is documented in :func:`qdess_t2_values`. ``valid`` = both signals above ``min_signal``
    (default: 2 % of the 99th percentile of S1), finite T2 inside ``t2_range_ms`` (lo, hi].
    ``method`` names the estimator that ran and ``params`` holds every value and where it came from.
    """
    if not s1.same_geometry(s2, tol=1e-3):
        raise T2Error("The two qDESS echoes have different grids.", hint="Give both echoes of one qDESS series.")
    t2, estimator, consts = qdess_t2_values(s1.array, s2.array, params, allow_fallback)
    a1 = np.asarray(s1.array, dtype=np.float64)
    a2 = np.asarray(s2.array, dtype=np.float64)
    if min_signal is None:
        pos = a1[a1 > 0]
        min_signal = 0.02 * float(np.percentile(pos, 99)) if pos.size else 0.0
    lo, hi = float(t2_range_ms[0]), float(t2_range_ms[1])
    valid = (a1 > min_signal) & (a2 > 0) & np.isfinite(t2) & (t2 > lo) & (t2 <= hi)
    out = np.where(valid, t2, np.nan).astype(np.float32)
    params_out = {
        "estimator": estimator,
        "tr_ms": params.tr_ms, "te_ms": params.te_ms, "flip_deg": params.flip_deg,
        "tg_us": params.tg_us, "gl_area": params.gl_area, "t1_ms": params.t1_ms,
        "diffusivity_m2_s": params.diffusivity_m2_s, "parameter_sources": dict(params.source),
        "constants": consts, "t2_range_ms": [lo, hi], "min_signal": float(min_signal),
        "n_valid": int(valid.sum()),
    }
    return T2Maps(t2_ms=s1.with_array(out), s0=s1.with_array(a1.astype(np.float32)),
                  r2=s1.with_array(np.full(a1.shape, np.nan, dtype=np.float32)), valid=s1.with_array(valid),
                  method="qdess:" + estimator.split(" ")[0], params=params_out)
