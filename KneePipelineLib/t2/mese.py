"""Multi-echo spin-echo T2 fit, vectorised over all voxels (no Python loop per voxel).

1. Log-linear weighted least squares: ln S = ln S0 - TE/T2 with weights S² (the variance of ln S is about
   σ²/S²), solved in closed form for every voxel at once.
2. Optional non-linear refinement with a noise-floor-aware model of the magnitude signal: the *mean* of a
   Rician variable of amplitude A = S0·exp(-TE/T2) and noise σ,
   E[M] = σ·sqrt(π/2)·L_{1/2}(-A²/2σ²) = σ·sqrt(π/2)·[(1+x)·I0e(x/2) + x·I1e(x/2)], x = A²/2σ²
   (I0e, I1e: exponentially scaled Bessel functions), which least squares on the magnitudes fits without
   bias. (sqrt(A² + 2σ²), the root of the mean *squared* magnitude, over-states the floor twice at high
   SNR - E[M] ≈ sqrt(A² + σ²) there - and under-read T2 by 7 % at SNR 10.) Levenberg–Marquardt with
   per-voxel damping, a fixed number of iterations, all voxels of a chunk in one set of array operations.

σ is estimated from the image background when not given (:func:`estimate_noise_sigma`).
"""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import T2Error
from .types import MultiEcho, T2Maps

CHUNK = 131072
LM_ITERATIONS = 12
T2_BOUNDS_MS = (0.5, 2000.0)   # where the optimiser keeps T2 (the validity range is separate)


# -- noise --------------------------------------------------------------------------------------
def _rayleigh_truncated_sigma(values: np.ndarray, sigma0: float, iterations: int = 50, tol: float = 1e-4) -> float:
    """Refine σ from the magnitudes below 2σ: E[M² | M < 2σ] = 2σ²·0.68696 for a Rayleigh variable.

    ``values`` must hold the whole background (every non-zero voxel): a pre-selection below a fixed
    intensity would truncate the Rayleigh distribution lower than 2σ and bias σ low (by a third at σ = 8 %
    of the signal). 2σ keeps 86 % of the background and few tissue voxels even at SNR 6. Iterated to a
    fixed point.
    """
    sigma = float(sigma0)
    c = 1.0 - 2.0 * np.exp(-2.0) / (1.0 - np.exp(-2.0))
    v2 = np.asarray(values, dtype=np.float64) ** 2
    for _ in range(iterations):
        bg = v2[v2 < 4.0 * sigma * sigma]
        if bg.size < 50:
            break
        new = float(np.sqrt(np.mean(bg) / (2.0 * c)))
        done = abs(new - sigma) <= tol * sigma
        sigma = new
        if done:
            break
    return sigma


def estimate_noise_sigma(image: np.ndarray) -> Tuple[Optional[float], str]:
    """Noise σ of a magnitude image from its background: (σ, how it was estimated).

    Exact zeros (zero-filled or masked outside the field of view) are ignored. The background of a magnitude
    image is Rayleigh distributed with its mode at σ: the mode of the low-intensity histogram (its range
    widened until the mode lies inside it, as far as half the bright level) gives a first σ, refined by the
    truncated second moment of every voxel below 2σ. Vendor-filtered backgrounds (no Rayleigh peak, as in
    many GE exports) fall back to the RMS of the darkest half of the low-intensity voxels, and the method
    says so.
    """
    v = np.asarray(image, dtype=np.float32).ravel()
    v = v[v > 0]
    if v.size < 1000:
        return None, "not estimated (too few non-zero voxels)"
    hi = float(np.percentile(v, 99.5))
    low = v[v < 0.1 * hi]
    if low.size < 200:
        return None, "not estimated (no dark background)"
    nb = 200
    top = 0.1 * hi
    while True:
        hist, edges = np.histogram(v, bins=nb, range=(0.0, top))
        smooth = np.convolve(hist, np.ones(7) / 7.0, mode="same")
        m = int(np.argmax(smooth))
        if m < nb - 8 or top >= 0.5 * hi:
            break
        top = min(2.0 * top, 0.5 * hi)      # the mode lies at or beyond the range's end: widen it
    if 4 <= m < nb - 8 and smooth[m] > 2.0 * smooth[:2].mean():
        sigma0 = 0.5 * float(edges[m] + edges[m + 1])
        return _rayleigh_truncated_sigma(v, sigma0), "background Rayleigh mode, refined by truncated second moment"
    dark = np.sort(low)[: max(low.size // 2, 1)]
    return (float(np.sqrt(np.mean(dark.astype(np.float64) ** 2) / 2.0)),
            "background without a Rayleigh peak (vendor-filtered): RMS of the darkest low-intensity voxels / sqrt(2)")


# -- fits on (n_echo, n_voxel) arrays ----------------------------------------------------------
def loglinear_fit(signal: np.ndarray, te_ms: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted log-linear fit of every column of ``signal`` (n_echo, n): returns (S0, R2 = 1/T2 in 1/ms)."""
    s = np.asarray(signal, dtype=np.float64)
    x = np.asarray(te_ms, dtype=np.float64)
    w = np.where(s > 0, s * s, 0.0)
    y = np.log(np.maximum(s, 1e-12))
    sw = w.sum(0)
    sx = x @ w
    sxx = (x * x) @ w
    wy = w * y
    sy = wy.sum(0)
    sxy = x @ wy
    det = sw * sxx - sx * sx
    with np.errstate(divide="ignore", invalid="ignore"):
        b = (sw * sxy - sx * sy) / det
        a = (sxx * sy - sx * sxy) / det
        s0 = np.exp(np.clip(a, -700, 700))
    bad = ~(det > 1e-12 * np.maximum(sw * sxx, 1e-300))
    b[bad] = np.nan
    s0[bad] = np.nan
    return s0, -b


def rician_mean(amplitude: np.ndarray, sigma) -> Tuple[np.ndarray, np.ndarray]:
    """E[M] of a Rician magnitude M with amplitude A and noise σ, and dE[M]/dA (both arrays like A).

    E[M] = σ·sqrt(π/2)·[(1+x)·I0e(x/2) + x·I1e(x/2)], x = A²/2σ²; dE[M]/dA = sqrt(π/2)·A/(2σ)·(I0e + I1e)
    (x/2 as the argument). E[M] → σ·sqrt(π/2) at A = 0 and → sqrt(A² + σ²) for A ≫ σ; σ = 0 gives A.
    """
    from scipy.special import i0e, i1e

    a = np.abs(np.asarray(amplitude, dtype=np.float64))
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), a.shape)
    pos = sig > 0
    safe = np.where(pos, sig, 1.0)
    near = pos & (a < 8.0 * safe)
    # A ≥ 8σ: the asymptotic series A + σ²/2A + σ⁴/8A³ (error < 1e-5 σ), 30x cheaper than the Bessel functions
    q2 = np.where(near | ~pos, 0.0, safe / np.where(near | ~pos, 1.0, a)) ** 2      # (σ/A)²
    mean = a * (1.0 + q2 * (0.5 + 0.125 * q2))
    slope = 1.0 - q2 * (0.5 + 0.375 * q2)
    if near.any():
        an, sn = a[near], safe[near]
        x = (an / sn) ** 2 / 2.0
        b0, b1 = i0e(x / 2.0), i1e(x / 2.0)
        c = np.sqrt(np.pi / 2.0)
        mean[near] = sn * c * ((1.0 + x) * b0 + x * b1)
        slope[near] = c * an / (2.0 * sn) * (b0 + b1)
    mean = np.where(pos, mean, a)
    slope = np.where(pos, slope, 1.0)
    return mean, slope


def noise_floor_model(s0: np.ndarray, rate: np.ndarray, te_ms: np.ndarray, sigma: float) -> np.ndarray:
    """Expected magnitude at each echo (n_echo, n): the Rician mean of S0·exp(-TE·R)."""
    u = s0[None, :] * np.exp(-np.outer(te_ms, rate))
    return rician_mean(u, sigma)[0]


def refine_noise_floor(signal: np.ndarray, te_ms: np.ndarray, sigma: float, s0_init: np.ndarray,
                       rate_init: np.ndarray, iterations: int = LM_ITERATIONS) -> Tuple[np.ndarray, np.ndarray]:
    """Levenberg–Marquardt fit of S = E[M](S0 e^{-R·TE}; σ) (:func:`rician_mean`) for every column at once.

    Works in normalised units (signal / per-voxel maximum, TE / max TE) so the 2x2 normal equations are well
    conditioned; each voxel keeps its own damping and only accepts steps that lower its cost.
    """
    s = np.asarray(signal, dtype=np.float64)
    te = np.asarray(te_ms, dtype=np.float64)
    xs = float(te.max())
    x = (te / xs)[:, None]
    scale = np.maximum(s.max(0), 1e-12)
    s = s / scale
    sig_n = float(sigma) / scale             # σ in each column's normalised units
    rate = np.asarray(rate_init, dtype=np.float64) * xs
    s0 = np.asarray(s0_init, dtype=np.float64) / scale
    r_lo, r_hi = xs / T2_BOUNDS_MS[1], xs / T2_BOUNDS_MS[0]
    bad = ~np.isfinite(rate) | ~np.isfinite(s0) | (rate < r_lo) | (rate > r_hi) | (s0 <= 0)
    rate = np.where(bad, xs / 40.0, rate)
    s0 = np.where(bad, s[0] * np.exp(rate * x[0, 0]), s0)
    lam = np.full(s.shape[1], 1e-3)

    def model(p0, p1):
        e = np.exp(-x * p1)
        u = p0 * e
        f, dfdu = rician_mean(u, sig_n[None, :])
        return e, u, f, dfdu

    e, u, f, dfdu = model(s0, rate)
    r = s - f
    cost = np.einsum("ij,ij->j", r, r)
    for _ in range(iterations):
        j0 = dfdu * e
        j1 = -x * u * dfdu
        a00 = np.einsum("ij,ij->j", j0, j0)
        a01 = np.einsum("ij,ij->j", j0, j1)
        a11 = np.einsum("ij,ij->j", j1, j1)
        g0 = np.einsum("ij,ij->j", j0, r)
        g1 = np.einsum("ij,ij->j", j1, r)
        d00 = a00 * (1.0 + lam)
        d11 = a11 * (1.0 + lam)
        det = d00 * d11 - a01 * a01
        det = np.where(np.abs(det) > 1e-30, det, 1e-30)
        n0 = np.maximum(s0 + (d11 * g0 - a01 * g1) / det, 1e-9)
        n1 = np.clip(rate + (d00 * g1 - a01 * g0) / det, r_lo, r_hi)
        ne, nu, nf, ndfdu = model(n0, n1)
        nr = s - nf
        ncost = np.einsum("ij,ij->j", nr, nr)
        ok = ncost < cost
        s0 = np.where(ok, n0, s0)
        rate = np.where(ok, n1, rate)
        cost = np.where(ok, ncost, cost)
        lam = np.where(ok, lam * 0.3, lam * 10.0)
        okb = ok[None, :]
        e = np.where(okb, ne, e)
        u = np.where(okb, nu, u)
        f = np.where(okb, nf, f)
        dfdu = np.where(okb, ndfdu, dfdu)
        r = np.where(okb, nr, r)
    return s0 * scale, rate / xs


def r_squared(signal: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    s = np.asarray(signal, dtype=np.float64)
    res = ((s - predicted) ** 2).sum(0)
    tot = ((s - s.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - res / tot


# -- the volume fit ----------------------------------------------------------------------------
def fit_mese(echoes: MultiEcho, drop_first_echo: bool = True, refine: bool = True, r2_min: float = 0.7,
             t2_range_ms: Tuple[float, float] = (0.0, 100.0), noise_sigma: Optional[float] = None,
             iterations: int = LM_ITERATIONS, mask: Optional[np.ndarray] = None) -> T2Maps:
    """Fit T2 (ms), S0 and R² maps to a multi-echo spin-echo series.

    ``drop_first_echo`` leaves out the first echo (stimulated-echo contamination). Voxels are fitted where the
    first used echo exceeds 5σ (and ``mask``, when given). ``valid`` = fitted, R² ≥ ``r2_min`` and
    ``t2_range_ms[0] < T2 <= t2_range_ms[1]``; ``t2_ms`` is NaN elsewhere. R² is computed in the signal
    domain against the final model. ``params`` records everything that decided the result.
    """
    t_start = time.perf_counter()
    from ..io.volume import Volume  # noqa: F401  (geometry comes from echoes.geometry)

    images = np.asarray(echoes.images)
    tes = np.asarray(echoes.echo_times_ms, dtype=float)
    if images.ndim != 4 or images.shape[0] != len(tes):
        raise T2Error("The echo images (%s) do not match the %d echo times." % (images.shape, len(tes)))
    used = np.arange(len(tes))
    if drop_first_echo and len(tes) >= 3:
        used = used[1:]
    elif drop_first_echo:
        drop_first_echo = False  # two echoes: nothing to spare
    if len(used) < 2:
        raise T2Error("T2 mapping needs at least two echoes; got %d." % len(tes),
                      hint="Give the whole multi-echo series.")
    lo, hi = float(t2_range_ms[0]), float(t2_range_ms[1])
    if not hi > lo:
        raise T2Error("The T2 range %s ms is empty." % (tuple(t2_range_ms),), hint="Give (low, high) with low < high.")
    te = tes[used]
    first = images[used[0]]
    if noise_sigma is None:
        sigma, sigma_method = estimate_noise_sigma(images[0])
        if sigma is None:
            sigma, sigma_method = 0.0, sigma_method + "; noise floor ignored"
    else:
        sigma, sigma_method = float(noise_sigma), "given"
    fg = first > max(5.0 * sigma, 0.0)
    if mask is not None:
        fg &= np.asarray(mask, dtype=bool)
    idx = np.flatnonzero(fg.ravel())
    flat = images[used].reshape(len(used), -1)

    shape = first.shape
    t2 = np.full(first.size, np.nan, dtype=np.float32)
    s0m = np.full(first.size, np.nan, dtype=np.float32)
    r2m = np.full(first.size, np.nan, dtype=np.float32)
    t_lin = 0.0
    t_ref = 0.0
    for c0 in range(0, idx.size, CHUNK):
        ix = idx[c0:c0 + CHUNK]
        s = flat[:, ix].astype(np.float64)
        t0 = time.perf_counter()
        a, rate = loglinear_fit(s, te)
        t_lin += time.perf_counter() - t0
        if refine:
            t0 = time.perf_counter()
            a, rate = refine_noise_floor(s, te, sigma, a, rate, iterations)
            pred = noise_floor_model(a, rate, te, sigma)
            t_ref += time.perf_counter() - t0
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                pred = a[None, :] * np.exp(-np.outer(te, rate))
        with np.errstate(divide="ignore", invalid="ignore"):
            t2c = 1.0 / rate
        t2c[~(rate > 0)] = np.nan
        t2[ix] = t2c
        s0m[ix] = a
        r2m[ix] = r_squared(s, pred)
    valid = np.isfinite(t2) & (r2m >= r2_min) & (t2 > lo) & (t2 <= hi)
    n_fit = int(idx.size)
    n_out_range = int(np.sum(np.isfinite(t2) & ((t2 <= lo) | (t2 > hi))))
    t2[~valid] = np.nan
    geom = echoes.geometry
    vol = lambda a: geom.with_array(a.reshape(shape))  # noqa: E731
    method = "loglinear-wls" + ("+lm-noise-floor" if refine else "")
    params: Dict[str, Any] = {
        "model": ("S = Rician mean of amplitude S0 exp(-TE/T2) and noise sigma" if refine else "S = S0 exp(-TE/T2)"),
        "initial_fit": "log-linear least squares weighted by S^2",
        "echo_times_ms": [float(t) for t in tes],
        "echo_times_used_ms": [float(t) for t in te],
        "drop_first_echo": bool(drop_first_echo),
        "noise_sigma": float(sigma),
        "noise_sigma_method": sigma_method,
        "fit_mask": "first used echo > 5 sigma" + (" and the given mask" if mask is not None else ""),
        "iterations": int(iterations) if refine else 0,
        "r2_min": float(r2_min),
        "r2_domain": "signal",
        "t2_range_ms": [lo, hi],
        "n_fitted": n_fit,
        "n_valid": int(valid.sum()),
        "n_outside_t2_range": n_out_range,
        "time_loglinear_s": round(t_lin, 3),
        "time_refine_s": round(t_ref, 3),
        "time_total_s": round(time.perf_counter() - t_start, 3),
    }
    return T2Maps(t2_ms=vol(t2), s0=vol(s0m), r2=vol(r2m), valid=vol(valid), method=method, params=params)
